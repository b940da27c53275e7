"""Stage `evaluate`: DAE, VAE and two baselines on the noisy test images.

Reads params `seed`, `device`, `noise.kind`, `noise.clip`, `evaluate`; data/noisy/test.pt,
models/dae.pt, models/vae.pt.
Writes metrics/test.json (MSE, PSNR, SSIM per method; the VAE's KL and active latent
dimensions), and plot data: metrics/per_digit.csv, metrics/robustness.csv (MSE at each
`evaluate.noise_levels` value of `noise.kind`, no retraining) and metrics/vae_kl.csv.
"""

import pandas as pd
import torch

from pipeline.cli import stage
from pipeline.config import Params, load_params
from pipeline.data import Split, add_noise, load_split
from pipeline.metrics import blur_baseline, denoise_all, image_metrics, mse, per_class_mse
from pipeline.models import Denoiser, VAEBase, kl_per_dim, load_model
from pipeline.paths import METRICS_DIR, MODELS_DIR, NOISY_DIR
from pipeline.runtime import publish, resolve_device, set_determinism, write_json

ACTIVE_KL_NATS = 0.01  # a latent dimension carrying less than this is counted as collapsed
ROBUSTNESS_SEED_OFFSET = 10  # make_noisy uses seed + 1..3
OUTPUTS = ("test.json", "per_digit.csv", "robustness.csv", "vae_kl.csv")


@stage
def main() -> None:
    params = load_params()
    set_determinism(params.seed)
    device = resolve_device(params.device)
    with publish(*(METRICS_DIR / name for name in OUTPUTS)) as tmp:  # writable? then work
        test = load_split(NOISY_DIR / "test.pt").to(device)
        dae = load_model(MODELS_DIR / "dae.pt", "dae").to(device)
        vae = load_model(MODELS_DIR / "vae.pt", "vae").to(device)
        tables = evaluate(params, dae, vae, test, device)
        for path, table in zip(tmp, tables.values(), strict=True):
            if isinstance(table, pd.DataFrame):
                path.write_text(table.to_csv(index=False, float_format="%.6f"))
            else:
                write_json(path, table)
    for name, values in tables["test.json"].items():
        if isinstance(values, dict):
            print(f"{name:>5}: " + ", ".join(f"{k} {v:.5g}" for k, v in values.items()))


def evaluate(
    params: Params, dae: Denoiser, vae: VAEBase, test: Split, device: torch.device
) -> dict[str, dict | pd.DataFrame]:
    """Every output of the stage, by file name (see :data:`OUTPUTS`)."""
    cfg, noise = params.evaluate, params.noise
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

    return {
        "test.json": {**summary, "n_images": len(test)},
        "per_digit.csv": pd.DataFrame({"digit": range(10), **per_digit}),
        "robustness.csv": pd.DataFrame(rows),
        "vae_kl.csv": pd.DataFrame({"dim": range(len(kl)), "kl": kl.tolist()}),
    }


@torch.no_grad()
def latent_kl(vae: VAEBase, noisy: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean KL(q(z|x) || p(z)) of each latent dimension over `noisy`, in nats."""
    total = torch.zeros(vae.latent_dim, device=noisy.device)
    for i in range(0, len(noisy), batch_size):
        total += kl_per_dim(*vae.encode(noisy[i : i + batch_size])).sum(dim=0)
    return (total / len(noisy)).cpu()


if __name__ == "__main__":
    main()
