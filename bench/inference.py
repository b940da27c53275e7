"""Inference speed of the three networks `evaluate` runs (DAE, VAE, classifier), built from
params.yaml with random weights: NCHW against channels-last, at several batch sizes.

Run from the project root: `python -m bench.inference [--images 5000] [--rounds 2]`. Prints
images/s per network, layout and batch size, best of alternating rounds (no gradients, as in
`evaluate`).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pipeline.judge import Classifier
from pipeline.plumbing.config import load_params
from pipeline.registry import lookup

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def networks() -> dict[str, nn.Module]:
    """The default DAE, VAE and classifier of params.yaml, in eval mode."""
    params = load_params()
    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {}
    for kind in ("dae", "vae"):
        cfg = getattr(params, kind)
        entry = lookup(kind, cfg.arch)
        nets[kind] = entry.build(entry.spec(cfg))
    nets["classifier"] = Classifier(params.classifier.channels)
    return {name: net.eval() for name, net in nets.items()}


@torch.no_grad()
def rate(net: nn.Module, images: torch.Tensor, batch: int) -> float:
    """Images per second of one pass over `images` in batches of `batch`."""
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        net(images[i : i + batch])
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[tuple[str, str, int], float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 250, 1000])
    args = parser.parse_args(argv)
    images = torch.rand(args.images, 1, 28, 28)
    best: dict[tuple[str, str, int], float] = {}
    for name, net in networks().items():
        for layout, fmt in LAYOUTS.items():
            net = net.to(memory_format=fmt)
            rate(net, images[:500], 250)  # warm-up
            for _ in range(args.rounds):  # alternating, so that a slow moment hits every size
                for batch in args.batch_sizes:
                    key = (name, layout, batch)
                    best[key] = max(best.get(key, 0.0), rate(net, images, batch))
    for (name, layout, batch), value in best.items():
        print(f"{name:>10} {layout:>13} batch {batch:>5}: {value:,.0f} images/s")
    return best


if __name__ == "__main__":
    main()
