"""Hardening: a killed, failing or diverging stage publishes nothing and keeps the previous
outputs; it fails with one clear message; the next `dvc repro` recovers; two projects reproduce
byte-identical results."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from torch import nn

from pipeline import training
from pipeline.config import Params, parse_params
from pipeline.data import save_split
from pipeline.errors import PipelineError
from pipeline.models import dae_loss
from pipeline.paths import MODELS_DIR, NOISY_DIR, TRAIN_LOG_DIR
from pipeline.training import train_stage
from pipeline.yamlio import read_yaml
from tests.helpers import (
    ROOT,
    VENV_BIN,
    dvc,
    file_hashes,
    git,
    new_project,
    repro,
    run_stage,
    set_dotted,
    set_params,
    temporaries,
)

# 2048 images in batches of 16: 128 batches of the tiny DAE, long enough to kill mid-epoch.
# 2048 images in batches of 16 for 50 epochs: killed once the first epoch's line is out.
INTERRUPTIBLE = {"data.train_size": 2048, "dae.batch_size": 16, "dae.epochs": 50}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
Breakage = Callable[[Path], None]


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run single-threaded: two torch threads per process oversubscribe small shared
    machines and train several times slower. (Not for results compared with `reproduced`.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def stage_outputs(repo: Path, name: str) -> list[Path]:
    """Every path dvc.yaml declares as an output, metric or plot of stage `name`."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][name]
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key, [])]
    return [repo / (e if isinstance(e, str) else next(iter(e))) for e in entries]


def replace_bytes(relpath: str, data: Callable[[bytes], bytes]) -> Breakage:
    """A breakage replacing the file at `relpath` by `data(old bytes)`: a new file, so a
    link into the DVC cache is never written through."""

    def apply(repo: Path) -> None:
        path = repo / relpath
        old = path.read_bytes()
        path.unlink()
        path.write_bytes(data(old))

    return apply


def truncated(relpath: str) -> Breakage:
    return replace_bytes(relpath, lambda old: old[: len(old) // 2])


def garbage(relpath: str) -> Breakage:
    return replace_bytes(relpath, lambda old: bytes(range(256)) * 16)


def params(changes: dict[str, Any]) -> Breakage:
    return lambda repo: set_params(repo, changes)


CUDA_HINT = ["device: cuda", "no CUDA GPU", "device: auto or cpu"]
FAILURES = [
    pytest.param(
        "make_noisy",
        truncated("data/MNIST/raw/train-images-idx3-ubyte"),
        ["data/MNIST/raw", "dvc repro download"],
        id="make_noisy-truncated-mnist",
    ),
    pytest.param(
        "train_dae",
        truncated("data/noisy/train.pt"),
        ["data/noisy/train.pt", "dvc repro make_noisy"],
        id="train_dae-truncated-split",
    ),
    pytest.param(
        "evaluate",
        garbage("models/dae.pt"),
        ["models/dae.pt", "dvc repro train_dae"],
        id="evaluate-garbage-model",
    ),
    pytest.param(
        "plot",
        truncated("models/vae.pt"),
        ["models/vae.pt", "dvc repro train_vae"],
        id="plot-truncated-model",
    ),
    pytest.param(
        "train_dae",
        params({"dae.lr": 1e6}),
        ["dae training diverged", "nothing was saved", "dae.lr"],
        id="train_dae-diverges",
    ),
    pytest.param(
        "train_dae", params({"device": "cuda"}), CUDA_HINT, id="train_dae-cuda", marks=NO_CUDA
    ),
    pytest.param(
        "evaluate", params({"device": "cuda"}), CUDA_HINT, id="evaluate-cuda", marks=NO_CUDA
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "breakage", "expected"), FAILURES)
def test_a_failing_stage_exits_1_with_one_message_and_keeps_its_previous_outputs(
    reproduced_copy: Path, one_thread: None, name: str, breakage: Breakage, expected: list[str]
) -> None:
    outputs = stage_outputs(reproduced_copy, name)
    assert all(path.exists() for path in outputs)  # a previous good result, to be kept
    before = file_hashes(reproduced_copy, outputs)
    breakage(reproduced_copy)

    proc = run_stage(reproduced_copy, name)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # one message, on one line, holding the whole story
    assert all(fragment in errors[0] for fragment in expected), errors[0]
    assert file_hashes(reproduced_copy, outputs) == before
    assert temporaries(reproduced_copy) == []


@pytest.fixture
def noisy_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working folder holding small random data/noisy/{train,val}.pt; torch's global
    determinism switch (which `train_stage` turns on) is restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as set_determinism sets it
    gen = torch.Generator().manual_seed(0)
    NOISY_DIR.mkdir(parents=True)
    for name, size in (("train", 64), ("val", 32)):
        clean = torch.randint(0, 256, (size, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (size,), generator=gen)
        save_split(NOISY_DIR / f"{name}.pt", clean, clean.float() / 255, labels)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield tmp_path
    torch.use_deterministic_algorithms(deterministic)


def tiny_dae_params(batch_size: int) -> Params:
    """The project's params with a tiny DAE (4 channels, 2 epochs), on the CPU."""
    raw = read_yaml(ROOT / "params.yaml")
    changes = {"device": "cpu", "dae.channels": 4, "dae.epochs": 2, "dae.batch_size": batch_size}
    return parse_params(set_dotted(raw, changes))


@pytest.mark.parametrize(
    ("factor", "in_training", "batch_size", "reported"),
    [
        (math.nan, True, 16, "train loss is nan at epoch 1"),
        (math.inf, True, 64, "train loss is inf at epoch 1"),  # one batch: its loss, not NaN
        (math.nan, False, 16, "val loss is nan at epoch 1"),
    ],
    ids=["nan-loss", "inf-loss", "nan-validation"],
)
def test_a_diverging_loss_stops_training_and_saves_nothing(
    noisy_splits: Path,
    monkeypatch: pytest.MonkeyPatch,
    factor: float,
    in_training: bool,
    batch_size: int,
    reported: str,
) -> None:
    def loss_fn(
        model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, epochs_done: float
    ) -> tuple[torch.Tensor, dict]:  # the DAE's loss, made non-finite in one mode only
        loss, terms = dae_loss(model, noisy, clean, epochs_done)
        return (loss * factor if model.training == in_training else loss), terms

    monkeypatch.setattr(training, "loss_for", lambda kind, cfg: loss_fn)
    with pytest.raises(PipelineError, match="dae training diverged") as info:
        train_stage("dae", tiny_dae_params(batch_size))
    assert reported in str(info.value) and "dae.lr" in str(info.value)
    assert "nothing was saved" in str(info.value)
    assert not (MODELS_DIR / "dae.pt").exists()
    assert not (TRAIN_LOG_DIR / "dae").exists()
    assert temporaries(noisy_splits) == []


def wait_until_mid_training(proc: subprocess.Popen, log: Path, repo: Path) -> None:
    """Return once training has logged its first epoch (its curves are being written)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"train_dae ended before it could be interrupted:\n{log.read_text()}")
        curve = repo / TRAIN_LOG_DIR / "dae" / "plots" / "metrics" / "val" / "mse.tsv"
        if "dae epoch 1/50" in log.read_text(errors="replace") and curve.exists():
            return
        time.sleep(0.02)
    pytest.fail(f"train_dae made no progress:\n{log.read_text()}")


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and all its descendants, and wait until none of them runs."""
    family = [psutil.Process(proc.pid)]
    with contextlib.suppress(psutil.NoSuchProcess):  # a child may end while being listed
        family += family[0].children(recursive=True)
    with contextlib.suppress(ProcessLookupError):  # all of them may have ended already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    for member in family:
        while running(member):
            assert time.monotonic() < deadline, f"{member} survived SIGKILL"
            time.sleep(0.05)


def running(process: psutil.Process) -> bool:
    """Whether `process` still runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def lock_writers(repo: Path) -> set[int]:
    """PIDs holding write locks in DVC's lock file (.dvc/tmp/rwlock)."""
    lock = json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text())
    return {info["pid"] for info in lock.get("write", {}).values()}


@pytest.mark.e2e
def test_a_killed_repro_publishes_nothing_and_the_next_repro_recovers(
    tmp_path: Path, mnist_mirror: tuple[Path, bool], one_thread: None
) -> None:
    repo = new_project(tmp_path / "repo", mnist_mirror, INTERRUPTIBLE)
    repro(repo, "make_noisy", mirror=mnist_mirror[0])
    log = tmp_path / "train_dae.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "dvc"), "repro", "train_dae"],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the stage dies with DVC
        )
    try:
        wait_until_mid_training(proc, log, repo)
    finally:
        kill_session(proc)

    assert proc.pid in lock_writers(repo)  # a stale lock: DVC must see its holder is dead

    # Nothing published: no model and no metrics.json, only the curves of the epochs done
    # (written live, by design) and hidden, git-ignored temporaries.
    assert not (repo / MODELS_DIR / "dae.pt").exists()
    assert not (repo / TRAIN_LOG_DIR / "dae" / "metrics.json").exists()
    assert (repo / TRAIN_LOG_DIR / "dae" / "plots" / "metrics" / "val" / "mse.tsv").exists()
    leftovers = temporaries(repo)
    assert leftovers and all(".tmp-" in p.name for p in leftovers)
    assert ".tmp-" not in git(repo, "status", "--porcelain", "--untracked-files=all").stdout
    status = json.loads(dvc(repo, "status", "--json", "train_dae").stdout)
    changes = [change for change in status["train_dae"] if isinstance(change, dict)]
    assert {"models/dae.pt": "deleted"}.items() <= changes[-1]["changed outs"].items()
    assert ".tmp-" not in json.dumps(status)  # DVC sees no output in the leftover

    assert "Running stage 'train_dae'" in repro(repo, "train_dae").stdout
    assert json.loads(dvc(repo, "status", "--json", "train_dae").stdout) == {}
    assert proc.pid not in lock_writers(repo)
    assert (repo / MODELS_DIR / "dae.pt").is_file()
    assert (repo / TRAIN_LOG_DIR / "dae" / "metrics.json").is_file()
    assert temporaries(repo) == []


@pytest.mark.e2e
def test_two_projects_reproduce_byte_identical_results(
    reproduced: Path, tmp_path: Path, mnist_mirror: tuple[Path, bool]
) -> None:
    """Same code, params and MNIST, separate folders and caches: the same bytes. (Same machine
    and thread count as `reproduced`: float sums over other thread counts may differ.) Fresh
    training noise every epoch (the default) is drawn from the seed, so it is the same too."""
    params = yaml.safe_load((reproduced / "params.yaml").read_text())
    assert params["dae"]["fresh_noise"] is True and params["vae"]["fresh_noise"] is True
    other = new_project(tmp_path / "repo", mnist_mirror, source=reproduced)
    repro(other, mirror=mnist_mirror[0])
    for pattern in [
        "data/noisy/*.pt",
        "models/*.pt",
        "metrics/*.json",
        "metrics/*.csv",
        "metrics/train/*/metrics.json",
    ]:
        expected = file_hashes(reproduced, list(reproduced.glob(pattern)))
        assert expected, f"{pattern} matches nothing"
        assert file_hashes(other, list(other.glob(pattern))) == expected
    assert (other / "dvc.lock").read_text() == (reproduced / "dvc.lock").read_text()
