"""Training: `pipeline.training` in-process on tiny in-memory data (the loop's metrics and logs,
seeded fresh noise, divergence, bf16), the pre-flight checks, the params' upper bounds, and the
`train@dae` / `train@vae` stage (`pipeline.train`) in a tiny folder."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import psutil
import pytest
import torch

from pipeline import train, training
from pipeline.data import Split, add_noise
from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_LATENT,
    DAEParams,
    NoiseParams,
    Params,
    ParamsError,
    parse_params,
)
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.preflight import check_memory, check_precision
from pipeline.registry import dae_loss, load_model, lookup
from pipeline.runtime import derive_seed
from pipeline.training import fit, fresh_noise, train_step, validate
from tests.helpers import raw_params, temporaries, tiny_images, write_params, write_splits

CPU = torch.device("cpu")
NOISE = NoiseParams(kind="gaussian", std=0.5, amount=0.2, clip=True)
EPOCH_LINE = re.compile(
    r"^(\w+) epoch (\d+)/(\d+): train loss [-\d.e+]+, val loss [-\d.e+]+, "
    r"val MSE [-\d.e+]+, \d+\.\d s$"
)


# ------------------------------------------------------------------ helpers shared by the tests


def tiny_params(changes: dict[str, Any] | None = None) -> Params:
    return parse_params(raw_params(changes))


PATHS = tiny_params().paths
MODELS, TRAIN_LOGS = Path(PATHS.models), Path(PATHS.train_logs)


def build(kind: str, cfg: Any) -> torch.nn.Module:
    entry = lookup(kind, cfg.arch)
    return entry.build(entry.spec(cfg))


def tiny_split(n: int, seed: int = 0) -> Split:
    """A split built in memory (float32 N x 1 x 28 x 28), as `load_split` returns it."""
    clean, labels = tiny_images(n, seed)
    clean = clean.unsqueeze(1).float() / 255
    noisy = add_noise(clean, "gaussian", 0.5, True, torch.Generator().manual_seed(seed + 1))
    return Split(clean, noisy, labels)


def dae_cfg(**changes: Any) -> DAEParams:
    base = dict(
        epochs=2, batch_size=16, lr=3e-3, weight_decay=0.0, fresh_noise=False, precision="fp32",
        arch="unet", channels=4, levels=1, blocks=1, block="plain", fold=2,
    )  # fmt: skip
    return DAEParams(**{**base, **changes})


def run_fit(
    tmp_path: Path,
    cfg: DAEParams,
    seed: int = 0,
    noise: NoiseParams | None = None,
    loss_fn: Any = dae_loss,
    name: str = "dae",
) -> tuple[torch.nn.Module, dict[str, dict[str, float]], Path]:
    """Build the DAE `cfg` describes (initialised from `seed`) and fit it on tiny splits."""
    torch.manual_seed(seed)
    model = build("dae", cfg)
    live_dir = tmp_path / f"live-{len(list(tmp_path.glob('live-*')))}"
    train, val = tiny_split(48, 0), tiny_split(20, 5)
    summary = fit(model, loss_fn, train, val, cfg, seed=seed, device=CPU, live_dir=live_dir,
                  name=name, noise=noise and fresh_noise(noise, seed))  # fmt: skip
    return model, summary, live_dir


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_state: None) -> None:
    """Run in `tmp_path` (dvclive looks for a git/DVC repo from the working folder), with the
    `torch_state` of tests/conftest.py."""
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------------ fit


def test_fit_returns_finite_metrics_and_logs_each_epoch_from_step_1(tmp_path: Path) -> None:
    _, summary, live_dir = run_fit(tmp_path, dae_cfg(epochs=3))
    assert set(summary) == {"train", "val"}
    assert set(summary["train"]) == {"loss"} and set(summary["val"]) == {"loss", "mse"}
    values = [*summary["train"].values(), *summary["val"].values()]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)
    # the DAE's loss is the MSE of its linear output; the MSE of the clipped output is lower
    assert summary["val"]["mse"] <= summary["val"]["loss"]

    curves = live_dir / "plots" / "metrics"
    logged = sorted(str(p.relative_to(curves)) for p in curves.rglob("*.tsv"))
    assert logged == ["train/loss.tsv", "val/loss.tsv", "val/mse.tsv"]  # no lr curve
    assert not [p for p in live_dir.rglob("*") if "lr" in p.stem.split("/")]
    for tsv in logged:
        log = pd.read_csv(curves / tsv, sep="\t")
        assert log["step"].tolist() == [1, 2, 3], tsv  # epochs, counted from 1
    val_mse = pd.read_csv(curves / "val" / "mse.tsv", sep="\t")
    assert val_mse["mse"].iloc[-1] == pytest.approx(summary["val"]["mse"])


def test_fit_trains_the_model(tmp_path: Path) -> None:
    cfg = dae_cfg(epochs=4, lr=1e-2)
    torch.manual_seed(0)
    untrained = build("dae", cfg)
    val = tiny_split(20, 5)
    before = validate(untrained, dae_loss, val, 0)
    _, summary, _ = run_fit(tmp_path, cfg)
    assert summary["val"]["loss"] < before["loss"]


def test_fit_with_the_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    first, summary, _ = run_fit(tmp_path, dae_cfg(fresh_noise=True), noise=NOISE)
    again, summary_again, _ = run_fit(tmp_path, dae_cfg(fresh_noise=True), noise=NOISE)
    assert same_weights(first, again)
    assert summary == summary_again
    other, _, _ = run_fit(tmp_path, dae_cfg(fresh_noise=True), seed=1, noise=NOISE)
    assert not same_weights(first, other)


def test_fresh_noise_changes_what_is_learned(tmp_path: Path) -> None:
    fixed, _, _ = run_fit(tmp_path, dae_cfg())
    fresh, _, _ = run_fit(tmp_path, dae_cfg(fresh_noise=True), noise=NOISE)
    assert not same_weights(fixed, fresh)


def test_fresh_noise_is_seeded_by_seed_and_epoch() -> None:
    clean = tiny_split(8).clean
    epoch0 = fresh_noise(NOISE, seed=3)(clean, 0)
    assert epoch0.shape == clean.shape and epoch0.dtype == torch.float32
    assert torch.equal(epoch0, fresh_noise(NOISE, seed=3)(clean, 0))
    assert not torch.equal(epoch0, fresh_noise(NOISE, seed=3)(clean, 1))
    assert not torch.equal(epoch0, fresh_noise(NOISE, seed=4)(clean, 0))
    assert epoch0.min() >= 0 and epoch0.max() <= 1  # noise.clip
    gen = torch.Generator().manual_seed(derive_seed(3, "train-noise", 0))
    assert torch.equal(epoch0, add_noise(clean, "gaussian", 0.5, True, gen))


def test_blind_fresh_noise_draws_a_level_per_image_within_the_range() -> None:
    clean = torch.full((400, 1, 28, 28), 0.5)
    raw = NoiseParams(kind="gaussian", std=0.5, amount=0.2, clip=False)
    noisy = fresh_noise(raw, seed=3, levels=(0.1, 0.9))(clean, 0)
    stds = (noisy - clean).flatten(1).std(dim=1)
    assert 0.08 < stds.min() < 0.2 and 0.8 < stds.max() < 0.95  # spread over the whole range
    assert torch.equal(noisy, fresh_noise(raw, seed=3, levels=(0.1, 0.9))(clean, 0))
    assert not torch.equal(noisy, fresh_noise(raw, seed=3, levels=(0.1, 0.9))(clean, 1))


def test_derive_seed_separates_streams() -> None:
    seeds = {derive_seed(7, "train-noise", e) for e in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(7, "train-noise", 0) == derive_seed(7, "train-noise", 0)
    assert derive_seed(7, "train-noise", 0) != derive_seed(8, "train-noise", 0)


def test_one_line_per_epoch_and_no_carriage_returns_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not sys.stderr.isatty()  # capsys: not a terminal, so no progress bars
    run_fit(tmp_path, dae_cfg(epochs=3), name="dae")
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if " epoch " in line]
    assert [EPOCH_LINE.match(line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("dae", str(i), "3") for i in (1, 2, 3)
    ]
    assert "\r" not in out and "\r" not in err
    assert "%|" not in err  # no tqdm bar


def test_progress_bars_are_drawn_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_fit(tmp_path, dae_cfg(epochs=2))
    out, err = capsys.readouterr()
    assert "dae epochs" in err and "\r" in err  # tqdm draws its bars on stderr
    assert len([line for line in out.splitlines() if EPOCH_LINE.match(line.strip("\r"))]) == 2


def test_a_huge_learning_rate_is_stopped_naming_the_lr_key(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        run_fit(tmp_path, dae_cfg(lr=1e12, epochs=2), name="dae")
    message = str(info.value)
    assert "dae training diverged" in message and "dae.lr" in message
    assert "nothing was saved" in message


@pytest.mark.parametrize(
    ("factor", "in_training", "reported"),
    [
        (math.nan, True, "train loss is nan at epoch 1"),
        (math.inf, True, "train loss is inf at epoch 1"),
        (math.nan, False, "val loss is nan at epoch 1"),
    ],
    ids=["nan-train", "inf-train", "nan-val"],
)
def test_a_non_finite_loss_is_reported_with_its_split_and_epoch(
    tmp_path: Path, factor: float, in_training: bool, reported: str
) -> None:
    def loss_fn(model, noisy, clean, epochs_done):  # the DAE's loss, non-finite in one mode
        loss, terms = dae_loss(model, noisy, clean, epochs_done)
        return (loss * factor if model.training == in_training else loss), terms

    one_batch = dae_cfg(batch_size=64)  # one step: the epoch's loss is that step's
    with pytest.raises(PipelineError, match="vae training diverged") as info:
        run_fit(tmp_path, one_batch, loss_fn=loss_fn, name="vae")
    assert reported in str(info.value) and "vae.lr" in str(info.value)


def test_bf16_precision_trains_on_the_cpu(tmp_path: Path) -> None:
    fp32, _, _ = run_fit(tmp_path, dae_cfg())
    bf16, summary, _ = run_fit(tmp_path, dae_cfg(precision="bf16"))
    assert all(math.isfinite(v) for part in summary.values() for v in part.values())
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # autocast, fp32 weights
    assert not same_weights(fp32, bf16)  # the forward pass did run in bfloat16


def test_train_step_returns_detached_tensors_and_steps_the_schedule() -> None:
    cfg = dae_cfg()
    torch.manual_seed(0)
    model = build("dae", cfg).train()
    opt, sched = training.make_optimizer(model, cfg, total_steps=10)
    split = tiny_split(8)
    before = [p.detach().clone() for p in model.parameters()]
    lr0 = opt.param_groups[0]["lr"]
    values = train_step(model, dae_loss, opt, sched, split.noisy, split.clean, 0.0)
    assert set(values) == {"loss"}
    loss = values["loss"]
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad
    assert opt.param_groups[0]["lr"] != lr0  # the one-cycle schedule moved
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_validate_averages_over_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build("dae", dae_cfg())
    split = tiny_split(23)
    whole = validate(model, dae_loss, split, 1)
    monkeypatch.setattr(training, "INFERENCE_BATCH", 5)  # 5 batches, the last one of 3
    batched = validate(model, dae_loss, split, 1)
    assert set(batched) == {"loss", "mse"} and not model.training
    assert batched == pytest.approx(whole, rel=1e-5)
    with torch.no_grad():
        expected = float(torch.mean((model(split.noisy) - split.clean) ** 2))
    assert batched["mse"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------- memory and precision


def test_check_memory_refuses_a_batch_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("vae", tiny_params().vae)
    check_memory("vae", model, 16, CPU)  # fits
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2**20))
    with pytest.raises(PipelineError) as info:
        check_memory("vae", model, 16, CPU)
    message = str(info.value)
    assert "vae.batch_size = 16" in message and "lower vae.batch_size" in message
    assert "0.0 GiB is free" in message


def test_check_memory_refuses_an_absurd_batch_with_real_memory() -> None:
    model = build("dae", tiny_params().dae)
    with pytest.raises(PipelineError, match=r"dae\.batch_size = 1000000000000"):
        check_memory("dae", model, 10**12, CPU)


def test_check_precision_accepts_bf16_on_cpu_and_refuses_an_old_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_precision("dae", "bf16", CPU)
    check_precision("vae", "fp32", torch.device("cuda"))  # fp32 runs anywhere: nothing to check
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(PipelineError) as info:
        check_precision("vae", "bf16", torch.device("cuda"))
    assert "vae.precision" in str(info.value) and "Old GPU" in str(info.value)
    assert "vae.precision: fp32" in str(info.value)


# ----------------------------------------------------------------------------- upper bounds


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("vae.latent_dim", 100_000, MAX_LATENT),
        ("vae.channels", 100_000, MAX_CHANNELS),
        ("dae.channels", 100_000, MAX_CHANNELS),
        ("dae.batch_size", 10**6, MAX_BATCH),
        ("vae.batch_size", 10**6, MAX_BATCH),
        ("plot.n_digits", 10**6, 100),
        ("plot.n_prior_samples", 10**6, 400),
    ],
)
def test_absurd_sizes_are_refused_naming_the_key_and_the_bound(
    key: str, value: int, bound: int
) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(raw_params({key: value}))
    lines = [line for line in str(info.value).splitlines() if key in line]
    assert len(lines) == 1, str(info.value)
    assert str(bound) in lines[0] and str(value) in lines[0]
    parse_params(raw_params({key: bound, "data.train_size": 50_000}))  # the bound is allowed


# -------------------------------------------------------------------- the stage train@<model>


@pytest.mark.parametrize("kind", ["dae", "vae"])
def test_the_train_stage_publishes_the_model_and_its_summary(tmp_path: Path, kind: str) -> None:
    write_splits(tmp_path)
    write_params(tmp_path, {f"{kind}.epochs": 2})
    train.main([kind])

    model = load_model(MODELS / f"{kind}.pt", kind)
    meta, _ = tensorfile.load(MODELS / f"{kind}.pt", made_by="test", max_bytes=2**30)
    cfg = getattr(tiny_params(), kind)
    assert meta == {"spec": lookup(kind, cfg.arch).spec(cfg)}
    assert not model.training
    summary = json.loads((TRAIN_LOGS / kind / "metrics.json").read_text())
    assert set(summary) == {"train", "val"}  # no "step", no "lr"
    terms = {"loss"} | ({"recon", "kl"} if kind == "vae" else set())
    assert set(summary["train"]) == terms and set(summary["val"]) == terms | {"mse"}
    assert "lr" not in json.dumps(summary) and "step" not in json.dumps(summary)
    assert math.isfinite(summary["val"]["mse"])
    tsv = pd.read_csv(TRAIN_LOGS / kind / "plots" / "metrics" / "val" / "mse.tsv", sep="\t")
    assert tsv["step"].tolist() == [1, 2]
    assert tsv["mse"].iloc[-1] == pytest.approx(summary["val"]["mse"])
    assert temporaries(tmp_path) == []


def test_the_train_stage_is_deterministic_and_replaces_previous_outputs(tmp_path: Path) -> None:
    write_splits(tmp_path)
    stale = TRAIN_LOGS / "dae" / "plots" / "metrics" / "old.tsv"
    stale.parent.mkdir(parents=True)
    stale.write_text("step\told\n1\t1\n")
    write_params(tmp_path, {"dae.fresh_noise": True})
    train.main(["dae"])
    first = (MODELS / "dae.pt").read_bytes()
    assert not stale.exists()  # the log folder is replaced, not merged
    train.main(["dae"])
    assert (MODELS / "dae.pt").read_bytes() == first
    write_params(tmp_path, {"dae.fresh_noise": False})
    train.main(["dae"])
    assert (MODELS / "dae.pt").read_bytes() != first
