"""`pipeline.runtime`: `publish` writes a stage's outputs all together or not at all, and the
`stage` wrapper (help, one-line errors, Ctrl-C); `python -m pipeline` and each stage's --help."""

from __future__ import annotations

import contextlib
import hashlib
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.__main__ import STAGES
from pipeline.cli import INTERRUPTED, stage
from pipeline.errors import PipelineError
from pipeline.runtime import publish
from tests.helpers import ROOT, VENV_BIN, immutable, temporaries, write_params, write_splits

PYTHON = str(VENV_BIN / "python")


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by relative path (folders included, as "dir")."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Previous outputs of a stage in `tmp_path`: two files and a folder (and a live folder)."""
    monkeypatch.chdir(tmp_path)
    paths = {
        "first": tmp_path / "metrics" / "first.json",
        "second": tmp_path / "metrics" / "second.csv",
        "folder": tmp_path / "data" / "noisy",
        "live": tmp_path / "metrics" / "train" / "dae",
    }
    paths["first"].parent.mkdir(parents=True)
    paths["first"].write_text("old first\n")
    paths["second"].write_text("old second\n")
    paths["folder"].mkdir(parents=True)
    (paths["folder"] / "train.pt").write_text("old split\n")
    (paths["live"] / "plots").mkdir(parents=True)
    (paths["live"] / "plots" / "loss.tsv").write_text("step\tloss\n1\t0.5\n")
    return paths


def write_new(tmp: list[Path]) -> None:
    """What a stage writes in its temporaries: each file, or a folder holding one file."""
    for path in tmp:
        if path.suffix:
            path.write_text(f"new {path.name}\n")
        else:
            path.mkdir()
            (path / "train.pt").write_text("new split\n")


# --------------------------------------------------------------------------- publish


def test_publish_replaces_every_output_on_success(outputs: dict[str, Path]) -> None:
    targets = [outputs["first"], outputs["second"], outputs["folder"], Path("plots/new.png")]
    with publish(*targets) as tmp:
        assert len(tmp) == len(targets)
        for path, target in zip(tmp, targets, strict=True):
            assert path.name == target.name and not path.exists()
            assert path.parent.parent.resolve() == target.parent.resolve()  # same filesystem
            assert path.parent.name.startswith(f".{target.name}.tmp-")
        assert outputs["first"].read_text() == "old first\n"  # untouched while the block runs
        write_new(tmp)
    assert outputs["first"].read_text() == "new first.json\n"
    assert outputs["second"].read_text() == "new second.csv\n"
    assert os.listdir(outputs["folder"]) == ["train.pt"]
    assert (outputs["folder"] / "train.pt").read_text() == "new split\n"
    assert Path("plots/new.png").read_text() == "new new.png\n"
    assert temporaries(Path.cwd()) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=repr)
def test_a_failure_in_the_block_keeps_the_old_outputs_and_no_temporaries(
    outputs: dict[str, Path], error: BaseException
) -> None:
    before = snapshot(Path.cwd())
    targets = [outputs["first"], outputs["second"], outputs["folder"], Path("plots/new.png")]
    with pytest.raises(type(error)), publish(*targets, live=outputs["live"]) as tmp:
        write_new(tmp)
        (outputs["live"] / "half-written.tsv").write_text("step\n1\n")
        raise error
    assert not Path("plots/new.png").exists()
    after = snapshot(Path.cwd())
    assert {k: v for k, v in after.items() if k != "plots"} == before  # plots/ was made empty
    assert temporaries(Path.cwd()) == []


@pytest.mark.parametrize("how", ["immutable-file", "parent-is-a-file", "immutable-folder"])
def test_an_unwritable_output_is_refused_before_the_block_runs(
    outputs: dict[str, Path], how: str
) -> None:
    bad = {
        "immutable-file": outputs["second"],
        "parent-is-a-file": outputs["first"] / "oops.csv",  # a folder that is a file
        "immutable-folder": outputs["folder"],
    }[how]
    guard = immutable(bad) if how.startswith("immutable") else contextlib.nullcontext()
    before = snapshot(Path.cwd())
    entered = False
    with guard:
        targets = [outputs["first"], bad, Path("plots/new.png")]
        with pytest.raises(PipelineError) as info, publish(*targets, live=outputs["live"]) as tmp:
            entered = True
            write_new(tmp)
        assert not entered  # refused before any work
        assert str(info.value).startswith(f"cannot write {bad}")
        assert temporaries(Path.cwd()) == []
    after = snapshot(Path.cwd())
    assert {k: v for k, v in after.items() if k != "plots"} == before


def test_a_folder_that_cannot_be_written_in_is_refused(outputs: dict[str, Path]) -> None:
    with immutable(outputs["folder"]):
        target = outputs["folder"] / "val.pt"  # a new file in an immutable folder
        with pytest.raises(PipelineError, match=f"cannot write {target}"), publish(target):
            pytest.fail("the block ran")


def test_a_failed_rename_puts_every_previous_output_back(outputs: dict[str, Path]) -> None:
    before = snapshot(Path.cwd())
    targets = [outputs["first"], outputs["folder"], outputs["second"]]
    with pytest.raises(PipelineError) as info, publish(*targets) as tmp:
        write_new(tmp[:2])  # the last temporary is never written: its rename fails
    assert str(info.value).startswith("cannot publish ")
    assert str(outputs["second"]) in str(info.value)  # in the OSError's text
    assert "previous outputs kept" in str(info.value)
    assert snapshot(Path.cwd()) == before  # the first two were replaced, then put back
    assert temporaries(Path.cwd()) == []


def test_a_failed_rename_is_reported_for_the_output_that_failed(outputs: dict[str, Path]) -> None:
    with pytest.raises(PipelineError) as info, publish(outputs["first"], outputs["second"]) as tmp:
        write_new(tmp[:1])
    assert str(info.value).startswith(f"cannot publish {outputs['second']}:")


def test_a_live_folder_that_cannot_be_made_is_refused(outputs: dict[str, Path]) -> None:
    blocked = outputs["first"] / "dae"  # its parent is a file
    with pytest.raises(PipelineError, match="cannot write"), publish(Path("x"), live=blocked):
        pytest.fail("the block ran")


def test_the_live_folder_is_replaced_on_success(outputs: dict[str, Path]) -> None:
    live = outputs["live"]
    summary = live / "metrics.json"
    with publish(summary, live=live) as (tmp,):
        assert list(live.iterdir()) == [tmp.parent]  # emptied while the stage runs...
        (live / "plots").mkdir()
        (live / "plots" / "new.tsv").write_text("step\tloss\n1\t0.1\n")  # ...and written live
        tmp.write_text("{}\n")
    assert sorted(str(p.relative_to(live)) for p in live.rglob("*")) == [
        "metrics.json",
        "plots",
        "plots/new.tsv",
    ]
    assert summary.read_text() == "{}\n"
    assert temporaries(Path.cwd()) == []


def test_temporaries_left_by_a_killed_run_are_removed(outputs: dict[str, Path]) -> None:
    stale = outputs["first"].parent / ".first.json.tmp-killed"
    stale.mkdir()
    (stale / "first.json").write_text("half\n")
    stale_live = outputs["live"].parent / ".dae.tmp-killed"
    (stale_live / "dae").mkdir(parents=True)
    with publish(outputs["first"], live=outputs["live"]) as (tmp,):
        assert not stale.exists() and not stale_live.exists()
        tmp.write_text("new\n")
    assert temporaries(Path.cwd()) == []


# ------------------------------------------------------------------------- stage wrapper


@stage
def _ok() -> None:
    print("ran")


@stage
def _fails() -> None:
    raise PipelineError("models/dae.pt is missing; run `dvc repro train_dae`")


@stage
def _interrupted() -> None:
    raise KeyboardInterrupt


def test_stage_runs_main_and_prints_the_module_docstring_for_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _ok([]) is None
    assert capsys.readouterr().out == "ran\n"
    with pytest.raises(SystemExit) as info:
        _ok(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ran" not in out  # --help does not run the stage
    assert "usage: python -m tests.test_runtime" in out
    assert "`publish` writes a stage's outputs all together" in out  # this module's docstring


@pytest.mark.parametrize(
    ("main", "code", "message"),
    [
        (_fails, 1, "error: models/dae.pt is missing; run `dvc repro train_dae`\n"),
        (_interrupted, INTERRUPTED, "interrupted: nothing was written\n"),
    ],
    ids=["pipeline-error", "ctrl-c"],
)
def test_stage_turns_errors_into_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], main, code: int, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == code
    assert capsys.readouterr() == ("", message)


def test_stage_lets_other_errors_through() -> None:
    @stage
    def buggy() -> None:
        raise ValueError("a bug: show its traceback")

    with pytest.raises(ValueError, match="a bug"):
        buggy([])


def test_an_interrupted_script_exits_130_with_one_line(tmp_path: Path) -> None:
    script = tmp_path / "tiny_stage.py"
    script.write_text(
        '"""Stage `tiny`: reads nothing, writes nothing."""\n'
        "from pipeline.cli import stage\n\n\n"
        "@stage\n"
        "def main() -> None:\n"
        "    print('working', flush=True)\n"
        "    raise KeyboardInterrupt\n\n\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [PYTHON, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 130 == INTERRUPTED
    assert proc.stdout == "working\n"
    assert proc.stderr == "interrupted: nothing was written\n"


def test_ctrl_c_during_training_exits_130_and_keeps_the_previous_outputs(
    tmp_path: Path,
) -> None:
    """A real stage: SIGINT once it has trained an epoch (its outputs are half-written)."""
    write_splits(tmp_path, {"train": 64, "val": 16})
    write_params(tmp_path, {"dae.epochs": 1000})  # far longer than the test waits
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dae.pt").write_bytes(b"previous model")
    live = tmp_path / "metrics" / "train" / "dae"
    (live / "plots").mkdir(parents=True)
    (live / "metrics.json").write_text('{"val": {"mse": 0.1}}\n')
    (live / "plots" / "loss.tsv").write_text("step\tloss\n1\t0.5\n")
    before = snapshot(tmp_path)
    log = tmp_path / "stdout.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "pipeline.train_dae"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            # as from a terminal: a shell runs background jobs (CI, nohup) with SIGINT ignored,
            # and Python then installs no KeyboardInterrupt handler
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 240
        while "dae epoch 2/1000" not in log.read_text():
            assert proc.poll() is None, f"train_dae ended early: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "train_dae did not start training"
            time.sleep(0.05)
        assert (live / "plots" / "metrics" / "val" / "mse.tsv").exists()  # writing live
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err == "interrupted: nothing was written\n"  # no traceback, no progress bar
    assert "\r" not in log.read_text()  # stdout is a file: plain lines only
    log.unlink()
    assert snapshot(tmp_path) == before
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------- the command line of the stages


@pytest.fixture
def as_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run a module as `python -m <module> <args>` does (runpy, in this process), in an empty
    folder; return (exit code, stdout)."""
    monkeypatch.chdir(tmp_path)

    def run(module: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [module, *args])
        code = 0
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return code, capsys.readouterr().out

    return run


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("name", STAGES)
def test_every_stage_says_what_it_reads_and_writes_and_writes_nothing(
    as_main, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    code, out = as_main(f"pipeline.{name}", "--help", capsys=capsys)
    assert code == 0
    assert out.startswith(f"usage: python -m pipeline.{name} [-h]\n")
    assert f"Stage `{name}`: " in out
    assert "Reads" in out and "Writes" in out
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_python_m_pipeline_lists_the_stages_in_order(
    as_main, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = as_main("pipeline", capsys=capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert (
        listed
        == list(STAGES)
        == [
            "validate",
            "download",
            "make_noisy",
            "train_dae",
            "train_vae",
            "evaluate",
            "plot",
        ]
    )
    assert "  train_dae   the denoising autoencoder, noisy -> clean." in out.splitlines()
    assert "--help" in out
    assert os.listdir(tmp_path) == []


def test_a_read_only_file_inside_the_live_folder_is_refused_before_work(
    outputs: dict[str, Path],
) -> None:
    inner = outputs["live"] / "metrics.json"
    inner.write_text("{}\n")
    before = snapshot(Path.cwd())
    with (
        immutable(inner),
        pytest.raises(PipelineError, match=f"cannot write {outputs['live']}"),
        publish(outputs["first"], live=outputs["live"]),
    ):
        pytest.fail("the block ran")
    assert snapshot(Path.cwd()) == before
    assert temporaries(Path.cwd()) == []
