"""Stage `train_dae`: the denoising autoencoder, noisy -> clean (params section `dae`)."""

from pipeline.config import load_params
from pipeline.models import dae_loss
from pipeline.runtime import stage
from pipeline.training import train_stage


@stage
def main() -> None:
    params = load_params()
    train_stage("dae", params.dae, dae_loss, params.seed, params.device)


if __name__ == "__main__":
    main()
