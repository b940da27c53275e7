"""Torch files that say when they are damaged: checksummed tensors, sizes bounded before loading.

A file holds `{"meta": ..., "tensors": {name: tensor}, "sha256": ...}`, written by
:func:`save` and read by :func:`load` with `weights_only` (no code runs). DVC trusts its state
database and torch's zip reader checks no CRC, so bit rot in the cache would otherwise pass
unnoticed: the SHA-256 of the meta and of every tensor's bytes is checked on load. Before
torch reads anything, the archive's stored size is checked against a bound from the caller,
and compressed members (torch never writes them: a zip bomb) are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipeline.plumbing.errors import PipelineError


def checksum(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of `meta` (as sorted JSON) and of each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` (each copied into storage of its own) with `meta` and their checksum.
    The archive is built in memory and written with one plain write, so a full disk is an
    OSError naming `path`."""
    own = {name: t.detach().cpu().clone() for name, t in tensors.items()}
    buffer = io.BytesIO()
    torch.save({"meta": meta, "tensors": own, "sha256": checksum(meta, own)}, buffer)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def load(
    path: Path, made_by: str, max_bytes: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of a file written by :func:`save`; any damage is a :class:`PipelineError`
    that names the file and the stage that rebuilds it."""
    hint = f"run `dvc repro {made_by}` (or `dvc checkout --force {path}`) to rebuild it"
    if not path.exists():
        raise PipelineError(f"{path} is missing; {hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile):  # torch.save writes zip archives
        raise PipelineError(
            f"{path} is truncated or corrupted (not a PyTorch file); {hint}"
        ) from None
    stored = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or stored > max_bytes:
        raise PipelineError(
            f"{path} holds {stored:,} bytes of data where at most {max_bytes:,} are expected "
            f"(or compressed data, which torch never writes); {hint}"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        reason = str(e).strip().split("\n")[0].split(". ")[0] or type(e).__name__
        raise PipelineError(f"{path} is truncated or corrupted ({reason}); {hint}") from None
    ok = isinstance(blob, dict) and set(blob) == {"meta", "tensors", "sha256"}
    meta, tensors = (blob["meta"], blob["tensors"]) if ok else (None, None)
    if not (
        isinstance(meta, dict)
        and isinstance(tensors, dict)
        and all(isinstance(t, torch.Tensor) for t in tensors.values())
    ):
        raise PipelineError(f"{path} is not a file this pipeline writes; {hint}")
    if checksum(meta, tensors) != blob["sha256"]:
        raise PipelineError(f"{path} is corrupted (its checksum does not match); {hint}")
    return meta, tensors
