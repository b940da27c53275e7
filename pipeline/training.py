"""The one training loop both models use; they differ only by their loss function."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from pipeline.config import MODELS_DIR, NOISY_DIR, TRAIN_LOG_DIR, TrainParams
from pipeline.data import Split, load_split
from pipeline.models import build, model_spec, save_model
from pipeline.runtime import PipelineError, atomic_path, resolve_device, set_determinism

# loss_fn(model, noisy, clean, epochs_done) -> (loss to minimise, named terms to log)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]


def train_stage(kind: str, cfg: TrainParams, loss_fn: LossFn, seed: int, device: str) -> None:
    """What `train_dae` and `train_vae` do: load the splits, build, fit, and publish
    models/<kind>.pt with its dvclive log metrics/train/<kind>/ (both or neither)."""
    set_determinism(seed)
    torch_device = resolve_device(device)
    train, val = (load_split(NOISY_DIR / f"{name}.pt") for name in ("train", "val"))
    spec = model_spec(kind, cfg)
    model = build(spec)
    with atomic_path(TRAIN_LOG_DIR / kind) as live_dir:
        val_metrics = fit(model, loss_fn, train, val, cfg, seed, torch_device, live_dir, kind)
        save_model(model, spec, MODELS_DIR / f"{kind}.pt")
    print(f"{kind}: validation MSE {val_metrics['mse']:.5f} -> {MODELS_DIR / f'{kind}.pt'}")


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
) -> dict[str, float]:
    """Train `model` in place with AdamW and a one-cycle schedule; return the last val metrics.

    Batches are drawn from in-memory tensors in an order seeded by `seed`. Per-epoch train and
    validation terms, validation MSE and the learning rate are logged with dvclive into
    `live_dir`.
    """
    order = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train) / cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps)
    model.to(device, memory_format=torch.channels_last)  # faster convolutions on CPU
    train, val = train.to(device), val.to(device)
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    epochs = tqdm(range(cfg.epochs), desc=f"{name} epochs", unit="epoch")
    for epoch in epochs:
        model.train()
        totals: dict[str, float] = defaultdict(float)
        batches = epoch_batches(train, cfg.batch_size, order)
        for step, (noisy, clean) in enumerate(
            tqdm(batches, total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False)
        ):
            values = train_step(model, loss_fn, opt, sched, noisy, clean, epoch + step / steps)
            _check_finite(name, "loss", values["loss"], f"epoch {epoch + 1}, batch {step + 1}")
            for key, value in values.items():
                totals[key] += value * len(noisy)
        val_metrics = validate(model, loss_fn, val, cfg.batch_size, cfg.epochs)
        for key, value in val_metrics.items():  # the last step may have broken the weights
            _check_finite(name, f"validation {key}", value, f"the end of epoch {epoch + 1}")
        for key, value in totals.items():
            live.log_metric(f"train/{key}", value / len(train))
        for key, value in val_metrics.items():
            live.log_metric(f"val/{key}", value)
        live.log_metric("lr", sched.get_last_lr()[0], plot=False)
        live.next_step()
        epochs.set_postfix(train_loss=totals["loss"] / len(train), val_mse=val_metrics["mse"])
    live.end()
    return val_metrics


def make_optimizer(
    model: nn.Module, cfg: TrainParams, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle learning-rate schedule over `total_steps` batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.15
    )
    return opt, sched


def epoch_batches(
    split: Split, batch_size: int, order: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (noisy, clean) batches of in-memory tensors, shuffled by `order`."""
    perm = torch.randperm(len(split), generator=order).to(split.noisy.device)
    for start in range(0, len(split), batch_size):
        idx = perm[start : start + batch_size]
        yield split.noisy[idx], split.clean[idx]


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    epochs_done: float,
) -> dict[str, float]:
    """One optimisation step; returns the loss and its terms as floats. A non-finite loss
    leaves the model and optimizer untouched (the caller decides what to do)."""
    loss, terms = loss_fn(model, noisy, clean, epochs_done)
    values = {key: float(value.detach()) for key, value in {"loss": loss, **terms}.items()}
    if math.isfinite(values["loss"]):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return values


@torch.no_grad()
def validate(
    model: nn.Module,
    loss_fn: LossFn,
    split: Split,
    batch_size: int,
    epochs_done: float,
) -> dict[str, float]:
    """Mean loss terms and MSE of `model(noisy)` against clean over `split`."""
    model.eval()
    totals: dict[str, float] = defaultdict(float)
    for start in range(0, len(split), batch_size):
        noisy = split.noisy[start : start + batch_size]
        clean = split.clean[start : start + batch_size]
        loss, terms = loss_fn(model, noisy, clean, epochs_done)
        totals["loss"] += float(loss) * len(noisy)
        for key, value in terms.items():
            totals[key] += float(value) * len(noisy)
        totals["mse"] += float(torch.mean((model(noisy) - clean) ** 2)) * len(noisy)
    return {key: value / len(split) for key, value in totals.items()}


def _check_finite(name: str, what: str, value: float, when: str) -> None:
    """Stop training with a clear error, before anything is saved, once `value` is NaN or inf."""
    if not math.isfinite(value):
        raise PipelineError(
            f"{name} training diverged: {what} is {value} at {when}; nothing was saved. "
            f"Lower {name}.lr in params.yaml and rerun."
        )
