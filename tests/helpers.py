"""Helpers for the tests: tiny DVC projects, synthetic MNIST files, running git and DVC."""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.data import add_noise, save_split
from pipeline.plumbing.yamlio import read_yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "mnist"
VENV_BIN = Path(sys.executable).parent
PROJECT_FILES = [
    "pipeline",
    "dvc.yaml",
    "params.yaml",
    "regression.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]
MNIST_FILES = {
    "train-images-idx3-ubyte": (60_000, 28, 28),
    "train-labels-idx1-ubyte": (60_000,),
    "t10k-images-idx3-ubyte": (10_000, 28, 28),
    "t10k-labels-idx1-ubyte": (10_000,),
}


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as a gzipped IDX file, the format MNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as f:  # level 9 takes minutes
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_mnist(folder: Path, seed: int = 0) -> Path:
    """Four full-size MNIST-format files of random strokes and labels (not the real digits)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in MNIST_FILES.items():
        if "labels" in name:
            array = rng.integers(0, 10, size=shape)
        else:
            array = (rng.random(shape) > 0.85) * rng.integers(128, 256, size=shape)
        write_idx_gz(folder / f"{name}.gz", array)
    return folder


# `set_dotted(tree, {"vae.latent_dim": 3})` and its DELETE value: one copy, in scripts/exp_args.py
_spec = importlib.util.spec_from_file_location("exp_args", ROOT / "scripts" / "exp_args.py")
assert _spec and _spec.loader
exp_args = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exp_args)
set_dotted = exp_args.set_dotted
DELETE = exp_args.DELETE


def set_params(repo: Path, changes: dict[str, Any], file: str = "params.yaml") -> None:
    """Set dotted keys (`vae.latent_dim`) in `repo/params.yaml`, or another params `file`
    (written as JSON: YAML 1.2)."""
    path = repo / file
    path.write_text(json.dumps(set_dotted(read_yaml(path), changes), indent=1) + "\n")


def run(cmd: list[str], cwd: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure show it in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_stage(
    cwd: Path,
    name: str,
    *args: str,
    env: dict[str, str | None] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """`python -m pipeline.<name>` in `cwd`, as its dvc.yaml `cmd` runs it; exit code not
    checked. The code is `cwd`'s own `pipeline/` when it has one (a project copy), else this
    checkout's. `env` adds variables to the environment (None removes one)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    cmd = [str(VENV_BIN / "python"), "-m", f"pipeline.{name}", *args]
    return run(cmd, cwd, check=False, env=environ, timeout=timeout)


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["git", *args], repo, check=check)


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], repo, check=check)


def ran_stages(output: str) -> list[str]:
    """Stage names `dvc repro` actually ran, from its "Running stage 'x':" lines."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def new_project(
    dest: Path,
    mirror: tuple[Path, bool],
    params: dict[str, Any] | None = None,
    source: Path = ROOT,
) -> Path:
    """A git + DVC repo at `dest` holding a copy of the project with tiny params, committed.

    The project files are copied from `source` (another tiny project gives the same code even
    while this checkout is being edited). With a synthetic mirror the official MD5s cannot
    match, so the raw files are placed where `download` writes them and that stage is
    committed instead of run (after `validate`, whose output it depends on).
    """
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    set_params(dest, {**TINY, **(params or {})})
    git(dest, "init", "-q", "-b", "main")
    folder, official = mirror
    if not official:
        raw = dest / "data" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in MNIST_FILES:
            shutil.copyfile(folder / f"{name}.gz", raw / f"{name}.gz")
            with gzip.open(folder / f"{name}.gz") as f:
                (raw / name).write_bytes(f.read())
        dvc(dest, "repro", "validate")  # data/params.ok, a dependency of `download`
        dvc(dest, "commit", "-f", "download")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "tiny project")
    return dest


def private_copy(repo: Path, tmp_path: Path) -> Path:
    """A copy of a shared tiny project (git history and DVC cache included) to change freely."""
    dest = tmp_path / "repo"
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def share(repo: Path, root: Path, message: str) -> Path:
    """What a team's project has: `repo`'s changes committed with a local DVC remote
    (`root/store`, the default, holding every output) and pushed to a bare git origin
    (`root/origin.git`, branch main). Returns the origin, to clone as a teammate would."""
    dvc(repo, "remote", "add", "-d", "store", str(root / "store"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    dvc(repo, "push")
    bare = root / "origin.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return bare


def add_study(repo: Path) -> None:
    """The noise-level study (study/dvc.yaml, study/params.yaml with TINY_STUDY) in `repo`.
    Tiny projects leave it out otherwise: an unrun study would make a plain `dvc pull`,
    `dvc checkout` or `dvc status` report its missing models."""
    (repo / "study").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / "study" / name, repo / "study" / name)
    set_params(repo, TINY_STUDY, "study/params.yaml")


def repro(repo: Path, *args: str, mirror: Path | None = None, check: bool = True):
    """`dvc repro` in `repo` with MNIST_MIRROR pointing at `mirror`."""
    env = {**os.environ, **({"MNIST_MIRROR": str(mirror)} if mirror else {})}
    return run([str(VENV_BIN / "dvc"), "repro", *args], repo, check=check, env=env)


# ------------------------------------------------ files, and tiny folders for in-process stages


def file_hashes(root: Path, paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file at or under `paths`, by its path relative to `root`."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in files
        if f.is_file()
    }


def temporaries(root: Path) -> list[Path]:
    """Leftovers of interrupted `publish` calls (`.<name>.tmp-*`), outside .git and .dvc."""
    found = root.rglob(".*.tmp-*")
    return [p for p in found if p.relative_to(root).parts[0] not in (".git", ".dvc")]


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i path` for the block (skips the test where chattr is unavailable or refused)."""
    try:
        proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("chattr is not installed")
    if proc.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


DEFAULT_PARAMS = read_yaml(ROOT / "params.yaml")
NOISY_DIR = Path(DEFAULT_PARAMS["paths"]["noisy"])
# The one tiny configuration, for `dvc repro` in a temporary project and for stages run in a
# folder: seconds per stage on one thread; `device: cpu` so results do not depend on the
# machine having a GPU.
TINY: dict[str, Any] = {
    "device": "cpu",
    "data.train_size": 64,
    "data.val_size": 32,
    "data.test_size": 40,
    "dae.epochs": 1,
    "dae.batch_size": 16,
    "dae.channels": 4,
    "vae.epochs": 1,
    "vae.batch_size": 16,
    "vae.channels": 4,
    "vae.latent_dim": 3,
    "vae.kl_warmup_epochs": 0,
    "classifier.epochs": 1,
    "classifier.batch_size": 16,
    "classifier.channels": 4,
    "evaluate.batch_size": 20,
    "evaluate.noise_levels": [0.0, 0.5],
    "plot.n_digits": 10,
    "plot.n_worst": 3,
    "plot.n_prior_samples": 4,
}
# The study's tiny budget (study/params.yaml), with TINY's architectures: 2 x 2 x 2 + 2 models.
TINY_STUDY: dict[str, Any] = {
    "study.levels": [0.2, 0.6],
    "study.seeds": [1, 2],
    "study.test_levels": [0.0, 0.2, 0.6, 0.9],
    "study.train_size": 64,
    "study.val_size": 32,
    "study.test_size": 40,
    "study.epochs": 1,
    "study.batch_size": 16,
}


def raw_params(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The project's params.yaml as a mapping, with TINY and then `changes` applied."""
    return set_dotted(copy.deepcopy(DEFAULT_PARAMS), {**TINY, **(changes or {})})


def write_params(folder: Path, changes: dict[str, Any] | None = None) -> None:
    """params.yaml for a stage run in `folder` (JSON: valid YAML 1.2, as DVC reads it)."""
    (folder / "params.yaml").write_text(json.dumps(raw_params(changes), indent=1))


def tiny_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean uint8 N x 28 x 28 random strokes, labels cycling through 0-9)."""
    gen = torch.Generator().manual_seed(seed)
    ink = torch.randint(128, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
    clean = torch.where(torch.rand(n, 28, 28, generator=gen) > 0.8, ink, 0).to(torch.uint8)
    return clean, torch.arange(n) % 10


def write_splits(folder: Path, sizes: dict[str, int] | None = None) -> None:
    """data/noisy/{train,val,test}.pt under `folder`, written by `save_split`."""
    noisy_dir = folder / NOISY_DIR
    noisy_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate((sizes or {"train": 64, "val": 32, "test": 40}).items()):
        clean, labels = tiny_images(n, seed=10 + i)
        gen = torch.Generator().manual_seed(20 + i)
        noisy = add_noise(clean.float() / 255, "gaussian", 0.5, True, gen)
        save_split(noisy_dir / f"{name}.pt", clean, noisy, labels)


def run_main(main: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call a stage's decorated `main(argv)` in-process: (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor record of a torch file: bit rot that
    leaves the zip readable (torch checks no CRC), which only a checksum can see."""
    with zipfile.ZipFile(path) as archive:
        records = [m for m in archive.infolist() if "/data/" in m.filename]
    record = max(records, key=lambda m: m.file_size)
    data = bytearray(path.read_bytes())
    header = data[record.header_offset : record.header_offset + 30]  # the local file header
    start = record.header_offset + 30 + int.from_bytes(header[26:28], "little")
    start += int.from_bytes(header[28:30], "little")  # name and extra field lengths
    data[start + record.file_size // 2] ^= 0x01
    path.write_bytes(data)
