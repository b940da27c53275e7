"""Stage `plot`: the pictures a person looks at, as PNGs under plots/.

Reads params `seed`, `noise`, `plot`; data/noisy/test.pt, models/{dae,vae}.pt,
metrics/robustness.csv and the training curves under metrics/train/.
Writes plots/denoised.png, plots/vae_prior_samples.png, plots/loss_curves.png and
plots/mse_vs_noise.png:

denoised.png (rows: clean, noisy, DAE, VAE; one column per test digit), loss_curves.png
(per-epoch dvclive logs), mse_vs_noise.png (robustness curve) and vae_prior_samples.png
(images decoded from z ~ N(0, I): a collapsed VAE shows one blurry blob everywhere).
"""

import math
from pathlib import Path

import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from torchvision.utils import make_grid

from pipeline.cli import stage
from pipeline.config import Params, load_params
from pipeline.data import load_split
from pipeline.models import load_model
from pipeline.paths import METRICS_DIR, MODELS_DIR, NOISY_DIR, PLOTS_DIR, TRAIN_LOG_DIR
from pipeline.runtime import publish, set_determinism

PAD = 2  # pixels between grid cells
OUTPUTS = ("denoised.png", "vae_prior_samples.png", "loss_curves.png", "mse_vs_noise.png")


@stage
def main() -> None:
    params = load_params()
    set_determinism(params.seed)
    with publish(*(PLOTS_DIR / name for name in OUTPUTS)) as tmp:  # writable? then work
        figures = draw(params)
        for path, fig in zip(tmp, figures, strict=True):
            save(fig, path)


def draw(params: Params) -> list[Figure]:
    """The figures of :data:`OUTPUTS`, in that order."""
    test = load_split(NOISY_DIR / "test.pt")
    dae = load_model(MODELS_DIR / "dae.pt", "dae")
    vae = load_model(MODELS_DIR / "vae.pt", "vae")
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
    side = max(1, int(len(prior) ** 0.5))
    return [
        image_rows(rows, title=f"Test digits ({noise})"),
        image_rows({"": prior}, title="VAE samples from the prior z ~ N(0, I)", per_row=side),
        loss_curves(),
        robustness_curve(params.noise.level, params.noise.kind),
    ]


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
    """Train/validation loss of each model and validation MSE of both, per epoch (the logs'
    `step` is the epoch, counted from 1)."""
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    ylabels = {"dae": "loss (MSE)", "vae": "loss (nats per image)"}
    for ax, kind in zip(axes, ("dae", "vae"), strict=False):
        for split, label in (("train", "train"), ("val", "validation")):
            log = read_log(kind, f"{split}/loss")
            ax.plot(log["step"], log["loss"], marker="o", label=label)
        ax.set(title=f"{kind.upper()} loss", xlabel="epoch", ylabel=ylabels[kind])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    for kind in ("dae", "vae"):
        log = read_log(kind, "val/mse")
        axes[2].plot(log["step"], log["mse"], marker="o", label=kind.upper(), color=COLOURS[kind])
    axes[2].set(title="validation MSE", xlabel="epoch", ylabel="MSE (log scale)")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_yscale("log")
    label_ticks(axes[2], log_ticks(*axes[2].get_ylim()))
    axes[2].legend()
    fig.tight_layout()
    return fig


def read_log(kind: str, metric: str) -> pd.DataFrame:
    return pd.read_csv(TRAIN_LOG_DIR / kind / "plots" / "metrics" / f"{metric}.tsv", sep="\t")


def robustness_curve(level: float, kind: str) -> Figure:
    """Test MSE of each method against the noise level, the training level marked.

    The y axis is logarithmic down to the smallest non-zero MSE and linear below it, so the
    noisy input's MSE of 0 at level 0 stays on the chart."""
    table = pd.read_csv(METRICS_DIR / "robustness.csv")
    methods = table.columns.drop("noise_level")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in methods:
        color = COLOURS.get(method)
        ax.plot(table["noise_level"], table[method], marker="o", label=method, color=color)
    ax.axvline(level, color="gray", linestyle="--", label="training level")
    ax.set(title=f"Test MSE vs {kind} noise level", xlabel="noise level")
    values = table[methods].to_numpy().ravel()
    positive = values[values > 0]
    if len(positive):
        linthresh = 10 ** math.floor(math.log10(positive.min()))
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
        ax.set_ylim(0, None)
        label_ticks(ax, [0.0, *log_ticks(linthresh, ax.get_ylim()[1])])
        ax.set_ylabel(f"MSE (log scale; linear below {linthresh:g})")
    else:
        ax.set_ylabel("MSE")
    ax.legend()
    fig.tight_layout()
    return fig


# The colours vega gives these series in `dvc plots show`, so that both agree.
COLOURS = {"noisy": "#4c78a8", "blur": "#f58518", "dae": "#e45756", "vae": "#72b7b2"}
# Mantissas of log-axis ticks, sparsest first (see log_ticks).
TICK_MANTISSAS = (
    (1,),
    (1, 2, 5),
    (1, 2, 3, 5, 7),
    (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
)


def log_ticks(lo: float, hi: float, at_least: int = 4) -> list[float]:
    """Ticks for a log axis from `lo` to `hi`: the sparsest 1-2-5 style series that puts at
    least `at_least` ticks in range (matplotlib labels only powers of ten, which leaves a
    range narrower than a decade with one or two labels)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in TICK_MANTISSAS:
        series = (float(f"{m}e{d}") for d in decades for m in mantissas)
        ticks = [tick for tick in series if lo <= tick <= hi]
        if len(ticks) >= at_least:
            break
    return ticks


def label_ticks(ax: Axes, ticks: list[float]) -> None:
    """Put labelled y ticks exactly at `ticks`, as plain decimals, without minor labels."""
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(lo, hi)


def save(fig: Figure, path: Path) -> None:
    """Write a PNG without metadata that would differ between runs."""
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


if __name__ == "__main__":
    main()
