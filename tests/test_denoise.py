"""The `denoise` command: a user's PNGs or .npy arrays through a trained model, at the workspace
or at an older git revision; bad inputs get one `error:` line, exit code 1, and no output."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dvc.repo import Repo
from PIL import Image

from pipeline import denoise
from pipeline.metrics import denoise_all
from pipeline.plumbing.config import load_params
from pipeline.registry import load_model, lookup, save_model
from tests.helpers import (
    DEFAULT_PARAMS,
    ROOT,
    VENV_BIN,
    dvc,
    git,
    private_copy,
    repro,
    run,
    run_main,
    set_params,
    share,
    tiny_images,
    write_params,
)

e2e = pytest.mark.e2e
N = 6


def png_bytes(image: torch.Tensor) -> bytes:
    """An uint8 C x H x W tensor (C = 1 or 3) as PNG file bytes."""
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if image.shape[0] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny project folder (params.yaml, models/{dae,vae}.pt) and N digit PNGs in `in/`."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    params = load_params()
    (tmp_path / "models").mkdir()
    for kind in ("dae", "vae"):
        cfg = getattr(params, kind)
        torch.manual_seed(0)
        entry = lookup(kind, cfg.arch)
        spec = entry.spec(cfg)
        save_model(entry.build(spec), spec, tmp_path / "models" / f"{kind}.pt")
    (tmp_path / "in").mkdir()
    clean, _ = tiny_images(N, seed=3)
    for i, image in enumerate(clean):
        (tmp_path / "in" / f"digit{i}.png").write_bytes(png_bytes(image.unsqueeze(0)))
    return tmp_path


def expected(kind: str, images: torch.Tensor, model: Path | None = None) -> np.ndarray:
    """What `evaluate`'s code computes for `images` (N x 28 x 28 uint8) with the saved model."""
    net = load_model(model or Path("models") / f"{kind}.pt", kind)
    return denoise_all(net, images.unsqueeze(1).float() / 255, 1000)[:, 0].numpy()


@pytest.mark.parametrize("kind", ["dae", "vae"])
def test_pngs_in_give_the_models_output(folder: Path, capsys, kind: str) -> None:
    code, out, err = run_main(denoise.main, capsys, "--model", kind, "in", "-o", "out.npy")
    assert (code, err) == (0, "") and f"{N} image(s)" in out
    clean, _ = tiny_images(N, seed=3)
    assert np.array_equal(np.load("out.npy"), expected(kind, clean))


def test_a_npy_stack_gives_one_png_per_image(folder: Path, capsys) -> None:
    clean, _ = tiny_images(N, seed=3)
    np.save("digits.npy", clean.numpy())
    code, _, err = run_main(denoise.main, capsys, "--model", "dae", "digits.npy", "-o", "pngs")
    assert (code, err) == (0, "")
    names = sorted(p.name for p in Path("pngs").iterdir())
    assert names == sorted(f"digits-{i}.png" for i in range(N))
    first = np.asarray(Image.open("pngs/digits-0.png"))
    want = np.round(expected("dae", clean)[0] * 255).astype(np.uint8)
    assert np.array_equal(first, want)


def bad_rgb(root: Path) -> list[str]:
    (root / "rgb.png").write_bytes(png_bytes(torch.zeros(3, 28, 28, dtype=torch.uint8)))
    return ["rgb.png"]


def bad_size(root: Path) -> list[str]:
    (root / "big.png").write_bytes(png_bytes(torch.zeros(1, 32, 32, dtype=torch.uint8)))
    return ["big.png"]


def truncated(root: Path) -> list[str]:
    data = png_bytes(torch.zeros(1, 28, 28, dtype=torch.uint8))
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    return ["cut.png"]


def empty_folder(root: Path) -> list[str]:
    (root / "empty").mkdir()
    return ["in", "empty"]


def bad_npy(root: Path) -> list[str]:
    np.save(root / "wide.npy", np.zeros((2, 28, 30), dtype=np.uint8))
    return ["wide.npy"]


def out_of_range(root: Path) -> list[str]:
    np.save(root / "hot.npy", np.full((2, 28, 28), 3.0, dtype=np.float32))
    return ["hot.npy"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (bad_rgb, "rgb.png: a PNG of mode RGB; expected 8-bit grayscale"),
        (bad_size, "big.png: a 32x32 image; the models take 28x28"),
        (truncated, "cut.png: not a readable PNG"),
        (empty_folder, "empty: the folder holds no .png files"),
        (lambda root: ["in", "missing.png"], "missing.png: no such file or folder"),
        (bad_npy, "wide.npy: a 28x30 image"),
        (out_of_range, "hot.npy: float32 values must be uint8, or floats in [0, 1]"),
    ],
)
def test_a_bad_input_is_one_error_and_nothing_is_written(folder, capsys, make, message) -> None:
    inputs = make(folder)
    code, out, err = run_main(denoise.main, capsys, "--model", "dae", *inputs, "-o", "out")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not Path("out").exists()


def test_a_model_file_of_the_other_kind_is_refused(folder: Path, capsys) -> None:
    shutil.copy("models/vae.pt", "models/dae.pt")
    code, _, err = run_main(denoise.main, capsys, "--model", "dae", "in", "-o", "out")
    assert code == 1 and "models/dae.pt" in err and "train@dae" in err
    assert not Path("out").exists()


def test_a_folder_with_files_is_not_overwritten(folder: Path, capsys) -> None:
    code, _, err = run_main(denoise.main, capsys, "--model", "dae", "in", "-o", "in")
    assert code == 1 and "in: exists and is not an empty folder" in err
    assert len(list(Path("in").iterdir())) == N


@e2e
def test_rev_uses_the_model_committed_at_that_revision(committed: Path, tmp_path: Path) -> None:
    """Two commits with different DAEs: `--rev HEAD~1` gives the first's output, no --rev the
    workspace's (the second)."""
    repo = private_copy(committed, tmp_path)
    old = tmp_path / "old-dae.pt"
    shutil.copy(repo / "models/dae.pt", old)
    set_params(repo, {"dae.lr": 0.0005})
    repro(repo, "train@dae")
    git(repo, "commit", "-q", "-am", "another DAE")
    clean, _ = tiny_images(N, seed=3)
    np.save(repo / "digits.npy", clean.numpy())
    new = repo / "models/dae.pt"
    assert old.read_bytes() != new.read_bytes()
    cli = [str(VENV_BIN / "python"), "-m", "pipeline.denoise"]
    run([*cli, "--model", "dae", "--rev", "HEAD~1", "digits.npy", "-o", "old.npy"], repo)
    run([*cli, "--model", "dae", "digits.npy", "-o", "new.npy"], repo)
    assert np.array_equal(np.load(repo / "old.npy"), expected("dae", clean, old))
    assert np.array_equal(np.load(repo / "new.npy"), expected("dae", clean, new))
    bad = run([*cli, "--model", "dae", "--rev", "no-such-rev", "digits.npy", "-o", "x.npy"],
              repo, check=False)  # fmt: skip
    assert bad.returncode == 1 and "at revision 'no-such-rev'" in bad.stderr
    assert dvc(repo, "status").returncode == 0


# the models as DVC artifacts -------------------------------------------------------------------


def test_both_models_are_dvc_artifacts_at_their_stage_outputs() -> None:
    with Repo(str(ROOT)) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]
    models = DEFAULT_PARAMS["paths"]["models"]
    assert set(artifacts) == {"dae", "vae"}
    for kind, artifact in artifacts.items():
        assert artifact.type == "model" and artifact.desc and kind in artifact.labels
        assert artifact.path == f"{models}/{kind}.pt"


@e2e
def test_dvc_artifacts_get_fetches_a_registered_version(committed: Path, tmp_path: Path) -> None:
    """A version is a git tag `<artifact>@v<semver>` (DVC's model registry, GTO's format);
    `dvc artifacts get` downloads that commit's model from the DVC remote."""
    repo = private_copy(committed, tmp_path)
    share(repo, tmp_path, "a DVC remote")
    git(repo, "tag", "-a", "dae@v1.0.0", "-m", "Registering version v1.0.0 of dae")
    out = tmp_path / "fetched.pt"
    dvc(tmp_path, "artifacts", "get", str(repo), "dae", "--rev", "v1.0.0", "-o", str(out))
    assert out.read_bytes() == (repo / "models/dae.pt").read_bytes()
