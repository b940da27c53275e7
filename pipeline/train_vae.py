"""Stage `train_vae`: the denoising VAE, noisy -> clean.

Reads params `seed`, `device`, `noise` (for vae.fresh_noise) and `vae`; data/noisy/{train,val}.pt.
Writes models/vae.pt and metrics/train/vae/ (metrics.json and per-epoch curves, dvclive).
"""

from pipeline.cli import stage
from pipeline.config import load_params
from pipeline.training import train_stage


@stage
def main() -> None:
    train_stage("vae", load_params())


if __name__ == "__main__":
    main()
