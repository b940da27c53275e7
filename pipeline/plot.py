"""Stage `plot`: the pictures a person looks at, as PNGs under plots/.

denoised.png (rows: clean, noisy, DAE, VAE; one column per test digit), loss_curves.png
(per-epoch dvclive logs), mse_vs_noise.png (robustness curve) and vae_prior_samples.png
(images decoded from z ~ N(0, I): a collapsed VAE shows one blurry blob everywhere).
"""

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from pipeline.config import (
    METRICS_DIR,
    MODELS_DIR,
    NOISY_DIR,
    PLOTS_DIR,
    TRAIN_LOG_DIR,
    load_params,
)
from pipeline.data import load_split
from pipeline.models import load_model
from pipeline.runtime import atomic_path, set_determinism, stage

PAD = 2  # pixels between grid cells


@stage
def main() -> None:
    params = load_params()
    set_determinism(params.seed)
    test = load_split(NOISY_DIR / "test.pt")
    dae = load_model(MODELS_DIR / "dae.pt", "train_dae")[0]
    vae = load_model(MODELS_DIR / "vae.pt", "train_vae")[0]

    picks = pick_examples(test.labels, params.plot.n_digits)
    noisy = test.noisy[picks]
    with torch.no_grad():
        rows = {
            "clean": test.clean[picks],
            "noisy": noisy.clamp(0, 1),
            "DAE": dae(noisy),
            "VAE": vae(noisy),
        }
        gen = torch.Generator().manual_seed(params.seed)
        z = torch.randn(params.plot.n_prior_samples, vae.latent_dim, generator=gen)
        prior = torch.sigmoid(vae.decode_logits(z))

    noise = f"{params.noise.kind} noise, level {params.noise.level}"
    fig = image_rows(rows, title=f"Test digits ({noise})")
    save(fig, "denoised.png")
    side = max(1, int(len(prior) ** 0.5))
    fig = image_rows({"": prior}, title="VAE samples from the prior z ~ N(0, I)", per_row=side)
    save(fig, "vae_prior_samples.png")
    save(loss_curves(), "loss_curves.png")
    save(robustness_curve(params.noise.level, params.noise.kind), "mse_vs_noise.png")


def pick_examples(labels: torch.Tensor, n: int) -> list[int]:
    """Indices of `n` test images cycling through the digits 0-9 (first of each, then second...)."""
    by_digit = [torch.nonzero(labels == d).flatten().tolist() for d in range(10)]
    return [by_digit[i % 10][i // 10] for i in range(n) if i // 10 < len(by_digit[i % 10])]


def image_rows(rows: dict[str, torch.Tensor], title: str, per_row: int | None = None) -> Figure:
    """One labelled row of images per entry (or one image block wrapped at `per_row`)."""
    images = torch.cat(list(rows.values()))
    ncol = per_row or len(next(iter(rows.values())))
    grid = make_grid(images, nrow=ncol, padding=PAD, pad_value=1.0)[0]
    height, width = grid.shape
    fig = Figure(figsize=(max(4, width / 40), max(2, height / 40) + 0.6))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([PAD + i * (28 + PAD) + 14 for i in range(len(rows))], list(rows))
    ax.set_title(title)
    return fig


def loss_curves() -> Figure:
    """Train/validation loss of each model and validation MSE of both, per epoch."""
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for ax, kind in zip(axes, ("dae", "vae"), strict=False):
        for split in ("train", "val"):
            log = read_log(kind, f"{split}/loss")
            ax.plot(log["step"] + 1, log["loss"], marker="o", label=split)
        ax.set(title=f"{kind.upper()} loss", xlabel="epoch", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    for kind in ("dae", "vae"):
        log = read_log(kind, "val/mse")
        axes[2].plot(log["step"] + 1, log["mse"], marker="o", label=kind.upper())
    axes[2].set(title="validation MSE", xlabel="epoch", ylabel="MSE", yscale="log")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].legend()
    fig.tight_layout()
    return fig


def read_log(kind: str, metric: str) -> pd.DataFrame:
    return pd.read_csv(TRAIN_LOG_DIR / kind / "plots" / "metrics" / f"{metric}.tsv", sep="\t")


def robustness_curve(level: float, kind: str) -> Figure:
    """Test MSE of each method against the noise level, the training level marked."""
    table = pd.read_csv(METRICS_DIR / "robustness.csv")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in table.columns.drop("noise_level"):
        ax.plot(table["noise_level"], table[method], marker="o", label=method)
    ax.axvline(level, color="gray", linestyle="--", label="training level")
    ax.set(title=f"Test MSE vs {kind} noise level", xlabel="noise level", ylabel="MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig


def save(fig: Figure, name: str) -> None:
    """Write a PNG atomically, without metadata that would differ between runs."""
    with atomic_path(PLOTS_DIR / name) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


if __name__ == "__main__":
    main()
