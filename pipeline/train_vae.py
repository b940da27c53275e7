"""Stage `train_vae`: the denoising VAE, noisy -> clean (params section `vae`)."""

from functools import partial

from pipeline.config import load_params
from pipeline.models import vae_loss
from pipeline.runtime import stage
from pipeline.training import train_stage


@stage
def main() -> None:
    params = load_params()
    cfg = params.vae
    loss = partial(vae_loss, beta=cfg.beta, warmup_epochs=cfg.kl_warmup_epochs)
    train_stage("vae", cfg, loss, params.seed, params.device)


if __name__ == "__main__":
    main()
