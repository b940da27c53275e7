"""Team workflow: compare with main, the regression gate, a queued sweep, a remote round trip.

Each DVC test works in a private copy or clone of one reproduced tiny project whose results
are committed on `main`; the sweep's `noise.std=0.3` experiment becomes the branch that is
compared with `main`, so the whole file costs one repro plus two queued experiments.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.check_regression import Tolerance, UsageError, load_tolerances, lookup
from pipeline.yamlio import parse_yaml, read_yaml
from tests.helpers import DELETE, ROOT, dvc, git, ran_stages, repro, run_stage, set_dotted

e2e = pytest.mark.e2e
METRICS = "metrics/test.json"
SWEEP = {0.3, 0.7}
QUEUE_TIMEOUT_S = 1800


def gate(repo: Path, *args: str) -> Any:
    """Run the regression gate in `repo` (exit code not checked)."""
    return run_stage(repo, "check_regression", *args)


def statuses(table: str) -> dict[str, str]:
    """{metric: status cell} from the gate's markdown table."""
    rows = [line for line in table.splitlines() if line.startswith(f"| {METRICS}:")]
    cells = [row.strip("|").split("|") for row in rows]
    return {row[0].strip(): row[-1].strip() for row in cells}


def edit_json(path: Path, changes: dict[str, Any]) -> None:
    """Set (or, with DELETE, remove) dotted keys in a JSON file."""
    path.write_text(json.dumps(set_dotted(json.loads(path.read_text()), changes)))


def watched(repo: Path) -> dict[str, Tolerance]:
    """The gate's tolerances for metrics/test.json in `repo`."""
    return load_tolerances(repo / "regression.yaml")[METRICS]


@pytest.fixture(scope="module")
def committed(reproduced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced tiny project with its results and regression.yaml committed on main."""
    repo = tmp_path_factory.mktemp("committed") / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "reproduced results")
    return repo


@pytest.fixture
def clone(committed: Path, tmp_path: Path) -> Path:
    """A fresh git clone of :func:`committed` (git-tracked files only, as CI checks out)."""
    git(tmp_path, "clone", "-q", str(committed), "clone")
    return tmp_path / "clone"


def wait_for_queue(repo: Path, timeout_s: float) -> None:
    """Poll `dvc queue status` until no experiment is queued or running; fail on a failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = dvc(repo, "queue", "status").stdout.splitlines()
        tasks = lines[1 : lines.index("")] if "" in lines else lines[1:]  # then worker status
        states = {task.split()[1]: task.split()[-1] for task in tasks}
        if failed := [name for name, state in states.items() if state == "Failed"]:
            logs = dvc(repo, "queue", "logs", failed[0], check=False)
            raise AssertionError(f"experiment {failed[0]} failed:\n{logs.stdout}{logs.stderr}")
        if states and not {"Queued", "Running"} & set(states.values()):
            return
        assert time.monotonic() < deadline, "queue still busy:\n" + "\n".join(lines)
        time.sleep(10)


@pytest.fixture(scope="module")
def swept(committed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of :func:`committed` after a queued two-experiment `noise.std` sweep."""
    repo = tmp_path_factory.mktemp("swept") / "repo"
    shutil.copytree(committed, repo, symlinks=True)
    values = ",".join(str(v) for v in sorted(SWEEP))
    dvc(repo, "exp", "run", "--queue", "-S", f"noise.std={values}")
    try:
        dvc(repo, "queue", "start", "-j", "1")
        wait_for_queue(repo, QUEUE_TIMEOUT_S)
        yield repo
    finally:
        dvc(repo, "queue", "stop", "--kill", check=False)


def experiments(repo: Path) -> dict[float, dict[str, Any]]:
    """{noise.std: {"name", "metrics"}} of the experiments `dvc exp show --json` lists."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            std = data["params"]["params.yaml"]["data"]["noise"]["std"]
            found[std] = {"name": exp["name"], "metrics": data["metrics"][METRICS]["data"]}
    return found


# (c) queued sweep ----------------------------------------------------------------------------


@e2e
def test_queued_sweep_shows_both_experiments_with_metrics(swept: Path) -> None:
    found = experiments(swept)
    assert set(found) == SWEEP
    for exp in found.values():
        for method in ("dae", "vae"):
            assert 0 <= exp["metrics"][method]["mse"] < 1
    # less input noise leaves the noisy images closer to the clean ones
    assert found[0.3]["metrics"]["noisy"]["mse"] < found[0.7]["metrics"]["noisy"]["mse"]
    table = dvc(swept, "exp", "show", "--md", "--only-changed").stdout
    assert "noise.std" in table and "dae.mse" in table
    for exp in found.values():
        assert f"[{exp['name']}]" in table


# (a) a branch compared with main ---------------------------------------------------------------


@e2e
def test_branch_diffs_params_metrics_and_plots_against_main(swept: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(swept, repo, symlinks=True)
    dvc(repo, "exp", "branch", experiments(repo)[0.3]["name"], "noise-03")
    git(repo, "checkout", "-q", "noise-03")
    dvc(repo, "checkout")
    main_params = parse_yaml(git(repo, "show", "main:params.yaml").stdout, "main:params.yaml")
    main_metrics = json.loads(git(repo, "show", f"main:{METRICS}").stdout)
    branch_metrics = json.loads((repo / METRICS).read_text())

    params = json.loads(dvc(repo, "params", "diff", "main", "--json").stdout)
    assert params["params.yaml"].keys() == {"noise.std"}
    assert params["params.yaml"]["noise.std"]["old"] == main_params["noise"]["std"]
    assert params["params.yaml"]["noise.std"]["new"] == 0.3

    diff = json.loads(dvc(repo, "metrics", "diff", "main", "--json").stdout)[METRICS]
    assert diff["noisy.mse"]["old"] == main_metrics["noisy"]["mse"]
    assert diff["noisy.mse"]["new"] == branch_metrics["noisy"]["mse"]
    assert diff["noisy.mse"]["diff"] < 0
    assert "| noisy.mse" in dvc(repo, "metrics", "diff", "main", "--md").stdout

    dvc(repo, "plots", "diff", "main", "-o", str(tmp_path / "plots-diff"))
    assert (tmp_path / "plots-diff" / "index.html").exists()
    for png in ("denoised", "mse_vs_noise"):
        for rev in ("main", "workspace"):
            assert (tmp_path / "plots-diff" / "static" / f"{rev}_plots_{png}.png").exists()


# (b) the regression gate -------------------------------------------------------------------------


@e2e
def test_gate_passes_an_improvement(clone: Path) -> None:
    old = json.loads((clone / METRICS).read_text())
    better = {}
    for key, tol in watched(clone).items():
        value = lookup(old, key)
        better[key] = value * 0.5 if tol.direction == "lower" else value * 1.5 + 0.1
    edit_json(clone / METRICS, better)
    proc = gate(clone, "--rev", "main")
    assert proc.returncode == 0, proc.stderr
    assert set(statuses(proc.stdout).values()) == {"✅"}
    assert len(statuses(proc.stdout)) == len(better)
    for key, value in better.items():
        assert f"| {METRICS}: {key} | {lookup(old, key):.5g} | {value:.5g} |" in proc.stdout


@e2e
def test_gate_fails_a_planted_regression(clone: Path) -> None:
    old = json.loads((clone / METRICS).read_text())
    tols = watched(clone)
    mse, psnr = lookup(old, "dae.mse"), lookup(old, "dae.psnr")
    worse_mse = mse + 2 * tols["dae.mse"].allowed(mse) + 0.01
    within_psnr = psnr - tols["dae.psnr"].allowed(psnr) / 2  # worse, but within tolerance
    edit_json(clone / METRICS, {"dae.mse": worse_mse, "dae.psnr": within_psnr})
    summary = clone.parent / "summary.md"
    proc = gate(clone, "--summary", str(summary))  # --rev defaults to main
    assert proc.returncode == 1, proc.stderr
    status = statuses(proc.stdout)
    assert status.pop(f"{METRICS}: dae.mse") == "❌"
    assert set(status.values()) == {"✅"} and len(status) == len(tols) - 1
    assert f"1 of {len(tols)} watched metrics regressed." in proc.stdout
    assert summary.read_text().strip() == proc.stdout.strip()


@e2e
def test_gate_rejects_an_unknown_revision(clone: Path) -> None:
    proc = gate(clone, "--rev", "no-such-branch")
    assert proc.returncode == 2
    assert "no-such-branch" in proc.stderr and not proc.stdout


@e2e
def test_gate_rejects_a_metrics_file_missing_at_the_revision(clone: Path) -> None:
    proc = gate(clone, "--rev", "HEAD~1")  # the commit before the results
    assert proc.returncode == 2
    assert f"metrics file {METRICS} at HEAD~1: not found" in proc.stderr


@e2e
@pytest.mark.parametrize("side", ["workspace", "main"])
def test_gate_rejects_a_metric_missing_on_one_side(clone: Path, side: str) -> None:
    if side == "workspace":  # a watched metric the branch no longer writes
        key = "vae.ssim"
        edit_json(clone / METRICS, {key: DELETE})
    else:  # a newly watched metric that main never had
        key = "dae.sharpness"
        edit_json(clone / METRICS, {key: 1.0})
        tolerances = yaml.safe_load((clone / "regression.yaml").read_text())
        tolerances[METRICS][key] = {"direction": "higher", "abs": 0.1}
        (clone / "regression.yaml").write_text(yaml.safe_dump(tolerances))
    proc = gate(clone)
    assert proc.returncode == 2
    assert f"{METRICS}: {key} is missing or not a number at {side}" in proc.stderr


@e2e
def test_gate_rejects_a_bad_tolerance_file(clone: Path) -> None:
    (clone / "bad.yaml").write_text(f"{METRICS}:\n  dae.mse: {{direction: sideways}}\n")
    proc = gate(clone, "--tolerances", "bad.yaml")
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and f"{METRICS}: dae.mse: direction" in proc.stderr


# tolerance logic, no DVC ------------------------------------------------------------------------


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


def test_pr_workflow_runs_tests_diffs_and_the_gate() -> None:
    workflow = read_yaml(ROOT / ".github/workflows/pr.yml")
    assert "pull_request" in workflow["on"]  # YAML 1.2, as GitHub reads it: `on` is a string
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    script = "\n".join(step.get("run", "") for step in steps)
    for command in ("make test", "dvc metrics diff", "dvc plots diff", "check_regression"):
        assert command in script
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in steps)


# (d) remote storage -------------------------------------------------------------------------------


@e2e
def test_push_clone_pull_is_up_to_date(committed: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(committed, repo, symlinks=True)
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    git(repo, "commit", "-q", "-am", "local remote")
    dvc(repo, "push")
    git(tmp_path, "clone", "-q", str(repo), "clone")
    clone = tmp_path / "clone"
    assert not (clone / "models/dae.pt").exists()
    dvc(clone, "pull")
    assert (clone / "models/dae.pt").read_bytes() == (repo / "models/dae.pt").read_bytes()
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    assert ran_stages(repro(clone).stdout) == []
