"""MNIST from mirrors (torchvision parses and MD5-checks), noise, and the noisy dataset files."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.datasets import MNIST
from torchvision.datasets.utils import calculate_md5, download_url, extract_archive

from pipeline.errors import PipelineError
from pipeline.runtime import load_torch

DEFAULT_MIRRORS: tuple[str, ...] = tuple(MNIST.mirrors)
RESOURCES: tuple[tuple[str, str], ...] = tuple(MNIST.resources)  # (file name, md5)
NOISE_KINDS = ("gaussian", "salt_pepper", "speckle")
IMAGE_SHAPE = (28, 28)
SPLIT_DTYPES = {"clean": torch.uint8, "noisy": torch.float16, "labels": torch.uint8}


class DownloadError(PipelineError):
    """Every mirror failed for one file; the message lists each mirror with its reason."""


def fetch_mnist(
    root: Path,
    mirrors: Sequence[str],
    timeout_s: float,
    resources: Sequence[tuple[str, str]] = RESOURCES,
) -> None:
    """Fetch the MNIST `.gz` files into `root/MNIST/raw`, MD5-check and extract them.

    A mirror is an http(s) URL (torchvision's downloader) or a local directory, plain or
    `file://`. Mirrors are tried in order for each file; a failed attempt is reported on
    stderr and its partial file deleted before the next mirror is tried.
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for filename, md5 in resources:
        reasons = []
        for mirror in mirrors:
            try:
                _fetch_file(mirror, filename, md5, raw, timeout_s)
                break
            except Exception as e:  # any failure of one mirror is a reason to try the next
                (raw / filename).unlink(missing_ok=True)
                reasons.append(f"{mirror}: {type(e).__name__}: {e}")
                print(f"mirror failed for {filename}: {reasons[-1]}", file=sys.stderr)
        else:
            tried = "\n".join(f"  - {r}" for r in reasons)
            raise DownloadError(f"could not fetch {filename} from any mirror:\n{tried}")
        extract_archive(str(raw / filename), str(raw))


def _fetch_file(mirror: str, filename: str, md5: str, dest: Path, timeout_s: float) -> None:
    target = dest / filename
    target.unlink(missing_ok=True)  # download_url would keep any file already there, unchecked
    scheme = urlparse(mirror).scheme
    if scheme in ("http", "https"):
        with _socket_timeout(timeout_s):
            download_url(f"{mirror.rstrip('/')}/{filename}", str(dest), filename)
    elif scheme in ("", "file"):
        folder = Path(mirror.removeprefix("file://")).expanduser()
        shutil.copyfile(folder / filename, target)  # copyfile: the copy is writable
    else:
        raise ValueError(f"unsupported scheme {scheme!r}: use http(s)://, file:// or a folder")
    actual = calculate_md5(target)
    if actual != md5:
        raise ValueError(f"MD5 mismatch: got {actual}, expected {md5}")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's urlopen calls pass no timeout; the socket default bounds every wait."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, N x 28 x 28) and labels (int64) parsed by torchvision from `root`."""
    try:
        ds = MNIST(str(root), train=train, download=False)
    except Exception as e:
        raise PipelineError(
            f"MNIST raw files under {root}/MNIST/raw are missing or unreadable "
            f"({str(e) or type(e).__name__}); "
            "run `dvc repro download`"
        ) from e
    return ds.data, ds.targets


def derive_seed(seed: int, *tags: object) -> int:
    """A seed for one named stream of randomness (`derive_seed(seed, "train-noise", epoch)`),
    independent of the other streams and of the platform."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def add_noise(
    clean: torch.Tensor, kind: str, level: float, clip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Corrupt images in [0, 1].

    gaussian: x + level * N(0, 1); speckle: x + x * level * N(0, 1);
    salt_pepper: a fraction `level` of pixels set to 0 or 1 with equal odds.
    """
    if kind == "gaussian":
        noisy = clean + level * torch.randn(clean.shape, generator=generator)
    elif kind == "speckle":
        noisy = clean + clean * level * torch.randn(clean.shape, generator=generator)
    elif kind == "salt_pepper":
        u = torch.rand(clean.shape, generator=generator)
        noisy = torch.where(u < level / 2, 0.0, torch.where(u < level, 1.0, clean))
    else:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {', '.join(NOISE_KINDS)}")
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
    """Store compactly: clean and labels as uint8, noisy as float16. Each tensor is copied
    into storage of its own, so a slice does not save the whole tensor it was cut from."""
    torch.save(
        {
            "clean": clean.to(torch.uint8).clone(),
            "noisy": noisy.to(torch.float16).clone(),
            "labels": labels.to(torch.uint8).clone(),
        },
        path,
    )


def load_split(path: Path) -> Split:
    """Load a file written by :func:`save_split`; a damaged file names `make_noisy`."""
    blob = load_torch(path, made_by="make_noisy")
    ok = isinstance(blob, dict) and all(
        isinstance(blob.get(key), torch.Tensor) and blob[key].dtype == dtype
        for key, dtype in SPLIT_DTYPES.items()
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
