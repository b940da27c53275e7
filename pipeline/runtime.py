"""Process-level plumbing shared by the stages: errors, determinism, devices, atomic files."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class PipelineError(Exception):
    """A problem the user can fix; stages print it as one clear message, without a traceback."""


def stage(main: Callable[[], None]) -> Callable[[], None]:
    """Decorate a stage's `main`: a :class:`PipelineError` becomes `error: ...` and exit code 1."""

    @functools.wraps(main)
    def run() -> None:
        try:
            main()
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return run


def set_determinism(seed: int) -> None:
    """Seed every global generator and make torch pick deterministic kernels only."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when a GPU is present, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "device: cuda was requested but no CUDA GPU is available "
            "(torch.cuda.is_available() is False); set device: auto or cpu in params.yaml"
        )
    return torch.device(name)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Works for files and directories. On failure (or SIGKILL) the final path is never
    half-written; a leftover temporary is removed on the next attempt by :func:`clean_stale`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():  # os.replace cannot overwrite a folder:
            path.rename(tmp.parent / f"{path.name}.old")  # move it aside, deleted below
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def clean_stale(path: Path) -> None:
    """Remove temporaries that an interrupted :func:`atomic_path` left beside `path`."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_torch(obj: Any, path: Path | str) -> None:
    """`torch.save` that never leaves a partial file at `path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any) -> None:
    """Write pretty, key-sorted JSON atomically (stable diffs in git)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_torch(path: Path | str, made_by: str) -> Any:
    """`torch.load` (weights only) whose errors name the file and the stage that rebuilds it."""
    path = Path(path)
    hint = f"run `dvc repro {made_by}` (or `dvc checkout --force {path}`) to rebuild it"
    if not path.exists():
        raise PipelineError(f"{path} is missing; {hint}")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is damaged
        raise PipelineError(f"{path} is truncated or corrupted (not a PyTorch file); {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().split("\n")[0].split(". ")[0] or type(e).__name__
        raise PipelineError(f"{path} is truncated or corrupted ({reason}); {hint}") from e
