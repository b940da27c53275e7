"""Image-quality metrics (torchmetrics) with bootstrap intervals, the classical baseline, and
batched inference."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchvision.transforms.v2.functional import gaussian_blur

from pipeline.runtime import INFERENCE_BATCH

Denoise = Callable[[torch.Tensor], torch.Tensor]


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over every pixel of every image."""
    return float(torch.mean((pred - target) ** 2))


def per_image(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE, PSNR (dB) and SSIM (11x11 Gaussian window) of each of N x 1 x H x W images in
    [0, 1]: N values each, whose means are the test metrics."""
    return {
        "mse": torch.mean((pred - target) ** 2, dim=(1, 2, 3)),
        "psnr": peak_signal_noise_ratio(
            pred, target, data_range=1.0, dim=(1, 2, 3), reduction="none"
        ),
        "ssim": structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none"),
    }


def bootstrap_indices(n: int, resamples: int, gen: torch.Generator) -> torch.Tensor:
    """`resamples` x `n` image indices drawn with replacement: one row per bootstrap sample,
    shared by every method so that differences between methods are paired."""
    return torch.randint(0, n, (resamples, n), generator=gen)


def with_interval(values: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, float]:
    """Each metric's mean over the images and its 95% percentile bootstrap interval
    (`<name>_lo`, `<name>_hi`) over the resamples `rows`."""
    out = {}
    for name, v in values.items():
        means = v.double().cpu()[rows].mean(dim=1)
        lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
        out |= {name: float(v.double().mean()), f"{name}_lo": float(lo), f"{name}_hi": float(hi)}
    return out


def per_class_mse(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """MSE of the images of each digit 0-9 (NaN for a digit with no image)."""
    per_image = torch.mean((pred - target) ** 2, dim=(1, 2, 3))
    return [
        float(per_image[labels == d].mean()) if (labels == d).any() else math.nan for d in range(10)
    ]


def blur_baseline(sigma: float) -> Denoise:
    """The classical denoiser: a Gaussian blur with standard deviation `sigma` pixels.

    The kernel spans 3 sigma each side, cut to the image: its reflect padding must be smaller
    than the image (a wider kernel would fail on 28x28 images from sigma 9.5).
    """
    radius = math.ceil(3 * sigma)

    def blur(noisy: torch.Tensor) -> torch.Tensor:
        size = 2 * min(radius, min(noisy.shape[-2:]) - 1) + 1
        return gaussian_blur(noisy, [size, size], [sigma, sigma]).clamp(0.0, 1.0)

    return blur


@torch.no_grad()
def denoise_all(
    fn: Denoise, noisy: torch.Tensor, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """Apply `fn` to `noisy` in batches (bounded memory), returning one tensor."""
    return torch.cat([fn(noisy[i : i + batch_size]) for i in range(0, len(noisy), batch_size)])
