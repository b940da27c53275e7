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

import psutil
import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from pipeline.config import NoiseParams, Params, TrainParams
from pipeline.data import Split, add_noise, derive_seed, load_split
from pipeline.errors import PipelineError
from pipeline.models import LossFn, build, loss_for, model_spec, save_model
from pipeline.paths import MODELS_DIR, NOISY_DIR, TRAIN_LOG_DIR
from pipeline.runtime import publish, resolve_device, set_determinism, write_json

VAL_BATCH = 1000  # validation runs without gradients: large batches, few steps


def train_stage(kind: str, params: Params) -> None:
    """What `train_dae` and `train_vae` do: load the splits, build, check the model fits in
    memory, fit, and publish models/<kind>.pt with metrics/train/<kind>/ (both or neither).
    The training curves are written in place epoch by epoch (`dvc plots show` follows them)."""
    cfg: TrainParams = getattr(params, kind)
    set_determinism(params.seed)
    device = resolve_device(params.device)
    check_precision(kind, cfg.precision, device)
    train, val = (load_split(NOISY_DIR / f"{name}.pt") for name in ("train", "val"))
    spec = model_spec(kind, cfg)
    model = build(spec)
    check_memory(kind, model, cfg.batch_size, device)
    noise = params.noise if cfg.fresh_noise else None
    log_dir = TRAIN_LOG_DIR / kind
    model_file = MODELS_DIR / f"{kind}.pt"
    with publish(model_file, log_dir / "metrics.json", live=log_dir) as (model_tmp, summary_tmp):
        summary = fit(
            model, loss_for(kind, cfg), train, val, cfg, params.seed, device, log_dir, kind, noise
        )
        save_model(model, spec, model_tmp)
        write_json(summary_tmp, summary)
    print(f"{kind}: validation MSE {summary['val']['mse']:.5f} -> {model_file}")


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Split,
    val: Split,
    cfg: TrainParams,
    seed: int,
    device: torch.device,
    live_dir: Path,
    name: str,
    noise: NoiseParams | None = None,
) -> dict[str, dict[str, float]]:
    """Train `model` in place with AdamW and a one-cycle schedule; return the last epoch's
    mean train terms and validation metrics (`{"train": ..., "val": ...}`).

    Batches are drawn from in-memory tensors in an order seeded by `seed`. With `noise`, the
    training images get noise drawn anew each epoch (seeded by `seed` and the epoch) instead
    of the fixed noisy copy. Losses are summed on the device and read once per epoch (no host
    sync per step). Each epoch is logged with dvclive into `live_dir` (step = epoch number)
    and as one line on stdout.
    """
    order = torch.Generator().manual_seed(seed)
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
            train = replace(train, noisy=fresh_noise(clean_cpu, noise, seed, epoch).to(device))
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


def fresh_noise(clean: torch.Tensor, noise: NoiseParams, seed: int, epoch: int) -> torch.Tensor:
    """This epoch's noisy copy of `clean`, drawn on the CPU (the same on every device)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "train-noise", epoch))
    return add_noise(clean, noise.kind, noise.level, noise.clip, gen)


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
    for start in range(0, len(split), VAL_BATCH):
        noisy = split.noisy[start : start + VAL_BATCH]
        clean = split.clean[start : start + VAL_BATCH]
        loss, terms = loss_fn(model, noisy, clean, epochs_done)
        mse = torch.mean((model(noisy).float() - clean) ** 2)
        for key, value in {"loss": loss, **terms, "mse": mse}.items():
            totals[key] = totals.get(key, 0) + value * len(noisy)
    return {key: float(value) / len(split) for key, value in totals.items()}


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


def _check_finite(name: str, what: str, value: float, when: str) -> None:
    """Stop training with a clear error, before anything is saved, once `value` is NaN or inf."""
    if not math.isfinite(value):
        raise PipelineError(
            f"{name} training diverged: {what} is {value} at {when}; nothing was saved. "
            f"Lower {name}.lr in params.yaml and rerun."
        )
