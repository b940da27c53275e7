"""Training throughput: our in-memory step vs a tutorial-style DataLoader loop, and GFLOP/s.

Run from the project root: `python -m bench.throughput [--kind vae] [--json bench/results.json]`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.datasets import MNIST
from torchvision.transforms import ToTensor

from pipeline.data import Split, add_noise, load_mnist, load_split
from pipeline.plumbing.config import Params, TrainParams, load_params
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import write_json
from pipeline.registry import LossFn, lookup
from pipeline.runtime import resolve_device, set_determinism
from pipeline.training import epoch_batches, make_optimizer, train_step

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
TARGETS = {"speedup": 3.0, "percent_of_matmul": 50.0}


def our_batches(split: Split, batch_size: int, seed: int) -> Batches:
    """fit()'s batches (pipeline.training.epoch_batches), epoch after epoch."""
    order = torch.Generator().manual_seed(seed)
    while True:
        yield from epoch_batches(split, batch_size, order)


class NoisyDataset(Dataset):
    """Tutorial style: wrap an (image, label) dataset and add Gaussian noise per sample."""

    def __init__(self, base: Dataset, std: float) -> None:
        self.base, self.std = base, std

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self.base[i][0]
        return (clean + self.std * torch.randn_like(clean)).clamp(0.0, 1.0), clean


def naive_batches(dataset: Dataset, batch_size: int, device: torch.device) -> Batches:
    """DataLoader(shuffle=True) with the default num_workers=0, epoch after epoch."""
    while True:
        for noisy, clean in DataLoader(dataset, batch_size=batch_size, shuffle=True):
            yield noisy.to(device), clean.to(device)


def rates(
    fns: dict[str, Callable[[], int]], n: int, warmup: int, device: torch.device, rounds: int = 5
) -> dict[str, float]:
    """Units/s of each `fn` (which returns the units it did) over `n` calls after `warmup`,
    timed in alternating rounds so that a changing machine load affects them all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    done, seconds = dict.fromkeys(fns, 0), dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        _ = [fn() for _ in range(warmup)]
    for r in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            done[name] += sum(fn() for _ in range(n // rounds + (r < n % rounds)))
            sync()
            seconds[name] += time.perf_counter() - start
    return {name: done[name] / seconds[name] for name in fns}


def step_fn(
    model: nn.Module, loss_fn: LossFn, batches: Batches, cfg: TrainParams, total_steps: int
) -> Callable[[], int]:
    """fit()'s per-batch work (pipeline.training.train_step) as a call returning the batch size."""
    opt, sched = make_optimizer(model, cfg, total_steps)
    model.train()

    def step() -> int:
        noisy, clean = next(batches)
        if not math.isfinite(
            float(train_step(model, loss_fn, opt, sched, noisy, clean, 0.0)["loss"])
        ):
            raise PipelineError("the benchmark's loss is not finite")
        return len(noisy)

    return step


def draw(batches: Batches) -> Callable[[], int]:
    """Drawing one batch alone (no training) as a call returning its image count."""
    return lambda: len(next(batches)[0])


def step_flops(model: nn.Module, loss_fn: LossFn, noisy: torch.Tensor, clean: torch.Tensor) -> int:
    """FLOPs of one forward + backward; FlopCounterMode counts matmul/conv-type ops only."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, noisy, clean, 0.0)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of float32 n x n @ n x n (2 n^3 FLOPs each), after one warm-up product."""
    a, b, out = (torch.rand(n, n, device=device) for _ in range(3))

    def product() -> int:
        torch.mm(a, b, out=out)
        return 2 * n**3

    return rates({"mm": product}, reps, 1, device, rounds=1)["mm"] / 1e9


def mnist_root(params: Params) -> Path:
    """`data` (the pipeline's: `paths.mnist`), else $MNIST_ROOT, else /tmp/mn: the first
    holding MNIST/raw."""
    pipeline_root = Path(params.paths.mnist).parent
    for root in [pipeline_root, Path(os.environ.get("MNIST_ROOT", "/tmp/mn")), Path("/tmp/mn")]:
        if (root / "MNIST" / "raw").is_dir():
            return root
    raise PipelineError("no MNIST in data/, $MNIST_ROOT or /tmp/mn; run `dvc repro download` first")


def noisy_train(params: Params) -> Split:
    """data/noisy/train.pt if made, else the same float32 tensors built in memory from MNIST."""
    train_file = Path(params.paths.noisy) / "train.pt"
    if train_file.exists():
        return load_split(train_file)
    images = load_mnist(mnist_root(params) / "MNIST", train=True)[0]
    clean = images[: params.data.train_size].unsqueeze(1) / 255
    noise, gen = params.noise, torch.Generator().manual_seed(params.seed)
    noisy = add_noise(clean, noise.kind, noise.level, noise.clip, gen)
    return Split(clean, noisy, torch.zeros(len(clean), dtype=torch.long))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")


def parse_args() -> argparse.Namespace:
    """The command line (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["dae", "vae"], default="dae")
    parser.add_argument("--steps", type=int, default=100, help="timed batches per loop")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches before those")
    parser.add_argument("--batch-size", type=int, help="default: <kind>.batch_size of params.yaml")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: params.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if min(args.steps, args.batch_size or 1, args.threads, args.warmup + 1) < 1:
        parser.error("--steps, --batch-size and --threads must be >= 1, --warmup >= 0")
    return args


def main() -> None:
    """Time both loops and the FLOP rates; print the figures, optionally write them as JSON."""
    args, params = parse_args(), load_params()
    cfg = params.dae if args.kind == "dae" else params.vae
    batch = args.batch_size or cfg.batch_size
    torch.set_num_threads(args.threads)  # for both loops (the naive one loads in-process)
    set_determinism(params.seed, "init", args.kind)  # as the train stage does before fit()
    device = resolve_device(args.device or params.device)
    entry = lookup(args.kind, cfg.arch)
    loss_fn = entry.loss_of(cfg)
    split = noisy_train(params).to(device)  # one-off loading: not timed
    tutorial = NoisyDataset(MNIST(str(mnist_root(params)), transform=ToTensor()), params.noise.std)
    f: dict[str, Any] = dict(torch=torch.__version__, device=str(device))
    f |= dict(device_name=device_name(device), threads=torch.get_num_threads(), kind=args.kind)
    f |= dict(arch=cfg.arch, batch_size=batch, steps=args.steps, warmup=args.warmup)
    sources = {"ours": lambda: our_batches(split, batch, params.seed)}
    sources["naive"] = lambda: naive_batches(tutorial, batch, device)
    steps: dict[str, Callable[[], int]] = {}
    for name, batches in sources.items():
        torch.manual_seed(params.seed)  # the same initial weights for both
        model = entry.build(entry.spec(cfg))
        if name == "ours":  # as fit() does; a tutorial leaves the default layout
            model = model.to(memory_format=torch.channels_last)
        model = model.to(device)
        steps[name] = step_fn(model, loss_fn, batches(), cfg, args.warmup + args.steps)
    timed = rates(steps, args.steps, args.warmup, device)
    f |= {f"{name}_images_per_s": ips for name, ips in timed.items()}
    draws = rates({name: draw(batches()) for name, batches in sources.items()}, 20, 1, device)
    f |= {f"{name}_data_only_images_per_s": ips for name, ips in draws.items()}
    flops = step_flops(model, loss_fn, split.noisy[:batch], split.clean[:batch]) / batch
    ours, peak = f["ours_images_per_s"], matmul_gflops(device)
    f["speedup"] = ours / f["naive_images_per_s"]
    f["flops_counted"] = "forward + backward, matmul/conv only (FlopCounterMode)"
    f |= dict(mflop_per_image=flops / 1e6, train_gflop_per_s=flops * ours / 1e9)
    f |= dict(matmul_2048_gflop_per_s=peak, percent_of_matmul=100 * flops * ours / 1e9 / peak)
    for key, value in f.items():
        note = f"  (target >= {TARGETS[key]:g})" if key in TARGETS else ""
        print(f"{key:>29}: {f'{value:.2f}' if isinstance(value, float) else value}{note}")
    if args.json:
        write_json(args.json, f)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
