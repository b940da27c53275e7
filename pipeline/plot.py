"""Stage `plot`: the pictures of the models' outputs, as PNGs under plots/.

Reads params `seed`, `noise`, `plot`, `paths`; data/noisy/test.pt, models/{dae,vae}.pt.
Writes plots/denoised.png (rows: clean, noisy, DAE, VAE; one column per test digit),
plots/worst_examples.png (each model's worst-restored test images with their error maps),
plots/vae_latent_pca.png (the VAE's posterior means of the test images, first two principal
components, by digit) and plots/vae_prior_samples.png (images decoded from z ~ N(0, I): a
collapsed VAE shows one blurry blob everywhere). The curves and bars of the metrics are drawn
by `dvc plots show` and by the `report` stage.
"""

from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from pipeline.data import load_split
from pipeline.metrics import denoise_all
from pipeline.pages import save_png
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
    files = {n: getattr(paths, n) for n in ("denoised", "worst", "latent", "prior_samples")}
    with publish("plot", files=files) as out:  # writable? then work
        for name, fig in draw(params).items():
            save_png(fig, getattr(out, name))


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
        outputs = {
            "DAE": denoise_all(dae, test.noisy),
            "VAE": denoise_all(vae, test.noisy),
        }
        means = denoise_all(lambda x: vae.encode(x)[0], test.noisy)
    noise = f"{params.noise.kind} noise, level {params.noise.level}"
    side = max(1, int(len(prior) ** 0.5))
    return {
        "denoised": image_rows(rows, title=f"Test digits ({noise})"),
        "worst": worst_examples(test.clean, test.noisy, outputs, params.plot.n_worst),
        "latent": latent_pca(means, test.labels),
        "prior_samples": image_rows(
            {"": prior}, title="VAE samples from the prior z ~ N(0, I)", per_row=side
        ),
    }


def worst_examples(
    clean: torch.Tensor, noisy: torch.Tensor, outputs: dict[str, torch.Tensor], n: int
) -> Figure:
    """For each model, its `n` test images of highest MSE: clean, noisy, output, and the
    error map |output - clean| (0 black, 1 bright)."""
    fig = Figure(figsize=(max(4, n * 0.75), 1.05 * 4 * len(outputs) + 0.4))
    axes = fig.subplots(4 * len(outputs), 1, squeeze=False)[:, 0]
    for i, (name, out) in enumerate(outputs.items()):
        errors = torch.mean((out - clean) ** 2, dim=(1, 2, 3))
        worst = torch.argsort(errors, descending=True)[:n]
        strips = {
            "clean": (clean[worst], "gray"),
            "noisy": (noisy[worst].clamp(0, 1), "gray"),
            f"{name} output": (out[worst], "gray"),
            f"{name} error": ((out[worst] - clean[worst]).abs(), "magma"),
        }
        for ax, (label, (images, cmap)) in zip(
            axes[4 * i : 4 * i + 4], strips.items(), strict=True
        ):
            pad = 0.0 if cmap == "magma" else 1.0  # no bright frame around the error maps
            strip = make_grid(images, nrow=n, padding=PAD, pad_value=pad)[0]
            ax.imshow(strip.numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center")
        low, high = errors[worst[-1]], errors[worst[0]]
        axes[4 * i].set_title(f"{name}: worst {n} of {len(clean):,} (MSE {low:.3f} to {high:.3f})")
    fig.tight_layout()
    return fig


def latent_pca(means: torch.Tensor, labels: torch.Tensor) -> Figure:
    """The VAE's posterior means projected on their first two principal components, by digit."""
    centred = means - means.mean(dim=0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    xy = centred @ v[:2].T
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for digit in range(10):
        pts = xy[labels == digit]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, label=str(digit), color=f"C{digit}")
    ax.set(xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
           ylabel=f"PC 2 ({explained[1]:.0%} of variance)",
           title="VAE posterior means of the test images (PCA)")  # fmt: skip
    ax.legend(markerscale=5, title="digit", fontsize=8, loc="best")
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


if __name__ == "__main__":
    main()
