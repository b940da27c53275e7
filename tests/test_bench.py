"""Smoke tests of bench.throughput on tiny synthetic data (no real MNIST, a few steps)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from bench import throughput as bench
from pipeline.data import Split
from pipeline.plumbing.config import TrainParams, parse_params
from pipeline.registry import dae_loss, lookup, vae_loss
from tests.helpers import ROOT, TINY, raw_params, set_params

CPU = torch.device("cpu")
CFG = TrainParams(
    epochs=1, batch_size=16, lr=1e-3, weight_decay=1e-4, fresh_noise=False, precision="fp32"
)
UNET = {"kind": "dae", "arch": "unet", "channels": 4, "levels": 1, "blocks": 1}


def build(spec: dict) -> nn.Module:
    return lookup(spec["kind"], spec["arch"]).build(spec)


MODELS = {
    "dae": (partial(build, {**UNET, "block": "plain", "fold": 2}), dae_loss),
    "vae": (
        partial(build, {"kind": "vae", "arch": "conv", "channels": 4, "latent_dim": 2}),
        partial(vae_loss, beta=1.0, warmup_epochs=2),
    ),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny ops gain nothing from threads, and a busy machine makes them wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def tiny_split(n: int = 40) -> Split:
    clean = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return Split(clean, (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1), torch.zeros(n))


def test_batch_sources_cycle_over_epochs_with_the_right_shapes() -> None:
    split = tiny_split()
    ours = bench.our_batches(split, 16, 0)
    assert [len(next(ours)[0]) for _ in range(5)] == [
        16,
        16,
        8,
        16,
        16,
    ]  # the last batch of an epoch is short
    dataset = bench.NoisyDataset(TensorDataset(split.clean, split.labels), std=0.5)
    noisy, clean = next(bench.naive_batches(dataset, 16, CPU))
    assert noisy.shape == clean.shape == (16, 1, 28, 28)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, clean)
    draws = {"naive": bench.draw(bench.naive_batches(dataset, 16, CPU))}
    assert positive(bench.rates(draws, n=4, warmup=1, device=CPU)["naive"])


@pytest.mark.parametrize("kind", MODELS)
def test_training_rates_are_positive_for_both_loops(kind: str) -> None:
    make, loss_fn = MODELS[kind]
    split = tiny_split()
    dataset = bench.NoisyDataset(TensorDataset(split.clean, split.labels), std=0.5)
    sources = {
        "ours": bench.our_batches(split, 16, 0),
        "naive": bench.naive_batches(dataset, 16, CPU),
    }
    steps = {name: bench.step_fn(make(), loss_fn, b, CFG, 4) for name, b in sources.items()}
    ips = bench.rates(steps, n=3, warmup=1, device=CPU, rounds=2)
    assert set(ips) == {"ours", "naive"} and all(map(positive, ips.values()))
    assert positive(bench.step_flops(make(), loss_fn, split.noisy[:16], split.clean[:16]))


@pytest.mark.parametrize("input_grad", [False, True])
def test_step_flops_match_a_hand_count_for_one_conv(input_grad: bool) -> None:
    n, c_in, c_out, h, w, k = 4, 3, 5, 10, 12, 3
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    x = torch.rand(n, c_in, h, w, requires_grad=input_grad)
    forward = 2 * n * c_out * h * w * c_in * k * k  # one multiply-add = 2 FLOPs
    # backward: the weight gradient costs as much as the forward, the input gradient too
    # (only when the input needs it); the bias gradient and the loss are not counted.
    expected = forward * (3 if input_grad else 2)
    loss_fn = lambda m, noisy, clean, e: (F.mse_loss(m(noisy), clean), {})  # noqa: E731
    assert bench.step_flops(conv, loss_fn, x, torch.zeros(n, c_out, h, w)) == expected
    assert conv.weight.grad is None  # left clean for timing


def test_rates_count_units_and_calls_in_rounds() -> None:
    calls = {"a": 0, "b": 0}

    def fn(name: str, units: int) -> int:
        calls[name] += 1
        return units

    ips = bench.rates({"a": partial(fn, "a", 3), "b": partial(fn, "b", 5)}, 7, 2, CPU, rounds=3)
    assert calls == {"a": 9, "b": 9} and all(map(positive, ips.values()))


def test_matmul_gflops_and_device_name() -> None:
    assert positive(bench.matmul_gflops(CPU, n=64, reps=2))
    assert bench.device_name(CPU)


def test_mnist_root_prefers_data_then_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env" / "MNIST" / "raw").mkdir(parents=True)
    monkeypatch.setenv("MNIST_ROOT", str(tmp_path / "env"))
    params = parse_params(raw_params())
    assert bench.mnist_root(params) == tmp_path / "env"
    (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
    assert bench.mnist_root(params) == Path("data")


def write_tiny_mnist(raw: Path, n_train: int, n_test: int) -> None:
    """The four extracted IDX files torchvision's MNIST reads, with random content."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [("train", n_train), ("t10k", n_test)]:
        for kind, shape in [("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))]:
            array = rng.integers(0, 256 if len(shape) > 1 else 10, size=shape, dtype=np.uint8)
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in shape)
            (raw / f"{name}-{kind}-ubyte").write_bytes(header + array.tobytes())


def test_main_prints_and_writes_every_figure(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, TINY)
    write_tiny_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=320, n_test=8)
    monkeypatch.setattr(bench, "matmul_gflops", partial(bench.matmul_gflops, n=64, reps=2))
    argv = ["throughput", "--steps", "2", "--warmup", "1", "--batch-size", "16", "--threads"]
    monkeypatch.setattr(sys, "argv", [*argv, "1", "--device", "cpu", "--json", "out.json"])
    try:
        bench.main()
    finally:  # main() sets process-wide state, as a stage does
        torch.use_deterministic_algorithms(False)
    figures = json.loads((tmp_path / "out.json").read_text())
    rates = ["ours_images_per_s", "naive_images_per_s", "speedup", "train_gflop_per_s"]
    assert all(positive(figures[key]) for key in [*rates, "percent_of_matmul"])
    assert figures["threads"] == 1 and figures["batch_size"] == 16 and figures["kind"] == "dae"
    out = capsys.readouterr().out
    assert all(key in out for key in figures) and "(target >= 3)" in out


def test_step_variants_times_every_variant(monkeypatch, capsys) -> None:
    from bench import step_variants

    monkeypatch.chdir(ROOT)  # the default params.yaml's DAE
    rates = step_variants.main(["--steps", "1", "--rounds", "1", "--batch-size", "4",
                                "--noise-images", "10"])  # fmt: skip
    assert list(rates) == list(step_variants.VARIANTS) and all(r > 0 for r in rates.values())
    assert "fresh noise for 10 images" in capsys.readouterr().out


def test_inference_times_every_network_layout_and_batch_size(monkeypatch, capsys) -> None:
    from bench import inference

    monkeypatch.chdir(ROOT)  # the default params.yaml's networks
    rates = inference.main(["--images", "8", "--rounds", "1", "--batch-sizes", "4", "8"])
    expected = [(net, layout, batch) for net in ("dae", "vae", "classifier")
                for layout in inference.LAYOUTS for batch in (4, 8)]  # fmt: skip
    assert list(rates) == expected and all(r > 0 for r in rates.values())
    assert "classifier channels-last batch     8: " in capsys.readouterr().out
