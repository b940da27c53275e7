"""Outputs: `publish` writes a stage's outputs all together or not at all, whatever signal, kill
or full disk arrives, and the `stage` wrapper turns errors and signals into one line and the
documented exit codes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.__main__ import stage_names
from pipeline.plumbing import publish as publishing
from pipeline.plumbing import tensorfile
from pipeline.plumbing.cli import Interrupted, stage
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import publish, recover
from tests.helpers import ROOT, VENV_BIN, immutable, temporaries, write_params, write_splits

PYTHON = str(VENV_BIN / "python")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` by relative path (folders as "dir"), journals and
    temporaries included: equal snapshots mean byte-identical outputs and no leftovers."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


TARGETS = {"first": "metrics/first.json", "second": "metrics/second.csv"}
FOLDERS = {"folder": "data/noisy"}


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Previous outputs of a stage in `tmp_path` (the working folder): two files, a folder."""
    monkeypatch.chdir(tmp_path)
    write_outputs(tmp_path, "old")
    return tmp_path


def write_outputs(root: Path, version: str, out: object | None = None) -> None:
    """Every output of the fixture's stage at `version` (into the temporaries of `out`)."""
    first = out.first if out else root / TARGETS["first"]
    second = out.second if out else root / TARGETS["second"]
    folder = out.folder if out else root / FOLDERS["folder"]
    first.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    first.write_text(f"{version} first\n")
    second.write_text(f"{version} second\n")
    (folder / "train.pt").write_text(f"{version} split\n")


def expected(root: Path, version: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    other = tmp_path_factory.mktemp(version)
    write_outputs(other, version)
    return snapshot(other)


# --------------------------------------------------------------------------- all or none


def test_publish_replaces_every_output_on_success(outputs: Path, tmp_path_factory) -> None:
    with publish("s", files=TARGETS, folders=FOLDERS) as out:
        assert out.folder.is_dir() and not out.first.exists()
        assert out.first.parent.parent.resolve() == (outputs / "metrics").resolve()  # same fs
        assert (outputs / TARGETS["first"]).read_text() == "old first\n"  # untouched meanwhile
        write_outputs(outputs, "new", out)
    assert snapshot(outputs) == expected(outputs, "new", tmp_path_factory)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), Interrupted(15)])
def test_a_failure_in_the_block_keeps_the_old_outputs_and_no_temporaries(
    outputs: Path, error: BaseException
) -> None:
    before = snapshot(outputs)
    with pytest.raises(type(error)), publish("s", files=TARGETS, folders=FOLDERS) as out:
        write_outputs(outputs, "new", out)
        raise error
    assert snapshot(outputs) == before


def test_an_output_the_block_did_not_write_publishes_nothing(outputs: Path) -> None:
    before = snapshot(outputs)
    with (
        pytest.raises(PipelineError, match=r"wrote no metrics/second\.csv"),
        publish("s", files=TARGETS) as out,
    ):
        out.first.write_text("new\n")
    assert snapshot(outputs) == before


@pytest.mark.parametrize("how", ["immutable-file", "parent-is-a-file", "immutable-folder",
                                 "folder-at-a-file", "file-at-a-folder"])  # fmt: skip
def test_an_unwritable_output_is_refused_before_the_block_runs(outputs: Path, how: str) -> None:
    files, folders = dict(TARGETS), dict(FOLDERS)
    if how == "parent-is-a-file":
        files["second"] = f"{TARGETS['first']}/oops.csv"
    if how == "folder-at-a-file":  # a user's folder where the model file goes
        (outputs / "models" / "dae.pt").mkdir(parents=True)
        (outputs / "models" / "dae.pt" / "mine.txt").write_text("keep me\n")
        files["second"] = "models/dae.pt"
    if how == "file-at-a-folder":
        (outputs / "data" / "MNIST").parent.mkdir(exist_ok=True)
        (outputs / "data" / "MNIST").write_text("a file\n")
        folders["folder"] = "data/MNIST"
    bad = outputs / (folders["folder"] if how.endswith("folder") else files["second"])
    guard = immutable(bad) if how.startswith("immutable") else contextlib.nullcontext()
    with guard:
        before = snapshot(outputs)
        with pytest.raises(PipelineError) as info, publish("s", files=files, folders=folders):
            pytest.fail("the block ran")
        assert str(info.value).startswith(f"cannot write {bad.relative_to(outputs)}")
        assert snapshot(outputs) == before


def test_a_failed_rename_puts_every_previous_output_back(
    outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(outputs)
    real, calls = os.replace, []

    def flaky(src, dst) -> None:
        calls.append(src)
        if len(calls) == 5:  # the journal, two outputs, then the third output's aside
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(publishing.os, "replace", flaky)
    with (
        pytest.raises(PipelineError, match="cannot publish: input/output error; previous"),
        publish("s", files=TARGETS, folders=FOLDERS) as out,
    ):
        write_outputs(outputs, "new", out)
    assert snapshot(outputs) == before


def test_a_full_disk_is_one_line_naming_the_output(outputs: Path, capsys) -> None:
    @stage
    def main() -> None:
        with publish("train@dae", files={"model": "models/dae.pt"}) as out:
            out.model.symlink_to("/dev/full")  # every write there fails with ENOSPC
            tensorfile.save(out.model, {}, {})

    (outputs / "models").mkdir()
    (outputs / "models" / "dae.pt").write_bytes(b"previous model")
    before = snapshot(outputs)
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: cannot write models/dae.pt: no space left on device; previous outputs kept\n"
    )
    assert snapshot(outputs) == before


def test_an_error_reading_an_input_is_not_reported_as_a_write(outputs: Path) -> None:
    before = snapshot(outputs)
    with pytest.raises(PermissionError), publish("s", files=TARGETS) as out:
        out.first.write_text("new\n")
        raise PermissionError(errno.EACCES, "Permission denied", "data/input.pt")
    assert snapshot(outputs) == before


# ----------------------------------------------------- signals and kills during the swap

# A child process publishes the fixture's outputs; a signal arrives before its k-th rename (the
# journal's is the first) or, with k = -1, before the journal is deleted.
CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from pipeline.plumbing import publish as p
    from pipeline.plumbing.cli import stage

    k, signum = int(sys.argv[1]), int(sys.argv[2])
    real_replace, real_unlink, calls = os.replace, Path.unlink, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == k + 1:
            os.kill(os.getpid(), signum)  # SIGKILL ends here; SIGINT/SIGTERM are deferred
        real_replace(src, dst)

    def unlink(self, *a, **kw):
        if k == -1 and self.suffix == ".json" and self.parent.name == ".publish":
            os.kill(os.getpid(), signum)
        real_unlink(self, *a, **kw)

    p.os.replace, Path.unlink = replace, unlink

    @stage
    def main():
        with p.publish("s", files={files!r}, folders={folders!r}) as out:
            out.first.write_text("new first\\n")
            out.second.write_text("new second\\n")
            (out.folder / "train.pt").write_text("new split\\n")

    main([])
""")
SWAP_STEPS = [0, 1, 2, 3, 4, 5, 6, -1]  # journal, aside/new for each of 3 outputs, journal gone


def outputs_only(snap: dict[str, str]) -> dict[str, str]:
    """A snapshot without the journal folder and temporaries."""
    return {k: v for k, v in snap.items() if ".tmp-" not in k and not k.startswith(".publish")}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=str)
@pytest.mark.parametrize("step", SWAP_STEPS)
def test_a_signal_at_any_step_of_the_swap_leaves_all_previous_or_all_new_outputs(
    outputs: Path, tmp_path_factory, step: int, signum: int
) -> None:
    old, new = (expected(outputs, v, tmp_path_factory) for v in ("old", "new"))
    script = outputs.parent / f"child-{step}-{signum}.py"
    script.write_text(CHILD.format(files=TARGETS, folders=FOLDERS))
    proc = subprocess.run([PYTHON, str(script), str(step), str(int(signum))], cwd=outputs,
                          env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert outputs_only(snapshot(outputs)) != (old if step == 0 else new) or step in (0, -1)
        recover()  # what the next stage does first
        assert outputs_only(snapshot(outputs)) == (old if step == 0 else new)  # once journaled
        with publish("s", files=TARGETS, folders=FOLDERS) as out:  # and the next run is clean
            write_outputs(outputs, "new", out)
        assert snapshot(outputs) == new
    else:  # deferred: the swap completes, then the signal is reported
        assert proc.returncode == 128 + signum, proc.stderr
        name = signal.Signals(signum).name
        assert proc.stderr == f"interrupted ({name}): outputs published\n"
        assert snapshot(outputs) == new


def test_a_torn_journal_is_ignored_and_the_previous_outputs_stay(outputs: Path) -> None:
    before = snapshot(outputs)
    (outputs / ".publish").mkdir()
    (outputs / ".publish" / "s.json").write_text('{"moves": [["metrics/first.json"')
    recover()
    assert snapshot(outputs) == before


def test_temporaries_left_by_a_killed_run_are_removed(outputs: Path) -> None:
    stale = outputs / "metrics" / ".first.json.tmp-killed"
    stale.mkdir()
    (stale / "first.json").write_text("half\n")
    with publish("s", files=TARGETS, folders=FOLDERS) as out:
        assert not stale.exists()
        write_outputs(outputs, "new", out)
    assert temporaries(outputs) == []


# ------------------------------------------------------------------------- stage wrapper


@stage
def _ok() -> None:
    print("ran")


@stage
def _fails() -> None:
    raise PipelineError("models/dae.pt is missing; run `dvc repro train@dae`")


@stage
def _interrupted() -> None:
    raise KeyboardInterrupt


def test_stage_runs_main_and_prints_the_module_docstring_for_help(capsys) -> None:
    assert _ok([]) is None
    assert capsys.readouterr().out == "ran\n"
    with pytest.raises(SystemExit) as info:
        _ok(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ran" not in out  # --help does not run the stage
    assert "usage: python -m tests.test_outputs" in out
    assert "`publish` writes a stage's outputs all together" in out  # this module's docstring


@pytest.mark.parametrize(
    ("main", "code", "message"),
    [
        (_fails, 1, "error: models/dae.pt is missing; run `dvc repro train@dae`\n"),
        (_interrupted, 130, "interrupted (SIGINT): previous outputs kept\n"),
    ],
    ids=["pipeline-error", "ctrl-c"],
)
def test_stage_turns_errors_into_one_line_and_an_exit_code(capsys, main, code, message) -> None:
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


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the SigCgt mask of /proc/pid/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16
    )
    return bool(mask >> (signum - 1) & 1)


def test_a_signal_while_a_stage_imports_torch_is_one_line(tmp_path: Path) -> None:
    """The handler is installed by `pipeline/__init__.py`, before the stage's heavy imports."""
    proc = subprocess.Popen([PYTHON, "-m", "pipeline.evaluate"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not catches(proc.pid, signal.SIGTERM):  # `import pipeline` done, torch not yet
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err == "interrupted (SIGTERM): nothing was written\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=str)
def test_a_signal_during_training_keeps_the_previous_model_summary_and_curves(
    tmp_path: Path, signum: int
) -> None:
    """A real stage, stopped once it has trained two epochs: the previous outputs stay byte
    for byte; after SIGKILL the next stage start removes what the killed one left."""
    write_splits(tmp_path, {"train": 64, "val": 16})
    write_params(tmp_path, {"dae.epochs": 1000})  # far longer than the test waits
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dae.pt").write_bytes(b"previous model")
    logs = tmp_path / "metrics" / "train" / "dae"
    (logs / "plots" / "metrics" / "val").mkdir(parents=True)
    (logs / "metrics.json").write_text('{"val": {"mse": 0.1}}\n')
    (logs / "plots" / "metrics" / "val" / "mse.tsv").write_text("step\tmse\n1\t0.5\n")
    before = snapshot(tmp_path)
    log = tmp_path.parent / f"{tmp_path.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "pipeline.train", "dae"], cwd=tmp_path, env=ENV, stdout=out,
            stderr=subprocess.PIPE, text=True,
            # as from a terminal: a shell runs background jobs (CI, nohup) with SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "dae epoch 2/1000" not in log.read_text():
            assert proc.poll() is None, f"training ended early: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "\r" not in log.read_text()  # stdout is a file: plain lines only
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert temporaries(tmp_path)  # the killed run left its temporaries, nothing else
        assert outputs_only(snapshot(tmp_path)) == before
        files, folders = {"model": "models/dae.pt"}, {"logs": "metrics/train/dae"}
        with (  # the next run's start
            contextlib.chdir(tmp_path),
            pytest.raises(RuntimeError),
            publish("train@dae", files=files, folders=folders),
        ):
            raise RuntimeError("stop before publishing")
        assert snapshot(tmp_path) == before
        return
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert err == f"interrupted ({name}): previous outputs kept\n"  # no traceback, no bar
    assert snapshot(tmp_path) == before


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


MODULES = sorted({name.split("@")[0] for name in stage_names()})


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", MODULES)
def test_every_stage_says_what_it_reads_and_writes_and_writes_nothing(
    as_main, capsys, tmp_path: Path, module: str
) -> None:
    code, out = as_main(f"pipeline.{module}", "--help", capsys=capsys)
    assert code == 0
    assert out.startswith(f"usage: python -m pipeline.{module} [-h]")
    assert f"Stage `{module}" in out
    assert "Reads" in out and "Writes" in out
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_python_m_pipeline_lists_the_stages_of_dvc_yaml_in_order(
    as_main, capsys, tmp_path: Path
) -> None:
    code, out = as_main("pipeline", capsys=capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == stage_names()
    assert listed[:3] == ["validate", "download", "make_noisy"]
    assert {"train@dae", "train@vae"} <= set(listed)
    assert "--help" in out
    assert os.listdir(tmp_path) == []
