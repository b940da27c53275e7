"""`pipeline.metrics` on inputs whose answers are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.metrics import blur_baseline, denoise_all, mse, per_class_mse, per_image


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """N x 1 x 28 x 28 images in [0.2, 0.8], so that an offset of up to 0.2 stays in [0, 1]."""
    return 0.2 + 0.6 * torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The test metrics: the mean of each per-image metric."""
    return {name: float(v.mean()) for name, v in per_image(pred, target).items()}


def test_mse_of_identical_images_is_zero() -> None:
    x = images()
    assert mse(x, x.clone()) == 0.0


@pytest.mark.parametrize("offset", [0.01, 0.1, -0.2])
def test_mse_of_a_constant_offset_is_its_square(offset: float) -> None:
    x = images()
    assert mse(x + offset, x) == pytest.approx(offset**2, rel=1e-5)


def test_mse_averages_over_every_pixel() -> None:
    target = torch.zeros(2, 1, 28, 28)
    pred = target.clone()
    pred[0, 0, 0, :4] = 1.0  # 4 wrong pixels out of 2 * 784
    assert mse(pred, target) == pytest.approx(4 / (2 * 784))


@pytest.mark.parametrize("offset", [0.01, 0.05, 0.2])
def test_psnr_of_a_known_mse_is_ten_log10_of_its_inverse(offset: float) -> None:
    x = images()
    metrics = image_metrics(x + offset, x)
    assert metrics["mse"] == pytest.approx(offset**2, rel=1e-5)
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / offset**2), rel=1e-5)


def test_psnr_is_the_mean_over_images() -> None:
    x = images(n=2)
    offsets = torch.tensor([0.01, 0.1]).view(2, 1, 1, 1)
    expected = sum(10 * math.log10(1 / o**2) for o in (0.01, 0.1)) / 2
    assert image_metrics(x + offsets, x)["psnr"] == pytest.approx(expected, rel=1e-5)


def test_ssim_of_identical_images_is_one_and_lower_for_noise() -> None:
    x = images()
    assert image_metrics(x, x.clone())["ssim"] == pytest.approx(1.0, abs=1e-6)
    noise = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert image_metrics((x + noise).clamp(0, 1), x)["ssim"] < 0.9


def test_per_class_mse_groups_images_by_label() -> None:
    target = torch.zeros(5, 1, 28, 28)
    errors = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.4])  # a constant error per image
    pred = target + errors.view(5, 1, 1, 1)
    labels = torch.tensor([3, 3, 7, 0, 7])
    per_digit = per_class_mse(pred, target, labels)
    assert len(per_digit) == 10
    expected = {0: 0.5**2, 3: (0.1**2 + 0.3**2) / 2, 7: (0.2**2 + 0.4**2) / 2}
    for digit, value in enumerate(per_digit):
        if digit in expected:
            assert value == pytest.approx(expected[digit], rel=1e-5)
        else:
            assert math.isnan(value)  # no image of that digit


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_blur_spreads_a_delta_symmetrically_and_keeps_shape(sigma: float) -> None:
    delta = torch.zeros(3, 1, 28, 28)
    delta[:, :, 14, 14] = 1.0
    out = blur_baseline(sigma)(delta)
    assert out.shape == delta.shape
    assert 0 < out[0, 0, 14, 14] < 1  # the peak is lowered ...
    assert out[0, 0, 14, 15] > 0 and out[0, 0, 13, 14] > 0  # ... and spread to neighbours
    assert float(out.sum(dim=(1, 2, 3))[0]) == pytest.approx(1.0, abs=1e-3)  # mass is kept
    torch.testing.assert_close(out, out.flip(-1).roll(1, -1))  # symmetric about column 14
    torch.testing.assert_close(out, out.transpose(-1, -2))
    # the blurred delta is a discrete Gaussian: its variance along one axis is about sigma^2
    rows = out[0, 0].sum(dim=1)
    offsets = torch.arange(28.0) - 14
    assert float((rows * offsets**2).sum()) == pytest.approx(sigma**2, rel=0.1)


def test_blur_leaves_a_flat_image_flat_and_stays_in_unit_range() -> None:
    flat = torch.full((2, 1, 28, 28), 0.7)
    torch.testing.assert_close(blur_baseline(1.0)(flat), flat)
    noisy = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 3 - 1
    out = blur_baseline(1.0)(noisy)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("sigma", [9.5, 50.0])
def test_blur_wider_than_the_image_still_works(sigma: float) -> None:
    x = images(n=2)
    out = blur_baseline(sigma)(x)
    assert out.shape == x.shape
    assert float(out.std()) < float(x.std()) / 4  # nearly flat


def test_blur_reduces_the_error_of_noisy_smooth_images() -> None:
    g = torch.Generator().manual_seed(3)
    clean = torch.full((8, 1, 28, 28), 0.5)
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    assert mse(blur_baseline(1.0)(noisy), clean) < mse(noisy, clean) / 4


@pytest.mark.parametrize("batch_size", [1, 7, 32, 100])
def test_denoise_all_in_batches_equals_one_batch(batch_size: int) -> None:
    noisy = images(n=32, seed=4)
    blur = blur_baseline(1.0)
    whole = blur(noisy)
    assert torch.equal(denoise_all(blur, noisy, batch_size), whole)
    calls: list[int] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x * 2

    assert torch.equal(denoise_all(recording, noisy, batch_size), noisy * 2)
    assert calls == [min(batch_size, 32 - i) for i in range(0, 32, batch_size)]


def test_denoise_all_runs_without_gradients() -> None:
    layer = torch.nn.Conv2d(1, 1, 3, padding=1)
    out = denoise_all(layer, images(n=4), 3)
    assert not out.requires_grad and out.shape == (4, 1, 28, 28)
