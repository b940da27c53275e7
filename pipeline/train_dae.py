"""Stage `train_dae`: the denoising autoencoder, noisy -> clean.

Reads params `seed`, `device`, `noise` (for dae.fresh_noise) and `dae`; data/noisy/{train,val}.pt.
Writes models/dae.pt and metrics/train/dae/ (metrics.json and per-epoch curves, dvclive).
"""

from pipeline.cli import stage
from pipeline.config import load_params
from pipeline.training import train_stage


@stage
def main() -> None:
    train_stage("dae", load_params())


if __name__ == "__main__":
    main()
