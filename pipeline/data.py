"""MNIST as torchvision parses it, synthetic noise, and the noisy dataset files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from torchvision.datasets import MNIST

from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import MNIST_TRAIN_IMAGES, NoiseKind
from pipeline.plumbing.errors import PipelineError
from pipeline.runtime import generator

IMAGE_SHAPE = (28, 28)
SPLIT_DTYPES = {"clean": torch.uint8, "noisy": torch.float16, "labels": torch.uint8}
MAX_SPLIT_BYTES = MNIST_TRAIN_IMAGES * (28 * 28 * 3 + 1) + 2**20  # all of MNIST, and slack


def load_mnist(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 28 x 28) and labels (int64) parsed by torchvision from `folder`
    (named MNIST, torchvision's layout: `folder/raw/*-ubyte`)."""
    try:
        ds = MNIST(str(folder.parent), train=train, download=False)
    except Exception as e:
        raise PipelineError(
            f"MNIST raw files under {folder}/raw are missing or unreadable "
            f"({str(e) or type(e).__name__}); "
            "run `dvc repro download`"
        ) from e
    return ds.data, ds.targets


def split_indices(seed: int, val_size: int, train_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation and training indices into MNIST's training images: disjoint seeded samples
    (stream `split`)."""
    perm = torch.randperm(MNIST_TRAIN_IMAGES, generator=generator(seed, "split"))
    return perm[:val_size], perm[val_size:][:train_size]


def add_noise(
    clean: torch.Tensor,
    kind: str,
    level: float | torch.Tensor,
    clip: bool,
    gen: torch.Generator,
) -> torch.Tensor:
    """Corrupt images in [0, 1]; `level` is one number, or one per image (N x 1 x 1 x 1).

    gaussian: x + level * N(0, 1); speckle: x + x * level * N(0, 1);
    salt_pepper: a fraction `level` of pixels set to 0 or 1 with equal odds.
    """
    if kind == "gaussian":
        noisy = clean + level * torch.randn(clean.shape, generator=gen)
    elif kind == "speckle":
        noisy = clean + clean * level * torch.randn(clean.shape, generator=gen)
    elif kind == "salt_pepper":
        u = torch.rand(clean.shape, generator=gen)
        noisy = torch.where(u < level / 2, 0.0, torch.where(u < level, 1.0, clean))
    else:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {', '.join(get_args(NoiseKind))}")
    return noisy.clamp(0.0, 1.0) if clip else noisy


@dataclass(frozen=True)
class Split:
    """One split of the noisy dataset as float32 N x 1 x 28 x 28 tensors in memory."""

    clean: torch.Tensor
    noisy: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.clean.to(device), self.noisy.to(device), self.labels.to(device))


def save_split(path: Path, clean: torch.Tensor, noisy: torch.Tensor, labels: torch.Tensor) -> None:
    """Store compactly: clean and labels as uint8, noisy as float16 (checksummed)."""
    tensors = {"clean": clean, "noisy": noisy, "labels": labels}
    tensorfile.save(path, {}, {k: t.to(SPLIT_DTYPES[k]) for k, t in tensors.items()})


def load_split(path: Path) -> Split:
    """Load a file written by :func:`save_split`; a damaged file names `make_noisy`."""
    _, blob = tensorfile.load(path, made_by="make_noisy", max_bytes=MAX_SPLIT_BYTES)
    ok = set(blob) == set(SPLIT_DTYPES) and all(
        blob[key].dtype == dtype for key, dtype in SPLIT_DTYPES.items()
    )
    clean, noisy, labels = (blob[key] for key in SPLIT_DTYPES) if ok else (None, None, None)
    if not (
        ok
        and labels.ndim == 1
        and len(labels) > 0
        and clean.shape == noisy.shape == (len(labels), *IMAGE_SHAPE)
    ):
        raise PipelineError(
            f"{path} does not hold a noisy MNIST split; run `dvc repro make_noisy` to rebuild it"
        )
    return Split(
        clean=clean.unsqueeze(1).float().div_(255),
        noisy=noisy.unsqueeze(1).float(),
        labels=labels.long(),
    )
