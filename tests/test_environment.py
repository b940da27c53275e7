"""The environment: requirements/lock.txt against pyproject.toml and against this venv, and
what `make setup` and `make lint` run (dry runs: PyTorch's index cannot be reached from here).

`scripts/lock.py check` is what `make lint` runs; it works offline from the two files, so each
way of getting them out of sync is planted in a copy and must be named.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT, VENV_BIN

LOCK = ROOT / "requirements" / "lock.txt"


def load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_script"] = module
    spec.loader.exec_module(module)
    return module


lock = load_lock_module()


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """Private copies of (pyproject.toml, requirements/lock.txt) to break."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(LOCK, tmp_path / "lock.txt")
    return tmp_path / "pyproject.toml", tmp_path / "lock.txt"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_committed_lock_matches_pyproject() -> None:
    assert lock.check() == []


def test_the_venv_is_the_locked_environment() -> None:
    assert lock.check_installed() == []


def test_lock_pins_the_whole_environment_with_hashes() -> None:
    _, entries = lock.parse_lock(LOCK.read_text())
    names = {entry.name for entry in entries}
    # transitive packages that used to float, and the extras' plugins
    for name in ("dvc-data", "scmrepo", "dulwich", "fsspec", "dvc-s3", "dvc-gs", "s3fs", "moto"):
        assert name in names
    assert len(entries) > 150
    assert all(entry.hashes and re.fullmatch(r"[\w.+!-]+", entry.version) for entry in entries)
    torch = next(entry for entry in entries if entry.name == "torch")
    assert torch.version == "2.14.1"


def test_check_runs_offline_in_a_second() -> None:
    """`make lint`'s check: the CLI with no network (no resolver is involved)."""
    proc = subprocess.run(
        [str(VENV_BIN / "python"), str(ROOT / "scripts/lock.py"), "check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "matches pyproject.toml" in proc.stdout


def test_a_changed_pin_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    edit(pyproject, '"tqdm==4.70.1"', '"tqdm==4.71.0"')
    problems = lock.check(pyproject, lockfile)
    assert any("tqdm==4.71.0" in p and "tqdm==4.70.1" in p for p in problems), problems
    assert problems[-1].endswith("run `make lock`")


def test_a_new_dependency_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    edit(pyproject, '"tqdm==4.70.1",', '"tqdm==4.70.1",\n    "rich-click==1.8.0",')
    problems = lock.check(pyproject, lockfile)
    assert any("rich-click" in p and "no rich-click" in p for p in problems), problems


def test_a_new_extra_dependency_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    edit(pyproject, 's3 = ["dvc-s3==3.3.0"]', 's3 = ["dvc-s3==3.3.0", "boto3-stubs==1.40.0"]')
    problems = lock.check(pyproject, lockfile)
    assert any("boto3-stubs" in p for p in problems), problems


def test_a_removed_dependency_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    edit(pyproject, '    "tqdm==4.70.1",\n', "")
    problems = lock.check(pyproject, lockfile)
    assert any("credits tqdm to pyproject.toml" in p for p in problems), problems


def test_an_unpinned_dependency_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    edit(pyproject, '"tqdm==4.70.1"', '"tqdm>=4.70"')
    problems = lock.check(pyproject, lockfile)
    assert any("tqdm>=4.70 is not pinned" in p for p in problems), problems


def test_a_hand_edited_lock_is_named(copies: tuple[Path, Path]) -> None:
    pyproject, lockfile = copies
    text = lockfile.read_text()
    # drop the hashes of one entry, and the header
    text = re.sub(r"(\nzc-lockfile==[^\n]*?) \\\n(    --hash=[^\n]*\n)+", r"\1\n", text)
    lockfile.write_text(text.replace("--generate-hashes ", ""))
    problems = lock.check(pyproject, lockfile)
    assert any("zc-lockfile" in p and "no --hash" in p for p in problems), problems
    assert any("header differs" in p for p in problems), problems


def test_cpu_variant_drops_torch_and_cuda_but_keeps_the_rest_hashed() -> None:
    text = lock.without_cuda()
    _, kept = lock.parse_lock(text)
    _, full = lock.parse_lock(LOCK.read_text())
    names = {entry.name for entry in kept}
    assert not names & {"torch", "torchvision", "triton"}
    assert not [name for name in names if name.startswith(("nvidia-", "cuda-"))]
    assert {"dvc", "torchmetrics", "numpy", "pydantic"} <= names
    assert len(kept) > 150 and all(entry.hashes for entry in kept)
    assert len(full) - len(kept) >= 15  # torch, torchvision, triton and the CUDA wheels


def dry_run(*args: str) -> str:
    """What `make <args>` would run (`make -n`)."""
    proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_setup_installs_the_lock_with_hashes_and_lint_checks_it() -> None:
    setup = dry_run("setup")
    assert "--require-hashes --no-deps -r requirements/lock.txt" in setup
    assert "-e ." in setup and "pip check" in setup
    assert "scripts/lock.py check" in dry_run("lint")


def test_make_setup_torch_cpu_takes_torch_from_the_cpu_index() -> None:
    setup = dry_run("setup", "TORCH=cpu")
    assert "--no-deps --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "scripts/lock.py cpu > .venv/lock-cpu.txt" in setup
    assert "--require-hashes --no-deps -r .venv/lock-cpu.txt" in setup
    pins = subprocess.run(
        [str(VENV_BIN / "python"), str(ROOT / "scripts/lock.py"), "cpu", "--pins"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pins.stdout.split() == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu"]
