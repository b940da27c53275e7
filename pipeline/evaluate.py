"""Stage `evaluate`: DAE, VAE and two baselines on the noisy test images.

Writes metrics/test.json (MSE, PSNR, SSIM per method; the VAE's KL and active latent
dimensions), and plot data: metrics/per_digit.csv, metrics/robustness.csv (MSE at each
`evaluate.noise_levels` value of `noise.kind`, no retraining) and metrics/vae_kl.csv.
"""

from pathlib import Path

import pandas as pd
import torch

from pipeline.config import METRICS_DIR, MODELS_DIR, NOISY_DIR, load_params
from pipeline.data import add_noise, load_split
from pipeline.metrics import blur_baseline, denoise_all, image_metrics, mse, per_class_mse
from pipeline.models import VAEBase, kl_per_dim, load_model
from pipeline.runtime import resolve_device, set_determinism, stage, write_json, write_text

ACTIVE_KL_NATS = 0.01  # a latent dimension carrying less than this is counted as collapsed
ROBUSTNESS_SEED_OFFSET = 10  # make_noisy uses seed + 1..3


@stage
def main() -> None:
    params = load_params()
    cfg, noise = params.evaluate, params.noise
    set_determinism(params.seed)
    device = resolve_device(params.device)
    test = load_split(NOISY_DIR / "test.pt").to(device)
    dae = load_model(MODELS_DIR / "dae.pt", "train_dae")[0].to(device)
    vae = load_model(MODELS_DIR / "vae.pt", "train_vae")[0].to(device)
    methods = {"noisy": lambda x: x, "blur": blur_baseline(cfg.blur_sigma), "dae": dae, "vae": vae}

    outputs = {name: denoise_all(fn, test.noisy, cfg.batch_size) for name, fn in methods.items()}
    summary = {name: image_metrics(out, test.clean) for name, out in outputs.items()}
    kl = latent_kl(vae, test.noisy, cfg.batch_size)
    summary["vae"] |= {"kl": float(kl.sum()), "active_dims": int((kl > ACTIVE_KL_NATS).sum())}

    per_digit = {n: per_class_mse(out, test.clean, test.labels) for n, out in outputs.items()}
    gen = torch.Generator().manual_seed(params.seed + ROBUSTNESS_SEED_OFFSET)
    rows = []
    for level in cfg.noise_levels:
        noisy = add_noise(test.clean.cpu(), noise.kind, level, noise.clip, gen).to(device)
        row = {
            n: mse(denoise_all(fn, noisy, cfg.batch_size), test.clean) for n, fn in methods.items()
        }
        rows.append({"noise_level": level, **row})

    write_json(METRICS_DIR / "test.json", {**summary, "n_images": len(test)})
    write_csv(METRICS_DIR / "per_digit.csv", pd.DataFrame({"digit": range(10), **per_digit}))
    write_csv(METRICS_DIR / "robustness.csv", pd.DataFrame(rows))
    write_csv(METRICS_DIR / "vae_kl.csv", pd.DataFrame({"dim": range(len(kl)), "kl": kl.tolist()}))
    for name, values in summary.items():
        print(f"{name:>5}: " + ", ".join(f"{k} {v:.5g}" for k, v in values.items()))


@torch.no_grad()
def latent_kl(vae: VAEBase, noisy: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean KL(q(z|x) || p(z)) of each latent dimension over `noisy`, in nats."""
    total = torch.zeros(vae.latent_dim, device=noisy.device)
    for i in range(0, len(noisy), batch_size):
        total += kl_per_dim(*vae.encode(noisy[i : i + batch_size])).sum(dim=0)
    return (total / len(noisy)).cpu()


def write_csv(path: Path, table: pd.DataFrame) -> None:
    write_text(path, table.to_csv(index=False, float_format="%.6f"))


if __name__ == "__main__":
    main()
