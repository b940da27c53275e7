"""`pipeline.data`: seeded noise with the stated statistics, and the noisy split files (checked
on load: a damaged file names `make_noisy`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import pytest
import torch

from pipeline.data import Split, add_noise, load_split, save_split
from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import NoiseKind
from pipeline.plumbing.errors import PipelineError
from tests.helpers import flip_a_tensor_byte

N_PIXELS = 200_000
SIGMAS = 5  # tolerances are this many standard errors of the estimate: ~1 in 3.5 million fails
NOISE_KINDS = get_args(NoiseKind)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Random images in [0, 1] with a quarter of the pixels exactly 0 (like MNIST's background)."""
    x = torch.rand(n, 28, 28, generator=gen(seed))
    return torch.where(x < 0.25, 0.0, x)


def flat(value: float) -> torch.Tensor:
    """N_PIXELS pixels all at `value`, so that every pixel can be seen to change."""
    return torch.full((N_PIXELS // 784, 28, 28), value)


# ---------------------------------------------------------------------------------- add_noise


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("clip", [True, False])
def test_same_seed_gives_identical_noise(kind: str, clip: bool) -> None:
    clean = images()
    first = add_noise(clean, kind, 0.3, clip, gen(7))
    assert torch.equal(first, add_noise(clean, kind, 0.3, clip, gen(7)))
    assert not torch.equal(first, add_noise(clean, kind, 0.3, clip, gen(8)))
    assert not torch.equal(first, clean)


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("clip", [True, False])
def test_level_zero_is_the_identity(kind: str, clip: bool) -> None:
    clean = images()
    assert torch.equal(add_noise(clean, kind, 0.0, clip, gen(1)), clean)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_clip_keeps_pixels_in_unit_range(kind: str) -> None:
    noisy = add_noise(images(), kind, 0.9, True, gen(2))
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert noisy.shape == images().shape and noisy.dtype == torch.float32


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_gaussian_noise_unclipped_has_mean_zero_and_std_level(level: float) -> None:
    clean = flat(0.5)
    noise = (add_noise(clean, "gaussian", level, False, gen(3)) - clean).flatten().double()
    n = noise.numel()
    assert abs(float(noise.mean())) < SIGMAS * level / math.sqrt(n)
    assert abs(float(noise.std()) - level) < SIGMAS * level / math.sqrt(2 * (n - 1))
    assert noise.min() < -level and noise.max() > level  # unclipped: spread beyond one std


@pytest.mark.parametrize("amount", [0.05, 0.2, 0.6])
def test_salt_pepper_changes_the_given_fraction_half_to_each_extreme(amount: float) -> None:
    noisy = add_noise(flat(0.5), "salt_pepper", amount, True, gen(4))
    n = noisy.numel()
    for fraction, p in [
        (float((noisy != 0.5).double().mean()), amount),
        (float((noisy == 0.0).double().mean()), amount / 2),
        (float((noisy == 1.0).double().mean()), amount / 2),
    ]:
        assert abs(fraction - p) < SIGMAS * math.sqrt(p * (1 - p) / n)
    assert set(noisy.unique().tolist()) == {0.0, 0.5, 1.0}


def test_speckle_leaves_zero_pixels_zero_and_scales_with_intensity() -> None:
    clean = torch.cat([flat(0.0), flat(0.8)])
    noisy = add_noise(clean, "speckle", 0.5, False, gen(5))
    background, ink = noisy[: len(noisy) // 2], noisy[len(noisy) // 2 :]
    assert torch.equal(background, torch.zeros_like(background))
    spread = (ink - 0.8).flatten().double()
    expected = 0.8 * 0.5  # x * level * N(0, 1) at x = 0.8
    assert abs(float(spread.std()) - expected) < SIGMAS * expected / math.sqrt(2 * len(spread))


def test_unknown_kind_is_refused_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown noise kind 'poisson'") as info:
        add_noise(images(), "poisson", 0.3, True, gen(0))
    assert "gaussian, salt_pepper, speckle" in str(info.value)


# ------------------------------------------------------------------------ save_split/load_split


def split_tensors(n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean uint8, noisy float32 exactly representable in float16, labels int64)."""
    clean = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen(10))
    noisy = torch.rand(n, 28, 28, generator=gen(11)).half().float()
    labels = torch.randint(0, 10, (n,), generator=gen(12))
    return clean, noisy, labels


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    clean, noisy, labels = split_tensors()
    path = tmp_path / "train.pt"
    save_split(path, clean, noisy, labels)
    stored = torch.load(path, weights_only=True)["tensors"]
    assert {k: v.dtype for k, v in stored.items()} == {
        "clean": torch.uint8,
        "noisy": torch.float16,
        "labels": torch.uint8,
    }
    split = load_split(path)
    assert isinstance(split, Split) and len(split) == len(labels)
    assert split.clean.shape == split.noisy.shape == (len(labels), 1, 28, 28)
    assert split.clean.dtype == split.noisy.dtype == torch.float32
    assert torch.equal(split.clean, clean.unsqueeze(1).float() / 255)
    assert torch.equal(split.noisy, noisy.unsqueeze(1))
    assert torch.equal(split.labels, labels) and split.labels.dtype == torch.int64
    assert [p.name for p in tmp_path.iterdir()] == ["train.pt"]  # no temporaries left


def test_save_is_byte_deterministic(tmp_path: Path) -> None:
    tensors = split_tensors()
    paths = [tmp_path / "a" / "test.pt", tmp_path / "b" / "test.pt"]
    for path in paths:
        path.parent.mkdir()
        save_split(path, *tensors)
    first = paths[0].read_bytes()
    assert first == paths[1].read_bytes()
    save_split(paths[0], *tensors)  # overwriting gives the same bytes again
    assert paths[0].read_bytes() == first
    save_split(paths[1], tensors[0], tensors[1] + 0.5, tensors[2])
    assert paths[1].read_bytes() != first


@pytest.mark.parametrize("rows", [slice(0, 500), slice(6000, 6500), slice(0, 10_000, 20)])
def test_a_saved_slice_holds_only_its_own_images(tmp_path: Path, rows: slice) -> None:
    """Slices of 10,000 images already in the stored dtypes (as make_noisy passes MNIST's
    uint8 images): without a copy, torch.save would write the whole tensors they view."""
    n = 10_000
    clean = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen(1))
    noisy = torch.rand(n, 28, 28, generator=gen(2)).half()
    labels = torch.randint(0, 10, (n,), generator=gen(3)).byte()
    part = [t[rows] for t in (clean, noisy, labels)]
    assert len(part[0]) == 500
    path = tmp_path / "train.pt"
    save_split(path, *part)

    size = path.stat().st_size
    own = 500 * (28 * 28 * 3 + 1)  # uint8 clean, float16 noisy, uint8 labels
    whole = n * (28 * 28 * 1 + 1)  # what the views of the uint8 tensors alone would store
    assert own < size < own + 20_000 < 2_000_000 < whole
    split = load_split(path)
    assert torch.equal(split.clean, part[0].unsqueeze(1).float() / 255)
    assert torch.equal(split.noisy, part[1].unsqueeze(1).float())
    assert torch.equal(split.labels, part[2].long())


def damaged(path: Path, how: str) -> None:
    """Write a broken split file at `path`."""
    clean, noisy, labels = split_tensors()
    if how in ("truncated", "garbage", "empty"):
        save_split(path, clean, noisy, labels)
        whole = path.read_bytes()
        broken = {"truncated": whole[: len(whole) // 2], "garbage": b"not torch\x00\xff" * 10}
        path.write_bytes(broken.get(how, b""))
        return
    if how in ("not-a-dict", "unchecked"):  # files torch reads but this pipeline never wrote
        stored = {"clean": clean, "noisy": noisy.half(), "labels": labels.byte()}
        torch.save([clean, noisy, labels] if how == "not-a-dict" else stored, path)
        return
    tensors = {  # checksummed: the split's own checks must see what is wrong
        "missing-key": {"clean": clean, "noisy": noisy.half()},
        "wrong-dtype": {"clean": clean, "noisy": noisy, "labels": labels.byte()},
        "wrong-shape": {"clean": clean, "noisy": noisy[:, :14].half(), "labels": labels.byte()},
        "length-mismatch": {"clean": clean, "noisy": noisy.half(), "labels": labels[:-1].byte()},
        "no-images": {"clean": clean[:0], "noisy": noisy[:0].half(), "labels": labels[:0].byte()},
        "scalar-labels": {"clean": clean, "noisy": noisy.half(), "labels": labels[0].byte()},
    }
    tensorfile.save(path, {}, tensors[how])


def refusal(path: Path) -> str:
    """The message of the PipelineError `load_split` raises; it names the file and the stage."""
    with pytest.raises(PipelineError) as info:
        load_split(path)
    message = str(info.value)
    assert str(path) in message and "dvc repro make_noisy" in message, message
    return message


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "empty", "not-a-dict", "unchecked", "missing-key", "wrong-dtype",
     "wrong-shape", "length-mismatch", "no-images", "scalar-labels"],
)  # fmt: skip
def test_damaged_split_file_names_path_and_make_noisy(tmp_path: Path, how: str) -> None:
    path = tmp_path / "noisy" / "train.pt"
    path.parent.mkdir()
    damaged(path, how)
    refusal(path)


def test_missing_split_file_names_path_and_make_noisy(tmp_path: Path) -> None:
    assert "missing" in refusal(tmp_path / "noisy" / "test.pt")


def test_a_split_with_one_flipped_bit_is_refused_by_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "noisy" / "val.pt"
    path.parent.mkdir()
    save_split(path, *split_tensors())
    flip_a_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch itself sees nothing wrong
    assert "checksum" in refusal(path)
