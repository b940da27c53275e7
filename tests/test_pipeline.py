"""The DVC pipeline: the stage list and each stage's code dependencies, `dvc repro` of the tiny
project and what a change reruns, bad edits that stop before any output changes, the GPU
configuration, experiments, and the committed run of this checkout.

The DVC tests work in copies of the session's reproduced tiny project (conftest) and each runs
only what it changes; the queued sweep and the branch compared with main share one copy.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dvc.repo import Repo

from pipeline.__main__ import stage_names
from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import parse_params
from pipeline.plumbing.yamlio import parse_yaml, read_yaml
from tests.helpers import (
    DELETE,
    ROOT,
    TINY,
    VENV_BIN,
    dvc,
    file_hashes,
    git,
    immutable,
    new_project,
    ran_stages,
    repro,
    run,
    run_stage,
    set_params,
    synthetic_mnist,
)

e2e = pytest.mark.e2e
PACKAGE = ROOT / "pipeline"
STAGES = stage_names(str(ROOT / "dvc.yaml"))
GPU_CONFIG = ROOT / "configs" / "gpu.yaml"
EXP_ARGS = ROOT / "scripts" / "exp_args.py"
OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "dvc.lock")
METRICS = "metrics/test.json"
Edit = Callable[[Path], None]


def fingerprint(repo: Path) -> dict[str, str]:
    """SHA-256 of every file under data/, models/, metrics/, plots/ and of dvc.lock."""
    return file_hashes(repo, [repo / name for name in OUTPUT_ROOTS])


def output(proc) -> str:
    return proc.stdout + proc.stderr


def error_block(proc) -> str:
    """The stage's own `error: ...` message (with its indented lines), from DVC's output."""
    text = output(proc)
    assert "error: " in text, text
    return text[text.index("error: ") :]


def status(repo: Path) -> dict[str, Any]:
    return json.loads(dvc(repo, "status", "--json").stdout or "{}")


# the stage list and the code each stage depends on -----------------------------------------------


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """{stage: {"cmd", "deps", "outs"}} as DVC resolves dvc.yaml and study/dvc.yaml (matrix,
    ${paths.*}; the study's stages as `study/dvc.yaml:<name>`), read in a folder holding only
    those and their params files."""
    folder = tmp_path_factory.mktemp("resolved")
    for name in ("dvc.yaml", "params.yaml", "study/dvc.yaml", "study/params.yaml"):
        (folder / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, folder / name)
    Repo.init(str(folder), no_scm=True)
    with contextlib.chdir(folder), Repo(str(folder)) as repo:  # addressing is cwd-relative
        return {
            s.addressing: {
                "cmd": s.cmd,
                "deps": [d.def_path for d in s.deps],
                "outs": [o.def_path for o in s.outs],
            }
            for s in repo.index.stages
        }


def imported(path: Path) -> set[Path]:
    """The result-bearing modules (pipeline/*.py, not pipeline/plumbing/) `path` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            prefix = "pipeline." if node.module == "pipeline" else ""
            names |= {f"{prefix}{a.name}" for a in node.names} if prefix else {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    found = (PACKAGE / f"{n.split('.')[1]}.py" for n in names if re.fullmatch(r"pipeline\.\w+", n))
    return {p for p in found if p.is_file()}


def import_closure(script: Path) -> set[str]:
    """`script` and the result-bearing modules it imports, directly or through each other."""
    seen: set[Path] = set()
    todo = {script}
    while todo:
        seen |= todo
        todo = set().union(*(imported(p) for p in todo)) - seen
    return {p.relative_to(ROOT).as_posix() for p in seen}


@pytest.mark.slow
def test_the_stage_list_is_dvc_yaml_s_in_an_order_dvc_can_run(resolved) -> None:
    assert [name for name in resolved if ":" not in name] == STAGES
    made_by = {out: name for name, stage in resolved.items() for out in stage["outs"]}
    for i, name in enumerate(STAGES):
        upstream = {made_by[dep] for dep in resolved[name]["deps"] if dep in made_by}
        assert upstream <= set(STAGES[:i]), name
    listing = run([str(VENV_BIN / "python"), "-m", "pipeline"], ROOT).stdout
    assert [line.split()[0] for line in listing.splitlines() if line.startswith("  ")] == STAGES


def test_each_stage_lists_exactly_the_result_bearing_modules_it_imports(resolved) -> None:
    """A result-bearing module imported but not listed fails, and so does one listed but not
    imported; no plumbing module is a dependency."""
    for name, stage in resolved.items():
        module = re.fullmatch(r"python -m pipeline\.(\w+)( .*)?", stage["cmd"])
        assert module, stage["cmd"]
        listed = {dep for dep in stage["deps"] if dep.startswith("pipeline/")}
        assert listed == import_closure(PACKAGE / f"{module[1]}.py"), name


def test_no_default_stage_depends_on_a_study_output(resolved) -> None:
    """Else `dvc repro` would run the whole study first (report/study.md is linked, not a dep)."""
    study = [s for name, s in resolved.items() if name.startswith("study/")]
    study_outs = {o for s in study for o in s["outs"]}
    assert study_outs, "no study stages resolved"
    for name in STAGES:
        for dep in resolved[name]["deps"]:
            clash = [o for o in study_outs if dep == o or f"{dep}/" in o or f"{o}/" in dep]
            assert not clash, (name, dep, clash)


def test_no_plumbing_module_imports_a_result_bearing_one() -> None:
    for path in [PACKAGE / "__init__.py", *sorted((PACKAGE / "plumbing").glob("*.py"))]:
        assert imported(path) == set(), path.relative_to(ROOT)


# a full repro and what a change reruns ------------------------------------------------------------


@e2e
@pytest.mark.smoke
def test_repro_writes_metrics_plots_and_models(reproduced: Path) -> None:
    metrics = json.loads((reproduced / METRICS).read_text())
    for method in ("noisy", "blur", "dae", "vae"):
        assert set(metrics[method]) >= {"mse", "psnr", "ssim"}
        assert 0 <= metrics[method]["mse"] < 1
    assert metrics["n_images"] == TINY["data.test_size"]
    assert 0 <= metrics["vae"]["active_dims"] <= TINY["vae.latent_dim"]
    for png in ("denoised", "vae_prior_samples"):
        assert (reproduced / f"plots/{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("dae", "vae"):
        assert (reproduced / f"models/{kind}.pt").stat().st_size > 0
        summary = json.loads((reproduced / f"metrics/train/{kind}/metrics.json").read_text())
        assert set(summary) == {"train", "val"} and summary["val"]["mse"] > 0  # last epoch
        curve = (reproduced / f"metrics/train/{kind}/plots/metrics/val/mse.tsv").read_text()
        assert curve.splitlines()[0] == "step\tmse" and curve.splitlines()[1].startswith("1\t")
    robustness = (reproduced / "metrics/robustness.csv").read_text().splitlines()
    assert robustness[0] == "noise_level,noisy,blur,dae,vae"
    assert len(robustness) == 1 + len(TINY["evaluate.noise_levels"])


@e2e
def test_noop_repro_runs_nothing(reproduced_copy: Path) -> None:
    assert ran_stages(repro(reproduced_copy).stdout) == []
    assert status(reproduced_copy) == {}


@e2e
@pytest.mark.parametrize(
    ("change", "expected"),
    [  # the README's table (The pipeline); values differ from TINY's
        ({"vae.latent_dim": 2}, ["train@vae", "evaluate", "plot", "report"]),
        ({"dae.lr": 0.001}, ["train@dae", "evaluate", "plot", "report"]),
        ({"dae.fresh_noise": False}, ["train@dae", "evaluate", "plot", "report"]),
        ({"dae.channels": 6}, ["train@dae", "evaluate", "plot", "report"]),
        ({"noise.std": 0.3}, [s for s in STAGES if s not in ("validate", "download")]),
        ({"evaluate.blur_sigma": 2.0}, ["evaluate", "report"]),
        ({"classifier.epochs": 2}, ["classifier", "evaluate", "report"]),
        ({"plot.n_digits": 5}, ["plot", "report"]),
    ],
)
def test_a_param_change_reruns_exactly_its_stages(reproduced_copy, change, expected) -> None:
    """`validate` reruns first on any change of params.yaml; then exactly the table's stages."""
    set_params(reproduced_copy, change)
    ran = ran_stages(repro(reproduced_copy).stdout)
    assert ran[:1] == ["validate"], ran
    assert sorted(ran[1:]) == sorted(expected)


@e2e
def test_a_params_edit_that_changes_no_value_reruns_only_validate(reproduced_copy) -> None:
    params = reproduced_copy / "params.yaml"
    params.write_text(params.read_text() + "# a comment changes no value\n")
    assert ran_stages(repro(reproduced_copy).stdout) == ["validate"]
    assert status(reproduced_copy) == {}


@e2e
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("plumbing/cli.py", []),  # a docstring
        ("plumbing/config.py", []),
        ("metrics.py", ["evaluate", "plot"]),  # a comment: same outputs, so no `report`
        ("models.py", ["train@dae", "train@vae", "evaluate", "plot"]),
    ],
)
def test_a_code_edit_reruns_exactly_the_stages_that_import_it(
    reproduced_copy: Path, module: str, expected: list[str]
) -> None:
    path = reproduced_copy / "pipeline" / module
    text = path.read_text()
    if module.startswith("plumbing/"):
        assert text.startswith('"""'), module
        path.write_text('"""An edited docstring. ' + text[3:])
    else:
        path.write_text(text + "# an edited comment\n")
    assert set(status(reproduced_copy)) == set(expected)
    assert sorted(ran_stages(repro(reproduced_copy).stdout)) == sorted(expected)


# bad edits and failures keep every output -----------------------------------------------------


def params_edit(changes: dict) -> Edit:
    return lambda repo: set_params(repo, changes)


def empty(repo: Path) -> None:
    (repo / "params.yaml").write_text("")


INVALID_1 = "params.yaml has 1 invalid value(s)"
BAD_EDITS = [
    pytest.param(params_edit({"dae.lr": [1]}), [INVALID_1, "dae.lr:"], id="list-for-number"),
    pytest.param(
        params_edit({"data.timeout_s": DELETE}),
        [INVALID_1, "data.timeout_s: required key is missing"],
        id="missing-key",
    ),
    pytest.param(
        params_edit({"dae.lrr": 0.1}),
        [INVALID_1, "dae.lrr: unknown key. Did you mean 'dae.lr'?"],
        id="unknown-key",
    ),
]
BAD_SETS = [
    pytest.param("dae.lr=abc", [INVALID_1, "dae.lr: Input should be a valid number"], id="lr"),
    pytest.param("vae.latent_dim=-3", [INVALID_1, "vae.latent_dim:", "greater than 0"], id="dim"),
]


@pytest.fixture(scope="module")
def shared_copy(reproduced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the reproduced project for the bad-params cases, each of which puts
    params.yaml back as it found it."""
    repo = tmp_path_factory.mktemp("bad-params") / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    return repo


def assert_stopped_at_validate(repo: Path, proc, expected: list[str], before: dict) -> None:
    """Non-zero exit at `validate` with the project's message; every output untouched; after
    `git checkout params.yaml` (as the README says) nothing is left to do."""
    assert proc.returncode != 0, output(proc)
    assert ran_stages(proc.stdout) == ["validate"], output(proc)
    message = error_block(proc)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "Traceback" not in output(proc)
    assert fingerprint(repo) == before
    git(repo, "checkout", "params.yaml")
    assert status(repo) == {}
    assert ran_stages(repro(repo).stdout) == []
    assert fingerprint(repo) == before


@contextlib.contextmanager
def params_restored(repo: Path):
    """Put the committed params.yaml back after the block, whatever it did to it."""
    try:
        yield
    finally:
        git(repo, "checkout", "params.yaml")


@e2e
@pytest.mark.parametrize(("edit", "expected"), BAD_EDITS)
def test_a_bad_edit_stops_dvc_repro_at_validate_and_keeps_every_output(
    shared_copy: Path, edit: Edit, expected: list[str]
) -> None:
    repo = shared_copy
    before = fingerprint(repo)
    with params_restored(repo):
        edit(repo)
        proc = repro(repo, check=False)
        assert_stopped_at_validate(repo, proc, expected, before)


@e2e
@pytest.mark.parametrize("edit", [empty, params_edit({"paths": DELETE})], ids=["empty", "no-paths"])
def test_params_without_paths_stop_dvc_before_any_stage_and_keep_every_output(
    shared_copy: Path, edit: Edit
) -> None:
    """dvc.yaml takes its paths from params.yaml: DVC itself refuses to read the pipeline,
    naming the missing key, before `validate` or any other stage runs."""
    repo = shared_copy
    before = fingerprint(repo)
    with params_restored(repo):
        edit(repo)
        proc = repro(repo, check=False)
        assert proc.returncode != 0 and ran_stages(proc.stdout) == [], output(proc)
        assert "Could not find 'paths." in output(proc)
        assert fingerprint(repo) == before


@e2e
@pytest.mark.parametrize(("setting", "expected"), BAD_SETS)
def test_a_bad_exp_run_set_stops_at_validate_and_keeps_every_output(
    shared_copy: Path, setting: str, expected: list[str]
) -> None:
    repo = shared_copy
    before = fingerprint(repo)
    with params_restored(repo):
        proc = dvc(repo, "exp", "run", "-S", setting, check=False)
        # DVC leaves the bad value in the workspace's params.yaml
        assert git(repo, "diff", "--name-only").stdout.split() == ["params.yaml"]
        assert_stopped_at_validate(repo, proc, expected, before)


@e2e
@pytest.mark.parametrize(
    ("args", "change"),
    [
        pytest.param(["-s", "download"], {"data.timeout_s": [30]}, id="download"),
        pytest.param(["-s", "make_noisy"], {"noise.std": [0.5]}, id="make_noisy"),
        pytest.param(["--downstream", "make_noisy"], {"noise.std": [0.5]}, id="downstream"),
    ],
)
def test_a_repro_past_validate_refuses_a_bad_edit_and_keeps_the_data(
    reproduced_copy: Path, args: list[str], change: dict[str, Any]
) -> None:
    """Without `validate` first (`-s`, `--downstream`), the stage's own check refuses; DVC
    deletes neither data/MNIST nor data/noisy before it runs (`persist: true`)."""
    repo = reproduced_copy
    before = fingerprint(repo)
    set_params(repo, change)
    proc = repro(repo, *args, check=False)
    assert proc.returncode != 0, output(proc)
    assert ran_stages(proc.stdout) == [args[1]], output(proc)
    assert next(iter(change)) in error_block(proc)
    assert "Traceback" not in output(proc)
    assert fingerprint(repo) == before  # data/MNIST and data/noisy byte for byte


@e2e
@pytest.mark.parametrize("target", ["metrics/per_digit.csv", "metrics/vae_kl.csv"])
def test_an_unwritable_output_fails_evaluate_quickly_and_keeps_the_others(
    reproduced_copy: Path, target: str
) -> None:
    """The first and the last output: DVC deletes none of them first (`persist: true`),
    and the stage refuses before any work."""
    repo = reproduced_copy
    with immutable(repo / target):
        before = fingerprint(repo)
        start = time.monotonic()
        proc = repro(repo, "--single-item", "--force", "evaluate", check=False)
        elapsed = time.monotonic() - start
        assert proc.returncode != 0, output(proc)
        assert target in output(proc)
        assert elapsed < 60, f"took {elapsed:.0f} s to fail"
        assert fingerprint(repo) == before  # test.json and the other CSVs included

        direct = run_stage(repo, "evaluate")  # the stage's own check, without DVC
        assert direct.returncode == 1, output(direct)
        assert f"error: cannot write {target}: it is read-only or immutable" in direct.stderr
        assert fingerprint(repo) == before


@e2e
def test_evaluate_refuses_a_vae_model_in_place_of_the_dae(reproduced_copy: Path) -> None:
    repo = reproduced_copy
    dae = repo / "models" / "dae.pt"
    vae_bytes = (repo / "models" / "vae.pt").read_bytes()
    dae.unlink()  # a new file: a link into the DVC cache is never written through
    dae.write_bytes(vae_bytes)
    before = fingerprint(repo)

    proc = run_stage(repo, "evaluate")

    assert proc.returncode == 1, output(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in ("models/dae.pt", "'vae'", "dvc repro train@dae"):
        assert fragment in errors[0], errors[0]
    assert fingerprint(repo) == before


@e2e
def test_a_training_that_fails_under_dvc_keeps_the_previous_model_and_curves(
    reproduced_copy: Path,
) -> None:
    """A valid edit that fails at run time (the loss diverges): DVC deletes no output first
    (`persist: true`), and the stage puts nothing of its own in place."""
    repo = reproduced_copy
    before = fingerprint(repo)
    locked = read_yaml(repo / "dvc.lock")["stages"]["train@dae"]
    set_params(repo, {"dae.lr": 1e6})
    proc = repro(repo, "train@dae", check=False)
    assert proc.returncode != 0, output(proc)
    assert "dae training diverged" in output(proc)
    after = fingerprint(repo)
    del before["dvc.lock"], after["dvc.lock"]  # `validate` passed and recorded params.yaml
    assert after == before  # models/dae.pt, metrics/train/dae/ and every other output
    assert read_yaml(repo / "dvc.lock")["stages"]["train@dae"] == locked


@e2e
def test_new_project_with_a_synthetic_mirror_commits_validate_and_download(
    tmp_path: Path,
) -> None:
    mirror = synthetic_mnist(tmp_path / "mirror")
    repo = new_project(tmp_path / "repo", (mirror, False))
    assert (repo / "data/params.ok").is_file()
    assert json.loads(dvc(repo, "status", "--json", "validate", "download").stdout) == {}
    assert git(repo, "status", "--porcelain").stdout == ""


# the GPU configuration -------------------------------------------------------------------------


def test_gpu_config_applied_to_params_yaml_is_valid(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", params)
    run([str(VENV_BIN / "python"), str(EXP_ARGS), str(GPU_CONFIG), "--apply", str(params)], ROOT)
    applied = parse_params(read_yaml(params), source="params.yaml").model_dump()
    overrides = read_yaml(GPU_CONFIG)
    assert overrides
    for dotted, value in overrides.items():
        node = applied
        for key in dotted.split("."):
            node = node[key]
        assert node == value, dotted


def test_exp_args_prints_one_set_flag_per_gpu_key() -> None:
    printed = run([str(VENV_BIN / "python"), str(EXP_ARGS), str(GPU_CONFIG)], ROOT).stdout.split()
    flags, settings = printed[::2], printed[1::2]
    assert set(flags) == {"-S"} and len(flags) == len(settings)
    overrides = read_yaml(GPU_CONFIG)
    assert [s.split("=", 1)[0] for s in settings] == list(overrides)
    for setting in settings:  # as `dvc exp run -S` reads the value: YAML
        key, value = setting.split("=", 1)
        assert parse_yaml(value, key) == overrides[key], setting


@e2e
def test_gpu_config_trains_tiny_on_the_cpu(reproduced_copy: Path) -> None:
    """configs/gpu.yaml's architecture (levels 2, two residual blocks, fold 1, bf16) with
    tiny sizes on the CPU: both training stages run and save the configured models."""
    repo = reproduced_copy
    run([str(VENV_BIN / "python"), str(EXP_ARGS), str(GPU_CONFIG), "--apply", "params.yaml"], repo)
    tiny = {"epochs": 1, "batch_size": 32, "channels": 4}
    changes = {f"{model}.{key}": value for model in ("dae", "vae") for key, value in tiny.items()}
    set_params(repo, {"device": "cpu", **changes})
    assert read_yaml(repo / "params.yaml")["dae"]["precision"] == "bf16"  # bf16 on the CPU

    proc = repro(repo, "train@dae", "train@vae")

    assert ran_stages(proc.stdout) == ["validate", "train@dae", "train@vae"], proc.stdout
    specs = {
        kind: tensorfile.load(repo / f"models/{kind}.pt", "test", max_bytes=2**30)[0]["spec"]
        for kind in ("dae", "vae")
    }
    assert specs["dae"] == {
        "kind": "dae",
        "arch": "unet",
        "channels": 4,
        "levels": 2,
        "blocks": 2,
        "block": "residual",
        "fold": 1,
    }
    assert specs["vae"] == {"kind": "vae", "arch": "conv", "channels": 4, "latent_dim": 32}
    for kind in ("dae", "vae"):
        summary = json.loads((repo / f"metrics/train/{kind}/metrics.json").read_text())
        assert 0 < summary["val"]["mse"] < 1


# experiments: a queued sweep, and one of them as a branch compared with main --------------------

SWEEP = {0.3, 0.7}
QUEUE_TIMEOUT_S = 1800


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
    """A copy of the committed tiny project after a queued two-experiment `noise.std` sweep."""
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

    out = tmp_path / "plots-diff"
    dvc(repo, "plots", "diff", "main", "-o", str(out))
    page = (out / "index.html").read_text()
    for title in ("Test MSE vs noise level", "Validation MSE per epoch"):  # DVC's templates
        assert title in page, title
    for png in ("denoised", "vae_prior_samples"):  # the plot stage's images
        for rev in ("main", "workspace"):
            assert (out / "static" / f"{rev}_plots_{png}.png").exists()


# the committed run of this checkout ---------------------------------------------------------------

MISSING = ("deleted", "not in cache")  # what a clone lacks until `dvc pull`


def test_the_committed_run_matches_the_code_and_params(tmp_path: Path) -> None:
    """`dvc.lock` records the code, params and commands of this checkout: `dvc status` may
    only miss the large outputs (data, models) that a clone gets with `dvc pull`. DVC runs in
    a copy of the checkout's files that git sees (tracked, or new and not ignored)."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    checkout = tmp_path / "checkout"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    git(checkout, "init", "-q")
    stale = {}
    for stage, changes in status(checkout).items():
        for change in changes:
            if not isinstance(change, dict):
                stale[stage] = change  # e.g. "changed command"
                continue
            for kind, paths in change.items():
                bad = (
                    {p: s for p, s in paths.items() if s not in MISSING}
                    if kind != "changed params"
                    else paths
                )
                if kind in ("changed params", "changed deps", "changed outs") and bad:
                    stale[f"{stage}: {kind}"] = bad
    assert stale == {}, "dvc.lock is out of date; rerun `dvc repro` and commit it"
