"""Checks before training that can only refuse, never change a result: precision support and
whether the model and batch fit in memory."""

from __future__ import annotations

import psutil
import torch
from torch import nn

from pipeline.plumbing.errors import PipelineError


def check_precision(kind: str, precision: str, device: torch.device) -> None:
    """bf16 needs a device that computes it (any CPU, a CUDA GPU with bf16 support)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PipelineError(
            f"{kind}.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
            f"set {kind}.precision: fp32"
        )


def check_memory(kind: str, model: nn.Module, batch_size: int, device: torch.device) -> None:
    """Refuse, before training, a model and batch whose activations cannot fit in memory.

    Estimate: the outputs of every layer for one image (counted in one forward pass), kept
    for the backward pass and their gradients, times the batch, plus weights and AdamW state.
    """
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    weights = sum(p.numel() for p in model.parameters())
    need = 4 * (2 * batch_size * sum(sizes) + 4 * weights)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = psutil.virtual_memory().available
    if need > free:
        raise PipelineError(
            f"{kind}: training needs about {need / 2**30:.1f} GiB of {device.type} memory for "
            f"{kind}.batch_size = {batch_size} and this model ({weights:,} weights), but "
            f"{free / 2**30:.1f} GiB is free; lower {kind}.batch_size or the model's size "
            f"({kind}.channels, {kind}.latent_dim, ...)"
        )
