"""What the stages publish: all of their outputs or none. A stage that is refused, fails,
diverges or is killed keeps its previous outputs, says why on one line, and the next
`dvc repro` recovers; `validate`'s marker never changes; two projects give the same bytes.
In-process in a tiny folder first, then under `dvc repro` (e2e)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import torch
from torch import nn

from pipeline import evaluate, plot, registry, train, validate
from pipeline.judge import Classifier, save_classifier
from pipeline.plumbing.config import parse_params
from pipeline.plumbing.yamlio import read_yaml
from pipeline.registry import dae_loss, lookup, save_model
from tests.helpers import (
    VENV_BIN,
    dvc,
    file_hashes,
    git,
    immutable,
    new_project,
    raw_params,
    repro,
    run_main,
    run_stage,
    set_params,
    temporaries,
    write_params,
    write_splits,
)

PATHS = parse_params(raw_params()).paths
MODELS, TRAIN_LOGS = Path(PATHS.models), Path(PATHS.train_logs)
# 2048 images in batches of 16 for 50 epochs: killed once the first epoch's line is out.
INTERRUPTIBLE = {"data.train_size": 2048, "dae.batch_size": 16, "dae.epochs": 50}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
Breakage = Callable[[Path], None]


def snapshot(root: Path) -> dict[str, str]:
    return file_hashes(root, [root])


# ------------------------------------------------------------------------ in-process stages


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_state: None) -> Path:
    """A working folder holding tiny params and data/noisy/{train,val,test}.pt."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    write_splits(tmp_path)
    return tmp_path


@pytest.fixture
def published(folder: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """`folder` with models (untrained: any will do) and the outputs of evaluate and plot."""
    params = parse_params(raw_params())
    for kind in ("dae", "vae"):
        cfg = getattr(params, kind)
        entry = lookup(kind, cfg.arch)
        torch.manual_seed(0)
        MODELS.mkdir(exist_ok=True)
        save_model(entry.build(entry.spec(cfg)), entry.spec(cfg), MODELS / f"{kind}.pt")
    save_classifier(Classifier(params.classifier.channels), MODELS / "classifier.pt")
    assert run_main(evaluate.main, capsys)[0] == 0
    assert run_main(plot.main, capsys)[0] == 0
    return folder


def test_the_train_stage_checks_memory_before_touching_outputs(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = TRAIN_LOGS / "dae"
    log.mkdir(parents=True)
    (log / "metrics.json").write_text("old\n")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1024))
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("fit ran"))
    code, _, err = run_main(train.main, capsys, "dae")
    assert code == 1 and "dae.batch_size" in err
    assert (log / "metrics.json").read_text() == "old\n"
    assert not MODELS.exists() and temporaries(folder) == []


@pytest.mark.parametrize(
    ("factor", "in_training", "batch_size", "reported"),
    [
        (math.nan, True, 16, "train loss is nan at epoch 1"),
        (math.inf, True, 64, "train loss is inf at epoch 1"),  # one batch: its loss, not NaN
        (math.nan, False, 16, "val loss is nan at epoch 1"),
    ],
    ids=["nan-loss", "inf-loss", "nan-validation"],
)
def test_a_diverging_train_stage_saves_nothing_and_keeps_its_previous_outputs(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    factor: float,
    in_training: bool,
    batch_size: int,
    reported: str,
) -> None:
    write_params(folder, {"dae.batch_size": batch_size})
    assert run_main(train.main, capsys, "dae")[0] == 0
    before = snapshot(folder)
    assert str(MODELS / "dae.pt") in before and str(TRAIN_LOGS / "dae" / "metrics.json") in before

    def loss_fn(
        model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, epochs_done: float
    ) -> tuple[torch.Tensor, dict]:  # the DAE's loss, made non-finite in one mode only
        loss, terms = dae_loss(model, noisy, clean, epochs_done)
        return (loss * factor if model.training == in_training else loss), terms

    diverging = lambda kind, arch: dataclasses.replace(  # noqa: E731
        registry.lookup(kind, arch), loss_of=lambda cfg: loss_fn
    )
    monkeypatch.setattr(train, "lookup", diverging)
    code, _, err = run_main(train.main, capsys, "dae")
    assert code == 1 and err.startswith("error: dae training diverged") and err.count("\n") == 1
    assert reported in err and "nothing was saved" in err and "dae.lr" in err
    assert snapshot(folder) == before
    assert temporaries(folder) == []


def test_evaluate_refuses_an_immutable_output_before_loading_anything(
    published: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate, "load_split", lambda *a: pytest.fail("evaluate did the work"))
    before = snapshot(published)
    blocked = Path(PATHS.per_digit)
    with immutable(blocked):
        code, out, err = run_main(evaluate.main, capsys)
        assert temporaries(published) == []
    assert code == 1 and out == ""
    assert err.startswith(f"error: cannot write {blocked}: ") and err.count("\n") == 1
    assert snapshot(published) == before  # metrics/test.json included


@pytest.mark.parametrize("stage", [evaluate, plot], ids=["evaluate", "plot"])
def test_a_vae_file_given_as_the_dae_is_refused_and_the_previous_outputs_kept(
    published: Path, capsys: pytest.CaptureFixture[str], stage
) -> None:
    (MODELS / "dae.pt").write_bytes((MODELS / "vae.pt").read_bytes())
    before = snapshot(published)
    code, _, err = run_main(stage.main, capsys)
    assert code == 1
    assert err.startswith(f"error: {MODELS / 'dae.pt'} holds a 'vae' model")
    assert "dvc repro train@dae" in err and "Traceback" not in err
    assert snapshot(published) == before
    assert temporaries(published) == []


def test_validate_writes_its_marker_once_and_refuses_bad_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = Path(PATHS.params_ok)
    write_params(tmp_path)
    assert run_main(validate.main, capsys) == (0, "params.yaml is valid\n", "")
    assert marker.read_text() == validate.OK_TEXT
    stamp = marker.stat().st_mtime_ns
    assert run_main(validate.main, capsys)[0] == 0
    assert marker.stat().st_mtime_ns == stamp  # unchanged: DVC sees the same output

    write_params(tmp_path, {"vae.latent_dim": 100_000})
    code, out, err = run_main(validate.main, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: params.yaml has 1 invalid value(s):")
    assert "vae.latent_dim" in err and "1024" in err


# ------------------------------------------------------------------------ under dvc repro


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run single-threaded: two torch threads per process oversubscribe small shared
    machines and train several times slower. (Not for results compared with `reproduced`.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def stage_outputs(repo: Path, name: str) -> list[Path]:
    """Every path dvc.yaml declares as an output, metric or plot of stage `name` (`train@dae`:
    the matrix stage `train` for model `dae`), its `${paths.*}` and `${item.*}` resolved."""
    stage, _, item = name.partition("@")
    spec = read_yaml(repo / "dvc.yaml")["stages"][stage]
    paths = read_yaml(repo / "params.yaml")["paths"]
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key, [])]
    names = [e if isinstance(e, str) else next(iter(e)) for e in entries]
    values = lambda m: paths[m[2]] if m[1] == "paths" else item  # noqa: E731
    return [repo / re.sub(r"\$\{(paths|item)\.(\w+)\}", values, n) for n in names]


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
        "train@dae",
        truncated("data/noisy/train.pt"),
        ["data/noisy/train.pt", "dvc repro make_noisy"],
        id="train@dae-truncated-split",
    ),
    pytest.param(
        "evaluate",
        garbage("models/dae.pt"),
        ["models/dae.pt", "dvc repro train@dae"],
        id="evaluate-garbage-model",
    ),
    pytest.param(
        "plot",
        truncated("models/vae.pt"),
        ["models/vae.pt", "dvc repro train@vae"],
        id="plot-truncated-model",
    ),
    pytest.param(
        "train@dae",
        params({"dae.lr": 1e6}),
        ["dae training diverged", "nothing was saved", "dae.lr"],
        id="train@dae-diverges",
    ),
    pytest.param(
        "train@dae", params({"device": "cuda"}), CUDA_HINT, id="train@dae-cuda", marks=NO_CUDA
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

    module, _, model = name.partition("@")
    proc = run_stage(reproduced_copy, module, *([model] if model else []))

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # one message, on one line, holding the whole story
    assert all(fragment in errors[0] for fragment in expected), errors[0]
    assert file_hashes(reproduced_copy, outputs) == before
    assert temporaries(reproduced_copy) == []


def wait_until_mid_training(proc: subprocess.Popen, log: Path) -> None:
    """Return once training has logged its first epoch (into its temporaries)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"train@dae ended before it could be interrupted:\n{log.read_text()}")
        if "dae epoch 1/50" in log.read_text(errors="replace"):
            return
        time.sleep(0.02)
    pytest.fail(f"train@dae made no progress:\n{log.read_text()}")


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
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "dvc"), "repro", "train@dae"],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the stage dies with DVC
        )
    try:
        wait_until_mid_training(proc, log)
    finally:
        kill_session(proc)

    assert proc.pid in lock_writers(repo)  # a stale lock: DVC must see its holder is dead

    # Nothing published (not even the curves of the epochs done), only hidden, git-ignored
    # temporaries.
    assert not (repo / MODELS / "dae.pt").exists()
    assert not (repo / TRAIN_LOGS / "dae").exists()
    leftovers = temporaries(repo)
    assert leftovers and all(".tmp-" in p.name for p in leftovers)
    assert ".tmp-" not in git(repo, "status", "--porcelain", "--untracked-files=all").stdout
    status = json.loads(dvc(repo, "status", "--json", "train@dae").stdout)
    changes = [change for change in status["train@dae"] if isinstance(change, dict)]
    assert {"models/dae.pt": "deleted"}.items() <= changes[-1]["changed outs"].items()
    assert ".tmp-" not in json.dumps(status)  # DVC sees no output in the leftover

    assert "Running stage 'train@dae'" in repro(repo, "train@dae").stdout
    assert json.loads(dvc(repo, "status", "--json", "train@dae").stdout) == {}
    assert proc.pid not in lock_writers(repo)
    assert (repo / MODELS / "dae.pt").is_file()
    assert (repo / TRAIN_LOGS / "dae" / "metrics.json").is_file()
    assert temporaries(repo) == []


@pytest.mark.e2e
def test_two_projects_reproduce_byte_identical_results(
    reproduced: Path, tmp_path: Path, mnist_mirror: tuple[Path, bool]
) -> None:
    """Same code, params and MNIST, separate folders and caches: the same bytes. (Same machine
    and thread count as `reproduced`: float sums over other thread counts may differ.) Fresh
    training noise every epoch (the default) is drawn from the seed, so it is the same too."""
    params = read_yaml(reproduced / "params.yaml")
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
    # the same entries (DVC may write independent stages, e.g. classifier and train@vae, in
    # either order)
    assert read_yaml(other / "dvc.lock") == read_yaml(reproduced / "dvc.lock")
