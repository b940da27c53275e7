"""The regression gate's exit-code contract: 0 nothing regressed, 1 a watched metric regressed,
2 a usage problem, explained on one `error:` line, checked before any metric is read.

Each test runs `python -m pipeline.check_regression` in a small git + DVC repo whose
`metrics/test.json` is committed on `main` (no pipeline run: the gate only reads metrics).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import check_regression
from pipeline.check_regression import UsageError, check_summary, load_tolerances
from tests.helpers import ROOT, dvc, git, run

METRICS = "metrics/test.json"
VALUES = {
    "dae": {"mse": 0.01, "psnr": 20.0, "ssim": 0.9},
    "vae": {"mse": 0.02, "psnr": 18.0, "ssim": 0.8},
}
NOT_UTF8 = "metrics/test.json:\n  dae.mse: {direction: lower}  # café\n".encode("latin-1")


def gate(cwd: Path, *args: str) -> Any:
    """Run the gate in `cwd` with this checkout's code (exit code not checked)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run([sys.executable, "-m", "pipeline.check_regression", *args], cwd, False, env=env)


def usage_error(proc: Any, *fragments: str) -> str:
    """Assert exit 2 with one `error:` line holding `fragments`, and no report; return it."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout  # no table, no "0 of 6 regressed"
    message = proc.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repo with the project's regression.yaml and metrics committed on main."""
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    (repo / "regression.yaml").write_text((ROOT / "regression.yaml").read_text())
    (repo / "dvc.yaml").write_text(f"metrics:\n  - {METRICS}\n")
    (repo / METRICS).write_text(json.dumps(VALUES))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "metrics")
    return repo


def test_unchanged_metrics_pass_and_a_regression_fails(repo: Path) -> None:
    proc = gate(repo)
    assert proc.returncode == 0, proc.stderr
    assert "0 of 6 watched metrics regressed." in proc.stdout
    (repo / METRICS).write_text(json.dumps({**VALUES, "dae": {**VALUES["dae"], "mse": 0.5}}))
    summary = repo / "summary.md"
    proc = gate(repo, "--summary", str(summary))
    assert proc.returncode == 1, proc.stderr
    assert "1 of 6 watched metrics regressed." in summary.read_text()


# ---------------------------------------------------------------- the tolerance file


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "not found", id="missing"),
        pytest.param("dir", "is a directory", id="directory"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "UTF-8", id="binary"),
        pytest.param(NOT_UTF8, "UTF-8", id="latin-1"),
        pytest.param(b"metrics/test.json: [\n", "not valid YAML: line 2", id="syntax"),
        pytest.param(b"a:\n  b: 1\na:\n  b: 2\n", "duplicate key 'a'", id="duplicate-key"),
        pytest.param(b"# nothing\n", "watches no metrics", id="empty"),
    ],
)
def test_bad_tolerance_file_is_a_usage_error(tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "tol.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    # in a folder that is no DVC project: the file is checked before any metric is read
    usage_error(gate(tmp_path, "--tolerances", "tol.yaml"), "tolerance file tol.yaml", fragment)


def test_tolerances_are_read_as_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "regression.yaml"
    path.write_text(f"{METRICS}:\n  dae.mse: {{direction: lower, abs: 1e-3, rel: .5}}\n")
    tolerance = load_tolerances(path)[METRICS]["dae.mse"]
    assert (tolerance.abs, tolerance.rel) == (0.001, 0.5)


def test_tolerance_file_problems_raise_usage_error(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_bytes(NOT_UTF8)
    with pytest.raises(UsageError, match="UTF-8"):
        load_tolerances(tmp_path / "r.yaml")


# ---------------------------------------------------------------- --summary


@pytest.mark.parametrize(
    ("summary", "fragment"),
    [
        pytest.param("no-such-dir/summary.md", "folder no-such-dir does not exist", id="no-folder"),
        pytest.param("metrics", "is a directory", id="directory"),
        pytest.param("regression.yaml/summary.md", "is not a folder", id="parent-is-a-file"),
    ],
)
def test_bad_summary_path_is_a_usage_error_before_any_work(
    repo: Path, summary: str, fragment: str
) -> None:
    (repo / METRICS).write_text(json.dumps({**VALUES, "dae": {**VALUES["dae"], "mse": 0.5}}))
    usage_error(gate(repo, "--summary", summary), f"--summary {summary}", fragment)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
@pytest.mark.parametrize("target", ["folder", "file"])
def test_unwritable_summary_is_a_usage_error(repo: Path, target: str) -> None:
    folder = repo / "out"
    folder.mkdir()
    summary = folder / "summary.md"
    if target == "file":
        summary.write_text("")
        summary.chmod(stat.S_IRUSR)
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        usage_error(gate(repo, "--summary", "out/summary.md"), "not writable")
    finally:
        folder.chmod(stat.S_IRWXU)


def test_summary_is_checked_before_dvc_is_asked(tmp_path: Path) -> None:
    (tmp_path / "regression.yaml").write_text((ROOT / "regression.yaml").read_text())
    usage_error(gate(tmp_path, "--summary", "missing/s.md"), "--summary missing/s.md")


def test_workspace_as_revision_and_no_dvc_project_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "regression.yaml").write_text((ROOT / "regression.yaml").read_text())
    usage_error(gate(tmp_path, "--rev", "workspace"), "--rev must be a git revision")
    usage_error(gate(tmp_path), "DVC")


# ---------------------------------------------------------------- damaged metrics files


@pytest.mark.parametrize("side", ["workspace", "main"])
@pytest.mark.parametrize("where", [".", "metrics"])
def test_truncated_metrics_file_is_named_by_its_real_path(
    repo: Path, side: str, where: str
) -> None:
    truncated = json.dumps(VALUES)[:25]
    (repo / METRICS).write_text(truncated)
    if side == "main":
        git(repo, "commit", "-q", "-am", "truncated metrics")
        (repo / METRICS).write_text(json.dumps(VALUES))
    tolerances = os.path.relpath(repo / "regression.yaml", repo / where)
    message = usage_error(
        gate(repo / where, "--tolerances", tolerances),
        f"metrics file {METRICS} at {side}: ",
        "JSON",
        "line 1 column 23",  # where the cut-off key starts
    )
    assert "../" not in message and "'/" not in message


@pytest.mark.parametrize("exists", [True, False])
def test_check_summary_refuses_what_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    summary = tmp_path / "summary.md"
    if exists:
        summary.write_text("")
    monkeypatch.setattr(os, "access", lambda *_: False)  # as for a user without write access
    with pytest.raises(UsageError, match="not writable"):
        check_summary(summary)


def test_a_bug_in_the_gate_is_not_reported_as_a_regression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    (tmp_path / "regression.yaml").write_text((ROOT / "regression.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(check_regression, "read_metrics", broken)
    assert check_regression.main([]) == check_regression.INTERNAL == 3
    assert "RuntimeError: boom" in capsys.readouterr().err
