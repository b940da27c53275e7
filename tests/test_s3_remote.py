"""An S3 DVC remote, for real: push, fresh clone, pull, clean status, nothing rerun.

The S3 API is moto's server mode on loopback (`ThreadedMotoServer`, as DVC's own S3 plugin
tests use), reached through the `dvc-s3` plugin the `s3` extra installs. The remote is set up
the way README and docs/workflow.md tell users to: the bucket URL committed in .dvc/config, the
endpoint and the keys only in the git-ignored .dvc/config.local (`dvc remote modify --local`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, dvc, git, ran_stages, repro

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


@pytest.fixture(autouse=True)
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


@pytest.mark.e2e
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
