"""Process-level plumbing shared by the stages: determinism, devices, model and data files,
and publishing a stage's outputs all together or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import PipelineError


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
def publish(*paths: Path | str, live: Path | str | None = None) -> Iterator[list[Path]]:
    """Publish a stage's outputs all together, or none of them.

    Checks first that every output can be written (before any heavy work), then yields one
    temporary path per output (files or folders, in the same folders as their targets). When
    the block succeeds, each previous output is moved aside and the new one renamed into
    place; if any rename fails, everything is put back as it was. When the block fails (or
    Ctrl-C), the temporaries are removed and the previous outputs are untouched.

    `live` is a folder the block writes in place while it runs (training curves that
    `dvc plots show` reads during training): its previous content is moved aside at the
    start, restored on failure and dropped on success.
    """
    targets = [Path(p) for p in paths]
    for path in [*targets, *([Path(live)] if live else [])]:
        _check_writable(path)
    work: list[Path] = []
    restore_live = _set_aside(Path(live)) if live else None
    try:
        work.extend(_scratch_dir(target) for target in targets)
        yield [w / t.name for w, t in zip(work, targets, strict=True)]
        _swap_in(targets, work)
    except BaseException:
        if restore_live:
            restore_live()
        raise
    else:
        if restore_live:
            restore_live(keep_new=True)
    finally:
        for w in work:
            shutil.rmtree(w, ignore_errors=True)


def _check_writable(target: Path) -> None:
    """Raise a :class:`PipelineError` unless `target` (a file, or a folder and everything in
    it) can be replaced: its nearest existing folder is a writable folder, and nothing in
    the way is read-only. Creates nothing."""
    ancestor = target.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PipelineError(f"cannot write {target}: {ancestor} is a file, not a folder")
    inside = target.rglob("*") if target.is_dir() and not target.is_symlink() else []
    for path in [ancestor, target, *inside]:
        if (path.exists() or path.is_symlink()) and not os.access(path, os.W_OK):
            what = "it" if path == target else str(path)
            raise PipelineError(f"cannot write {target}: {what} is read-only or immutable")


def _scratch_dir(target: Path) -> Path:
    """A fresh temporary folder beside `target` (removing leftovers of interrupted runs)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise PipelineError(f"cannot write {target}: {e.strerror or e} ({target.parent})") from None


def _swap_in(targets: list[Path], work: list[Path]) -> None:
    """Rename each new output into place, keeping the old ones until all have succeeded."""
    done: list[tuple[Path, Path]] = []  # (target, where its previous version went)
    for target, w in zip(targets, work, strict=True):
        old = w / f"{target.name}.old"
        try:
            if target.exists() or target.is_symlink():
                os.replace(target, old)
            done.append((target, old))
            os.replace(w / target.name, target)
        except OSError as e:
            _roll_back(done)
            raise PipelineError(f"cannot publish {target}: {e}; previous outputs kept") from None


def _roll_back(done: list[tuple[Path, Path]]) -> None:
    """Put back the previous outputs that :func:`_swap_in` had already replaced."""
    for target, old in reversed(done):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if old.exists() or old.is_symlink():
            os.replace(old, target)


def _set_aside(folder: Path) -> Callable[..., None]:
    """Move `folder` away and recreate it empty; return `restore(keep_new=False)`, which puts
    the previous content back (or, with `keep_new`, just drops it)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        if folder.exists():
            os.replace(folder, aside / folder.name)
        folder.mkdir()
    except OSError as e:
        raise PipelineError(f"cannot write {folder}: {e.strerror or e}") from None

    def restore(keep_new: bool = False) -> None:
        if not keep_new:
            shutil.rmtree(folder, ignore_errors=True)
            if (aside / folder.name).exists():
                os.replace(aside / folder.name, folder)
        shutil.rmtree(aside, ignore_errors=True)

    return restore


def clean_stale(path: Path) -> None:
    """Remove temporaries that an interrupted :func:`publish` left beside `path`."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_json(path: Path | str, obj: Any) -> None:
    """Pretty, key-sorted JSON (stable diffs in git)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
