"""Trust: a bad params edit stops at `validate` and changes no file; an output that cannot be
written, or a model of the wrong kind, fails with one message and keeps every result; the
GPU configuration (configs/gpu.yaml) is valid and trains, tiny, on the CPU.

The DVC tests work in copies of the session's reproduced tiny project, and each runs only
what it changes (the bad-params cases share one copy and run only `validate`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline.config import parse_params
from pipeline.yamlio import parse_yaml, read_yaml
from tests.helpers import (
    ROOT,
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
GPU_CONFIG = ROOT / "configs" / "gpu.yaml"
EXP_ARGS = ROOT / "scripts" / "exp_args.py"
OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "dvc.lock")
Edit = Callable[[Path], None]


def fingerprint(repo: Path) -> dict[str, str]:
    """SHA-256 of every file under data/, models/, metrics/, plots/ (metrics/train/ included),
    and of dvc.lock, by path relative to `repo`."""
    return file_hashes(repo, [repo / name for name in OUTPUT_ROOTS])


def output(proc) -> str:
    return proc.stdout + proc.stderr


def error_block(proc) -> str:
    """The stage's own `error: ...` message (with its indented lines), from DVC's output."""
    text = output(proc)
    assert "error: " in text, text
    return text[text.index("error: ") :]


def params_edit(changes: dict) -> Edit:
    return lambda repo: set_params(repo, changes)


def drop_line(key: str) -> Edit:
    """Delete the line of `key` (a key that appears once in params.yaml)."""

    def apply(repo: Path) -> None:
        path = repo / "params.yaml"
        text, n = re.subn(rf"^\s*{key}:.*\n", "", path.read_text(), flags=re.MULTILINE)
        assert n == 1, f"{key} is not on exactly one line"
        path.write_text(text)

    return apply


def empty(repo: Path) -> None:
    (repo / "params.yaml").write_text("")


INVALID_1 = "params.yaml has 1 invalid value(s)"
BAD_EDITS = [
    pytest.param(params_edit({"dae.lr": [1]}), [INVALID_1, "dae.lr:"], id="list-for-number"),
    pytest.param(
        drop_line("timeout_s"),
        [INVALID_1, "data.timeout_s: required key is missing"],
        id="missing-key",
    ),
    pytest.param(empty, ["params.yaml is empty"], id="empty-file"),
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
    repo = tmp_path_factory.mktemp("trust") / "repo"
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
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    assert ran_stages(repro(repo).stdout) == []
    assert fingerprint(repo) == before


@e2e
@pytest.mark.parametrize(("edit", "expected"), BAD_EDITS)
def test_a_bad_edit_stops_dvc_repro_at_validate_and_keeps_every_output(
    shared_copy: Path, edit: Edit, expected: list[str]
) -> None:
    repo = shared_copy
    before = fingerprint(repo)
    try:
        edit(repo)
        proc = repro(repo, check=False)
        assert_stopped_at_validate(repo, proc, expected, before)
    finally:
        git(repo, "checkout", "params.yaml")


@e2e
@pytest.mark.parametrize(("setting", "expected"), BAD_SETS)
def test_a_bad_exp_run_set_stops_at_validate_and_keeps_every_output(
    shared_copy: Path, setting: str, expected: list[str]
) -> None:
    repo = shared_copy
    before = fingerprint(repo)
    try:
        proc = dvc(repo, "exp", "run", "-S", setting, check=False)
        # DVC leaves the bad value in the workspace's params.yaml
        assert git(repo, "diff", "--name-only").stdout.split() == ["params.yaml"]
        assert_stopped_at_validate(repo, proc, expected, before)
    finally:
        git(repo, "checkout", "params.yaml")


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
    for fragment in ("models/dae.pt", "'vae'", "dvc repro train_dae"):
        assert fragment in errors[0], errors[0]
    assert fingerprint(repo) == before


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

    proc = repro(repo, "train_dae", "train_vae")

    assert ran_stages(proc.stdout) == ["validate", "train_dae", "train_vae"], proc.stdout
    specs = {
        kind: torch.load(repo / f"models/{kind}.pt", weights_only=True)["spec"]
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


# the test project itself ------------------------------------------------------------------------


@e2e
def test_new_project_with_a_synthetic_mirror_commits_validate_and_download(
    tmp_path: Path,
) -> None:
    mirror = synthetic_mnist(tmp_path / "mirror")
    repo = new_project(tmp_path / "repo", (mirror, False))
    assert (repo / "data/params.ok").is_file()
    assert json.loads(dvc(repo, "status", "--json", "validate", "download").stdout) == {}
    assert git(repo, "status", "--porcelain").stdout == ""


@e2e
def test_a_training_that_fails_under_dvc_keeps_the_previous_model_and_curves(
    reproduced_copy: Path,
) -> None:
    """A valid edit that fails at run time (the loss diverges): DVC deletes no output first
    (`persist: true`), and the stage puts nothing of its own in place."""
    repo = reproduced_copy
    before = fingerprint(repo)
    locked = read_yaml(repo / "dvc.lock")["stages"]["train_dae"]
    set_params(repo, {"dae.lr": 1e6})
    proc = repro(repo, "train_dae", check=False)
    assert proc.returncode != 0, output(proc)
    assert "dae training diverged" in output(proc)
    after = fingerprint(repo)
    del before["dvc.lock"], after["dvc.lock"]  # `validate` passed and recorded params.yaml
    assert after == before  # models/dae.pt, metrics/train/dae/ and every other output
    assert read_yaml(repo / "dvc.lock")["stages"]["train_dae"] == locked


MISSING = ("deleted", "not in cache")  # what a clone lacks until `dvc pull`


def test_the_committed_run_matches_the_code_and_params() -> None:
    """`dvc.lock` records the code, params and commands of this checkout: `dvc status` may
    only miss the large outputs (data, models) that a clone gets with `dvc pull`."""
    status = json.loads(dvc(ROOT, "status", "--json").stdout or "{}")
    stale = {}
    for stage, changes in status.items():
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
