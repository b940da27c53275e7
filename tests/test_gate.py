"""The regression gate's exit-code contract: 0 nothing regressed, 1 a watched metric regressed
(a non-finite value, NaN or +-Infinity, on either side counts as one), 2 a usage problem,
explained on one `error:` line, checked before any metric is read.

Each test runs `python -m pipeline.check_regression` in a small git + DVC repo whose
`metrics/test.json` is committed on `main` (no pipeline run: the gate only reads metrics).
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import check_regression
from pipeline.check_regression import (
    Tolerance,
    UsageError,
    check_summary,
    compare,
    load_tolerances,
)
from pipeline.plumbing import yamlio
from tests.helpers import DELETE, ROOT, dvc, git, run, set_dotted

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


def set_metric(repo: Path, value: Any, side: str) -> None:
    """metrics/test.json with `dae.mse` = `value` (written by `json.dumps`, as DVC reads it) in
    the workspace, or committed on main with the workspace keeping the committed values."""
    (repo / METRICS).write_text(json.dumps({**VALUES, "dae": {**VALUES["dae"], "mse": value}}))
    if side == "main":
        git(repo, "commit", "-q", "-am", "planted value")
        (repo / METRICS).write_text(json.dumps(VALUES))


@pytest.mark.parametrize("side", ["workspace", "main"])
@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf], ids=["NaN", "Infinity", "-Infinity"]
)
def test_non_finite_metric_on_either_side_is_a_regression(
    repo: Path, side: str, value: float
) -> None:
    set_metric(repo, value, side)
    proc = gate(repo)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    row = next(line for line in proc.stdout.splitlines() if f"{METRICS}: dae.mse |" in line)
    assert row.endswith("| ❌ not a finite number |"), row
    assert "1 of 6 watched metrics regressed." in proc.stdout


@pytest.mark.parametrize("old", [0.01, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("new", [0.01, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("direction", ["lower", "higher"])
def test_tolerance_never_passes_a_non_finite_value(direction: str, old: float, new: float) -> None:
    tolerance = Tolerance(direction=direction, abs=1.0, rel=1.0)
    assert tolerance.regressed(old, new) is not (math.isfinite(old) and math.isfinite(new))


@pytest.mark.parametrize("side", ["workspace", "main"])
def test_integer_metric_too_large_for_a_float_is_a_usage_error(repo: Path, side: str) -> None:
    set_metric(repo, 10**400, side)  # 401 digits: float() raises OverflowError
    usage_error(
        gate(repo),
        f"{METRICS}: dae.mse at {side} is an integer too large to compare",
        "1.8e308",
    )


def test_compare_names_every_value_it_cannot_compare() -> None:
    tolerances = {METRICS: {"dae.mse": Tolerance(direction="lower")}}
    huge = {METRICS: {"dae": {"mse": -(10**400)}}}
    with pytest.raises(UsageError) as info:
        compare(tolerances, huge, {METRICS: {"dae": {"mse": True}}}, "main")
    assert str(info.value) == (
        f"cannot compare: {METRICS}: dae.mse at main is an integer too large to compare "
        f"(beyond the float range, about 1.8e308); {METRICS}: dae.mse is missing or not a "
        "number at workspace"
    )


def test_gate_and_yaml_reader_share_one_line() -> None:
    assert check_regression.one_line is yamlio.one_line
    assert yamlio.one_line("a\n  b\tc ") == "a b c"
    assert not hasattr(check_regression, "_one_line") and not hasattr(yamlio, "_one_line")


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


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{new}: &{new} [{', '.join([f'*{old}'] * 9)}]\n"
                for old, new in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + f"{METRICS}:\n  dae.mse: {{direction: lower, abs: *i}}\n",
            "expands to more than 100000 values (YAML aliases?)",
            id="alias-bomb",
        ),
        pytest.param(
            f"{METRICS}:\n  dae.mse: {'[' * 10_000}{']' * 10_000}\n",
            "nests more than 64 levels of lists and mappings",
            id="10000-levels",
        ),
    ],
)
def test_oversized_tolerance_file_is_a_usage_error(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "tol.yaml").write_text(text)
    message = usage_error(gate(tmp_path, "--tolerances", "tol.yaml"))
    assert message == f"error: tolerance file tol.yaml {problem}"


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


# ---------------------------------------------------------------- a branch against main
# (from tests/test_workflow.py: the same checks, in this file's small repo, no pipeline run)


def statuses(table: str) -> dict[str, str]:
    """{metric: status cell} from the gate's markdown table."""
    rows = [line for line in table.splitlines() if line.startswith(f"| {METRICS}:")]
    cells = [row.strip("|").split("|") for row in rows]
    return {row[0].strip(): row[-1].strip() for row in cells}


def edit_metrics(repo: Path, changes: dict[str, Any]) -> None:
    """Set (or, with DELETE, remove) dotted keys of the workspace's metrics/test.json."""
    path = repo / METRICS
    path.write_text(json.dumps(set_dotted(json.loads(path.read_text()), changes)))


def watched(repo: Path) -> dict[str, Tolerance]:
    """The gate's tolerances for metrics/test.json in `repo`."""
    return load_tolerances(repo / "regression.yaml")[METRICS]


def test_gate_passes_an_improvement(repo: Path) -> None:
    old = json.loads((repo / METRICS).read_text())
    better = {}
    for key, tol in watched(repo).items():
        value = check_regression.lookup(old, key)
        better[key] = value * 0.5 if tol.direction == "lower" else value * 1.5 + 0.1
    edit_metrics(repo, better)
    proc = gate(repo, "--rev", "main")
    assert proc.returncode == 0, proc.stderr
    assert set(statuses(proc.stdout).values()) == {"✅"}
    assert len(statuses(proc.stdout)) == len(better)
    for key, value in better.items():
        old_value = check_regression.lookup(old, key)
        assert f"| {METRICS}: {key} | {old_value:.5g} | {value:.5g} |" in proc.stdout


def test_gate_fails_a_planted_regression(repo: Path) -> None:
    old = json.loads((repo / METRICS).read_text())
    tols = watched(repo)
    mse, psnr = check_regression.lookup(old, "dae.mse"), check_regression.lookup(old, "dae.psnr")
    worse_mse = mse + 2 * tols["dae.mse"].allowed(mse) + 0.01
    within_psnr = psnr - tols["dae.psnr"].allowed(psnr) / 2  # worse, but within tolerance
    edit_metrics(repo, {"dae.mse": worse_mse, "dae.psnr": within_psnr})
    summary = repo.parent / "summary.md"
    proc = gate(repo, "--summary", str(summary))  # --rev defaults to main
    assert proc.returncode == 1, proc.stderr
    status = statuses(proc.stdout)
    assert status.pop(f"{METRICS}: dae.mse") == "❌"
    assert set(status.values()) == {"✅"} and len(status) == len(tols) - 1
    assert f"1 of {len(tols)} watched metrics regressed." in proc.stdout
    assert summary.read_text().strip() == proc.stdout.strip()


def test_gate_rejects_an_unknown_revision(repo: Path) -> None:
    proc = gate(repo, "--rev", "no-such-branch")
    assert proc.returncode == 2
    assert "no-such-branch" in proc.stderr and not proc.stdout


def test_gate_rejects_a_metrics_file_missing_at_the_revision(repo: Path) -> None:
    git(repo, "rm", "-q", "--cached", METRICS)
    git(repo, "commit", "-q", "-m", "no metrics")
    git(repo, "add", METRICS)
    git(repo, "commit", "-q", "-m", "metrics again")
    proc = gate(repo, "--rev", "HEAD~1")  # the commit without them
    assert proc.returncode == 2
    assert f"metrics file {METRICS} at HEAD~1: not found" in proc.stderr


@pytest.mark.parametrize("side", ["workspace", "main"])
def test_gate_rejects_a_metric_missing_on_one_side(repo: Path, side: str) -> None:
    if side == "workspace":  # a watched metric the branch no longer writes
        key = "vae.ssim"
        edit_metrics(repo, {key: DELETE})
    else:  # a newly watched metric that main never had
        key = "dae.sharpness"
        edit_metrics(repo, {key: 1.0})
        with (repo / "regression.yaml").open("a") as f:  # under metrics/test.json, the last
            f.write(f"  {key}: {{direction: higher, abs: 0.1}}\n")
        assert key in watched(repo)
    proc = gate(repo)
    assert proc.returncode == 2
    assert f"{METRICS}: {key} is missing or not a number at {side}" in proc.stderr


def test_gate_rejects_a_bad_tolerance_file(repo: Path) -> None:
    (repo / "bad.yaml").write_text(f"{METRICS}:\n  dae.mse: {{direction: sideways}}\n")
    proc = gate(repo, "--tolerances", "bad.yaml")
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and f"{METRICS}: dae.mse: direction" in proc.stderr


@pytest.mark.parametrize(
    ("tolerance", "old", "new", "regressed"),
    [
        ({"direction": "lower", "abs": 0.5}, 10.0, 10.25, False),  # within abs
        ({"direction": "lower", "abs": 0.5}, 10.0, 11.0, True),  # beyond abs, no rel
        ({"direction": "lower", "abs": 0.5, "rel": 0.25}, 10.0, 12.0, False),  # rel wins
        ({"direction": "lower", "abs": 0.5, "rel": 0.25}, 1.0, 1.375, False),  # abs wins
        ({"direction": "lower", "abs": 0.5, "rel": 0.25}, 1.0, 1.625, True),
        ({"direction": "lower", "rel": 0.25}, -8.0, -5.0, True),  # rel of |old|
        ({"direction": "lower"}, 1.0, 1.0, False),  # unchanged passes at zero tolerance
        ({"direction": "lower"}, 1.0, 0.5, False),  # improvement
        ({"direction": "higher", "abs": 0.5}, 10.0, 9.75, False),
        ({"direction": "higher", "abs": 0.5}, 10.0, 9.0, True),
        ({"direction": "higher", "abs": 0.5}, 10.0, 20.0, False),  # improvement
        ({"direction": "higher", "rel": 0.25}, 8.0, 5.0, True),
        ({"direction": "higher", "abs": 1.0}, 1.0, math.nan, True),  # NaN never passes
    ],
)
def test_tolerance_is_max_of_abs_and_rel(
    tolerance: dict[str, Any], old: float, new: float, regressed: bool
) -> None:
    assert Tolerance.model_validate(tolerance).regressed(old, new) is regressed


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("metrics/test.json:\n  dae.mse: {direction: down}\n", "dae.mse: direction"),
        ("metrics/test.json:\n  dae.mse: {direction: lower, abs: -1}\n", "dae.mse: abs"),
        ("metrics/test.json:\n  dae.mse: {direction: lower, tol: 1}\n", "dae.mse: tol"),
        ("metrics/test.json:\n  dae.mse: {abs: 1}\n", "dae.mse: direction"),
        ("metrics/test.json: {}\n", "metrics/test.json"),
        ("metrics/test.json: [\n", "not valid YAML"),
        ("", "watches no metrics"),
    ],
)
def test_bad_tolerance_files_are_named(tmp_path: Path, text: str, named: str) -> None:
    (tmp_path / "regression.yaml").write_text(text)
    with pytest.raises(UsageError) as err:
        load_tolerances(tmp_path / "regression.yaml")
    assert "regression.yaml" in str(err.value) and named in str(err.value)


def test_project_tolerances_watch_both_models() -> None:
    tolerances = watched(ROOT)
    for model in ("dae", "vae"):
        assert tolerances[f"{model}.mse"].direction == "lower"
        assert tolerances[f"{model}.psnr"].direction == "higher"
        assert tolerances[f"{model}.ssim"].direction == "higher"


# ------------------------------------------------- the project's tolerances, on real runs


def reseeds() -> list[Path]:
    return sorted((ROOT / "results" / "seeds").glob("seed-?.json"))


def regressions(old: dict, new: dict) -> list[str]:
    """The watched metrics of regression.yaml that `new` regresses against `old`."""
    tolerances = load_tolerances(ROOT / "regression.yaml")[METRICS]
    value = check_regression.lookup
    return [key for key, t in tolerances.items() if t.regressed(value(old, key), value(new, key))]


def test_a_reseed_of_the_default_run_passes_the_gate() -> None:
    committed = json.loads((ROOT / METRICS).read_text())
    assert len(reseeds()) >= 2
    for path in reseeds():
        reseed = json.loads(path.read_text())
        assert regressions(committed, reseed) == [], path.name
        assert regressions(reseed, committed) == [], path.name  # and the other way round


def test_an_under_trained_dae_fails_the_gate() -> None:
    committed = json.loads((ROOT / METRICS).read_text())
    worse = json.loads((ROOT / "results" / "seeds" / "seed-2-dae-3-epochs.json").read_text())
    assert set(regressions(committed, worse)) >= {"dae.mse", "dae.psnr", "dae.ssim"}
    assert not any(key.startswith("vae.") for key in regressions(committed, worse))
