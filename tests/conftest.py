"""Shared fixtures: an isolated environment, an MNIST mirror, and a reproduced tiny project.

Nothing here reads the machine's git/DVC configuration or writes outside pytest's temporary
folders. The MNIST mirror is `$MNIST_MIRROR`, else `../shared/mnist` beside the project, else
synthetic IDX files (then the `download` stage is committed by hand, see `new_project`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    MNIST_FILES,
    SHARED_MNIST,
    VENV_BIN,
    git,
    new_project,
    private_copy,
    repro,
    synthetic_mnist,
)


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Own HOME, git identity and config, DVC config and site cache; analytics off; no make
    variables of the `make` that started pytest."""
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text("")
    env = {
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Pipeline Tests",
        "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "Pipeline Tests",
        "GIT_COMMITTER_EMAIL": "tests@example.invalid",
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        # One torch thread per process: stages run side by side in tests, and results are
        # bit-identical only for the same thread count (see README, Determinism).
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("DVCLIVE_TEST", raising=False)
        for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # `make test VENV=...`
            mp.delenv(key, raising=False)  # would reach the Makefile dry runs of the tests
        yield


@pytest.fixture(scope="session")
def mnist_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(folder holding the four .gz files, whether they are the official ones)."""
    env = os.environ.get("MNIST_MIRROR")
    if env and Path(env).is_dir():
        return Path(env), True
    if all((SHARED_MNIST / f"{name}.gz").exists() for name in MNIST_FILES):
        return SHARED_MNIST, True
    return synthetic_mnist(tmp_path_factory.mktemp("synthetic-mnist")), False


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory, mnist_mirror) -> Path:
    """A tiny project after one full `dvc repro` (shared: copy it before changing it)."""
    repo = new_project(tmp_path_factory.mktemp("reproduced") / "repo", mnist_mirror)
    repro(repo, mirror=mnist_mirror[0])
    return repo


@pytest.fixture(scope="session")
def committed(reproduced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of :func:`reproduced` with its results committed on main (shared: copy it)."""
    repo = tmp_path_factory.mktemp("committed") / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "reproduced results")
    return repo


@pytest.fixture
def reproduced_copy(reproduced: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`reproduced` (git history and DVC cache included)."""
    return private_copy(reproduced, tmp_path)


@pytest.fixture
def torch_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread (tiny ops gain nothing from more, and results are then bit-identical)
    and CUBLAS_WORKSPACE_CONFIG; torch's thread count and determinism switch, which the stages
    set process-wide, are restored afterwards."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
