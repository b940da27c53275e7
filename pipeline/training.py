"""The one training loop both models use; they differ only by their loss function."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from pipeline.data import Split, add_noise
from pipeline.plumbing.config import NoiseParams, TrainParams
from pipeline.plumbing.errors import PipelineError
from pipeline.registry import LossFn
from pipeline.runtime import INFERENCE_BATCH, generator

NoiseFn = Callable[[torch.Tensor, int | str], torch.Tensor]  # (clean, epoch or stream) -> noisy


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Split,
    val: Split,
    cfg: TrainParams,
    *,
    seed: int,
    device: torch.device,
    live_dir: Path,
    name: str,
    noise: NoiseFn | None = None,
) -> dict[str, dict[str, float]]:
    """Train `model` in place with AdamW and a one-cycle schedule; return the last epoch's
    mean train terms and validation metrics (`{"train": ..., "val": ...}`).

    Batches are drawn from in-memory tensors in an order from the stream `batch-order/<name>`.
    With `noise` (see :func:`fresh_noise`), the training images get noise drawn anew each epoch
    instead of the fixed noisy copy. Losses are summed on the device and read once per epoch
    (no host sync per step). Each epoch is logged with dvclive into `live_dir` (step = epoch number)
    and as one line on stdout.
    """
    order = generator(seed, "batch-order", name)
    steps = math.ceil(len(train) / cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps)
    model.to(device, memory_format=torch.channels_last)  # faster convolutions on CPU
    clean_cpu = train.clean
    train, val = train.to(device), val.to(device)
    autocast = partial(
        torch.autocast, device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"
    )
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    quiet = not sys.stderr.isatty()  # progress bars on a terminal only, not in logs
    summary: dict[str, dict[str, float]] = {}
    for epoch in tqdm(range(cfg.epochs), desc=f"{name} epochs", unit="epoch", disable=quiet):
        start = time.perf_counter()
        if noise is not None:
            train = replace(train, noisy=noise(clean_cpu, epoch).to(device))
        model.train()
        totals: dict[str, torch.Tensor] = {}
        batches = tqdm(
            epoch_batches(train, cfg.batch_size, order),
            total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=quiet,
        )  # fmt: skip
        for step, (noisy, clean) in enumerate(batches):
            values = train_step(model, loss_fn, opt, sched, noisy, clean, epoch + step / steps,
                                autocast)  # fmt: skip
            for key, value in values.items():
                totals[key] = totals.get(key, 0) + value * len(noisy)
        summary["train"] = {key: float(value) / len(train) for key, value in totals.items()}
        with autocast():
            summary["val"] = validate(model, loss_fn, val, cfg.epochs)
        live.step = epoch + 1  # the curves count epochs from 1, as the log lines do
        for split, values in summary.items():
            for key, value in values.items():
                _check_finite(name, f"{split} {key}", value, f"epoch {epoch + 1}")
                live.log_metric(f"{split}/{key}", value)
        tqdm.write(
            f"{name} epoch {epoch + 1}/{cfg.epochs}: train loss {summary['train']['loss']:.5f}, "
            f"val loss {summary['val']['loss']:.5f}, val MSE {summary['val']['mse']:.5f}, "
            f"{time.perf_counter() - start:.1f} s"
        )
        sys.stdout.flush()
    return summary


def fresh_noise(
    noise: NoiseParams, seed: int, levels: tuple[float, float] | None = None
) -> NoiseFn:
    """Each epoch's noisy copy of the clean images at `noise.level`, drawn on the CPU (the same
    on every device) from the stream `train-noise/<epoch>` (the same draw for both models).
    With `levels` (low, high), each image's level is drawn uniformly from that range instead
    (stream `train-levels/<epoch>`): the training data of a blind denoiser."""

    def draw(clean: torch.Tensor, epoch: int | str) -> torch.Tensor:
        level: float | torch.Tensor = noise.level
        if levels is not None:
            low, high = levels
            u = torch.rand(len(clean), 1, 1, 1, generator=generator(seed, "train-levels", epoch))
            level = low + (high - low) * u
        gen = generator(seed, "train-noise", epoch)
        return add_noise(clean, noise.kind, level, noise.clip, gen)

    return draw


def make_optimizer(
    model: nn.Module, cfg: TrainParams, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle learning-rate schedule over `total_steps` batches (a warm-up
    over the first 15%, then cosine decay)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.15
    )
    return opt, sched


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    epochs_done: float,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss and its terms as detached tensors on the
    device (reading them would wait for the device: the caller sums them first)."""
    with autocast():
        loss, terms = loss_fn(model, noisy, clean, epochs_done)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return {key: value.detach() for key, value in {"loss": loss, **terms}.items()}


def epoch_batches(
    split: Split, batch_size: int, order: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (noisy, clean) batches of in-memory tensors, shuffled by `order`."""
    perm = torch.randperm(len(split), generator=order).to(split.noisy.device)
    for start in range(0, len(split), batch_size):
        idx = perm[start : start + batch_size]
        yield split.noisy[idx], split.clean[idx]


@torch.no_grad()
def validate(
    model: nn.Module, loss_fn: LossFn, split: Split, epochs_done: float
) -> dict[str, float]:
    """Mean loss terms and MSE of `model(noisy)` against clean over `split` (one host sync)."""
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, len(split), INFERENCE_BATCH):
        noisy = split.noisy[start : start + INFERENCE_BATCH]
        clean = split.clean[start : start + INFERENCE_BATCH]
        loss, terms = loss_fn(model, noisy, clean, epochs_done)
        mse = torch.mean((model(noisy).float() - clean) ** 2)
        for key, value in {"loss": loss, **terms, "mse": mse}.items():
            totals[key] = totals.get(key, 0) + value * len(noisy)
    return {key: float(value) / len(split) for key, value in totals.items()}


def _check_finite(name: str, what: str, value: float, when: str) -> None:
    """Stop training with a clear error, before anything is saved, once `value` is NaN or inf."""
    if not math.isfinite(value):
        raise PipelineError(
            f"{name} training diverged: {what} is {value} at {when}; nothing was saved. "
            f"Lower {name}.lr in params.yaml and rerun."
        )
