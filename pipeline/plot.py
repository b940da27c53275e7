"""Stage `plot`: the pictures `dvc plots` cannot draw, as PNGs under plots/.

Reads params `seed`, `noise`, `plot`, `paths`; data/noisy/test.pt, models/{dae,vae}.pt,
metrics/test.json. Writes plots/denoised.png (rows: clean, noisy, DAE, VAE; one column per
test digit), plots/vae_prior_samples.png (images decoded from z ~ N(0, I): a collapsed VAE
shows one blurry blob everywhere) and plots/perception_distortion.png (each method's MSE
against the Fréchet distance of the classifier's features, with the classifier's accuracy).
The curves and bars are drawn by `dvc plots show` from the metrics.
"""

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from pipeline.data import load_split
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import Params, load_params
from pipeline.plumbing.publish import publish
from pipeline.registry import load_model
from pipeline.runtime import generator, set_determinism

PAD = 2  # pixels between grid cells


@stage
def main() -> None:
    params = load_params()
    paths = params.paths
    set_determinism(params.seed, "plot")
    files = {n: getattr(paths, n) for n in ("denoised", "prior_samples", "perception")}
    with publish("plot", files=files) as out:  # writable? then work
        for name, fig in draw(params).items():
            save(fig, getattr(out, name))


def draw(params: Params) -> dict[str, Figure]:
    """The figures, by their `paths` key."""
    paths = params.paths
    test = load_split(Path(paths.noisy) / "test.pt")
    dae, vae = (load_model(Path(paths.models) / f"{k}.pt", k) for k in ("dae", "vae"))
    picks = pick_examples(test.labels, params.plot.n_digits)
    noisy = test.noisy[picks]
    with torch.no_grad():
        rows = {
            "clean": test.clean[picks],
            "noisy": noisy.clamp(0, 1),
            "DAE": dae(noisy),
            "VAE": vae(noisy),
        }
        gen = generator(params.seed, "prior-samples")
        z = torch.randn(params.plot.n_prior_samples, vae.latent_dim, generator=gen)
        prior = torch.sigmoid(vae.decode_logits(z))
    noise = f"{params.noise.kind} noise, level {params.noise.level}"
    side = max(1, int(len(prior) ** 0.5))
    return {
        "denoised": image_rows(rows, title=f"Test digits ({noise})"),
        "prior_samples": image_rows(
            {"": prior}, title="VAE samples from the prior z ~ N(0, I)", per_row=side
        ),
        "perception": perception_distortion(json.loads(Path(paths.test_metrics).read_text())),
    }


def perception_distortion(metrics: dict) -> Figure:
    """Each method at (MSE, Fréchet distance of the classifier's features), the MSE's 95%
    interval as a bar, labelled with the classifier's accuracy: lower left is better."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name in ("noisy", "blur", "dae", "vae"):
        m = metrics[name]
        ax.errorbar(m["mse"], m["fd"], xerr=[[m["mse"] - m["mse_lo"]], [m["mse_hi"] - m["mse"]]],
                    fmt="o", capsize=3)  # fmt: skip
        ax.annotate(f"{name} ({m['accuracy']:.1%} read right)", (m["mse"], m["fd"]),
                    textcoords="offset points", xytext=(6, 6))  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="test MSE (distortion)", ylabel="Fréchet distance of classifier features",
           title="Perception-distortion plane (lower left is better)")  # fmt: skip
    fig.tight_layout()
    return fig


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


def save(fig: Figure, path: Path) -> None:
    """Write a PNG without metadata that would differ between runs."""
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})


if __name__ == "__main__":
    main()
