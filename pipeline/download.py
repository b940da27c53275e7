"""Stage `download`: the official MNIST files into data/MNIST/raw, MD5-checked.

Reads params `data.mirrors`, `data.timeout_s` and `paths.mnist`; the environment variable
MNIST_MIRROR (an http(s) URL or a folder holding the four `.gz` files) is tried first when set.
Writes data/MNIST/raw/ (the four `.gz` files and their parsed forms).

Downloads are bounded: each file is read in chunks and refused as soon as it grows past its
known size, and must be complete within a deadline of 10 x `data.timeout_s` seconds per file
and mirror (`data.timeout_s` alone bounds each network wait, not the whole file). A mirror
that fails is reported and the next one tried.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets import MNIST
from torchvision.datasets.utils import extract_archive

from pipeline.data import load_mnist
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import check_mirror, load_params
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import publish

MIRROR_ENV = "MNIST_MIRROR"
DEADLINE_FACTOR = 10  # a file's deadline, in units of `data.timeout_s`
CHUNK = 1 << 16  # bytes per read
USER_AGENT = "denoise-pipeline"  # some mirrors refuse urllib's default agent
SIZES = {  # bytes of the official files (the MD5s come from torchvision)
    "train-images-idx3-ubyte.gz": 9_912_422,
    "train-labels-idx1-ubyte.gz": 28_881,
    "t10k-images-idx3-ubyte.gz": 1_648_877,
    "t10k-labels-idx1-ubyte.gz": 4_542,
}
RESOURCES: tuple[tuple[str, str, int], ...] = tuple(
    (name, md5, SIZES[name]) for name, md5 in MNIST.resources
)  # (file name, md5, size in bytes)


@stage
def main() -> None:
    params = load_params()
    override = os.environ.get(MIRROR_ENV, "").strip()
    try:  # the params schema checks data.mirrors, not the environment
        check_mirror(override)
    except ValueError as e:
        raise PipelineError(f"{MIRROR_ENV}: {e}") from None
    mirrors = [override, *params.data.mirrors] if override else list(params.data.mirrors)
    target = Path(params.paths.mnist)
    with publish("download", folders={"mnist": target}) as out:
        try:
            fetch_mnist(out.mnist, mirrors, params.data.timeout_s)
        except DownloadError as e:
            raise PipelineError(
                f"{e}\nTo use another copy, set {MIRROR_ENV} to an http(s) URL or a local "
                f"folder holding the four MNIST .gz files, e.g. {MIRROR_ENV}=../shared/mnist"
            ) from None
        for train in (True, False):  # parse both splits before publishing the folder
            load_mnist(out.mnist, train)
    print(f"MNIST ready in {target / 'raw'}")


class DownloadError(PipelineError):
    """Every mirror failed for one file; the message lists each mirror with its reason."""


def fetch_mnist(
    folder: Path,
    mirrors: Sequence[str],
    timeout_s: float,
    resources: Sequence[tuple[str, str, int]] = RESOURCES,
) -> None:
    """Fetch the MNIST `.gz` files into `folder/raw`, check size and MD5, extract them.

    A mirror is an http(s) URL or a local directory, plain or `file://`. Mirrors are tried in
    order for each file; a failed attempt is reported on stderr and its partial file deleted
    before the next mirror is tried. `resources` holds (file name, md5, size in bytes).
    """
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for filename, md5, size in resources:
        reasons = []
        for mirror in mirrors:
            try:
                _fetch_file(mirror, filename, md5, size, raw / filename, timeout_s)
                break
            except Exception as e:  # any failure of one mirror is a reason to try the next
                (raw / filename).unlink(missing_ok=True)
                reasons.append(f"{mirror}: {type(e).__name__}: {e}")
                print(f"mirror failed for {filename}: {reasons[-1]}", file=sys.stderr)
        else:
            tried = "\n".join(f"  - {r}" for r in reasons)
            raise DownloadError(f"could not fetch {filename} from any mirror:\n{tried}")
        extract_archive(str(raw / filename), str(raw))


def _fetch_file(
    mirror: str, filename: str, md5: str, size: int, target: Path, timeout_s: float
) -> None:
    """Copy one file from `mirror` to `target` within its size and deadline; check its MD5."""
    deadline = time.monotonic() + DEADLINE_FACTOR * timeout_s
    target.unlink(missing_ok=True)  # never trust a file already there
    if urlparse(check_mirror(mirror)).scheme in ("http", "https"):
        # Not torchvision's download_url: it has no size bound and no overall deadline.
        url = f"{mirror.rstrip('/')}/{filename}"
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout_s) as source:
            actual = _copy_bounded(source, target, size, deadline, timeout_s)
    else:
        folder = Path(mirror.removeprefix("file://")).expanduser()
        with open(folder / filename, "rb") as source:
            actual = _copy_bounded(source, target, size, deadline, timeout_s)
    if actual != md5:
        raise ValueError(f"MD5 mismatch: got {actual}, expected {md5}")


def _copy_bounded(
    source: io.BufferedIOBase, target: Path, size: int, deadline: float, timeout_s: float
) -> str:
    """Copy `source` to `target` in chunks and return its MD5; raise ValueError as soon as it
    has more than `size` bytes, TimeoutError once past `deadline` (a `time.monotonic()`)."""
    digest = hashlib.md5(usedforsecurity=False)
    written = 0
    with open(target, "wb") as out:
        # read1: whatever one system call returns, so a slow source cannot hold a read open
        # past the deadline for longer than one socket wait (timeout_s)
        while chunk := source.read1(min(CHUNK, size + 1 - written)):
            if written + len(chunk) > size:
                raise ValueError(f"larger than the expected {size} bytes")
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no complete file within {DEADLINE_FACTOR * timeout_s:g} s "
                    f"(data.timeout_s = {timeout_s:g}: deadline {DEADLINE_FACTOR} x "
                    f"{timeout_s:g})"
                )
    return digest.hexdigest()


if __name__ == "__main__":
    main()
