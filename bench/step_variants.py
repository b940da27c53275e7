"""Where the DAE's CPU training step loses time: the default U-Net as the pipeline trains it,
against the same model with ReLUs that are not in place, and in NCHW instead of channels-last.

Run from the project root: `python -m bench.step_variants [--steps 40] [--rounds 4]`. Prints
images/s per variant, best of alternating rounds, then the time to draw one epoch's fresh noise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from pipeline.data import add_noise
from pipeline.plumbing.config import load_params
from pipeline.registry import lookup
from pipeline.runtime import generator

VARIANTS = ("as trained", "ReLU not in place", "NCHW")


def make_step(variant: str, batch_size: int) -> Callable[[], None]:
    """One AdamW step of the default DAE on random images, in `variant`'s form."""
    cfg = load_params().dae
    entry = lookup("dae", cfg.arch)
    torch.manual_seed(0)
    net = entry.build(entry.spec(cfg))
    if variant == "ReLU not in place":
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
    fmt = torch.contiguous_format if variant == "NCHW" else torch.channels_last
    net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.rand(batch_size, 1, 28, 28), torch.rand(batch_size, 1, 28, 28)

    def step() -> None:
        loss = torch.mean((net.predict(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--noise-images", type=int, default=55_000)
    args = parser.parse_args(argv)
    steps = {v: make_step(v, args.batch_size) for v in VARIANTS}
    for step in steps.values():
        for _ in range(5):
            step()  # warm-up
    best = dict.fromkeys(VARIANTS, 0.0)
    for _ in range(args.rounds):  # alternating, so that a slow moment hits every variant
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rate = args.steps * args.batch_size / (time.perf_counter() - start)
            best[name] = max(best[name], rate)
    for name, rate in best.items():
        print(f"{name:>18}: {rate:,.0f} images/s")
    clean = torch.rand(args.noise_images, 1, 28, 28)
    start = time.perf_counter()
    add_noise(clean, "gaussian", 0.5, True, generator(0, "train-noise", 0))
    print(f"fresh noise for {args.noise_images:,} images: {time.perf_counter() - start:.2f} s")
    return best


if __name__ == "__main__":
    main()
