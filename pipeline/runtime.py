"""Seeds, determinism and the device: the process settings that can change a result."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

from pipeline.plumbing.errors import PipelineError

# Images per forward pass without gradients (validation, plots, `denoise`): the fastest
# measured on 2 CPU cores (docs/performance.md#inference-in-evaluate).
INFERENCE_BATCH = 250


def derive_seed(seed: int, *stream: object) -> int:
    """The seed of one named stream of randomness (`derive_seed(seed, "noise", "test")`): the
    one rule every generator follows, independent of the other streams and of the platform."""
    digest = hashlib.sha256(repr((seed, *stream)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *stream: object) -> torch.Generator:
    """A CPU generator for one named stream (draws are the same on every device)."""
    return torch.Generator().manual_seed(derive_seed(seed, *stream))


def set_determinism(seed: int, *stream: object) -> None:
    """Seed the global generators (weight init, VAE sampling) from one named stream and make
    torch pick deterministic kernels only."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    value = derive_seed(seed, *stream)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
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
