"""The later stages in-process, without DVC (so `make test-fast` exercises them): `train_dae`,
`train_vae`, `evaluate`, `plot` and `validate` run by their decorated `main([])` in a tiny folder;
their outputs, and their refusals before any heavy work."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from pipeline import evaluate, plot, train_dae, train_vae, validate
from pipeline.config import load_params
from pipeline.data import load_split
from pipeline.models import load_model
from pipeline.paths import METRICS_DIR, MODELS_DIR, NOISY_DIR, PARAMS_OK, PLOTS_DIR
from tests.helpers import immutable, temporaries, write_params, write_splits
from tests.test_runtime import snapshot

CPU = torch.device("cpu")
PNG = b"\x89PNG\r\n\x1a\n"
N_TEST = 40
LATENT_DIM = 3  # tests.helpers.TINY_FOLDER


def run_main(main, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call a stage's decorated `main([])`: (exit code, stdout, stderr)."""
    try:
        main([])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


pytestmark = pytest.mark.usefixtures("torch_state")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny project after train_dae, train_vae and evaluate (shared: tests copy it)."""
    root = tmp_path_factory.mktemp("trained")
    write_params(root, {"dae.epochs": 2, "vae.epochs": 2})
    write_splits(root, {"train": 64, "val": 32, "test": N_TEST})
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_num_threads(1)
        try:
            for stage in (train_dae, train_vae, evaluate):
                stage.main([])
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
    yield root


@pytest.fixture
def project(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of :func:`trained`, as the working folder."""
    dest = tmp_path / "project"
    shutil.copytree(trained, dest)
    monkeypatch.chdir(dest)
    return dest


def test_training_stages_publish_models_and_curves(project: Path) -> None:
    for kind in ("dae", "vae"):
        assert not load_model(MODELS_DIR / f"{kind}.pt", kind).training
        summary = json.loads((METRICS_DIR / "train" / kind / "metrics.json").read_text())
        assert set(summary) == {"train", "val"} and math.isfinite(summary["val"]["mse"])
        curve = METRICS_DIR / "train" / kind / "plots" / "metrics" / "val" / "mse.tsv"
        assert pd.read_csv(curve, sep="\t")["step"].tolist() == [1, 2]
    assert temporaries(project) == []


def test_evaluate_returns_every_output_by_file_name(project: Path) -> None:
    params = load_params()
    test = load_split(NOISY_DIR / "test.pt")
    dae, vae = load_model(MODELS_DIR / "dae.pt", "dae"), load_model(MODELS_DIR / "vae.pt", "vae")
    outputs = evaluate.evaluate(params, dae, vae, test, CPU)
    assert list(outputs) == list(evaluate.OUTPUTS)

    summary = outputs["test.json"]
    assert summary["n_images"] == N_TEST
    for method in ("noisy", "blur", "dae", "vae"):
        assert set(summary[method]) >= {"mse", "psnr", "ssim"}
        assert 0 < summary[method]["mse"] < 1 and math.isfinite(summary[method]["psnr"])
    noisy_mse = float(torch.mean((test.noisy.clamp(0, 1) - test.clean) ** 2))
    assert summary["noisy"]["mse"] == pytest.approx(noisy_mse, rel=1e-5)  # clipped noise

    kl = outputs["vae_kl.csv"]
    assert kl["dim"].tolist() == list(range(LATENT_DIM)) and (kl["kl"] >= 0).all()
    assert summary["vae"]["kl"] == pytest.approx(kl["kl"].sum(), rel=1e-5)
    active = int((kl["kl"] > evaluate.ACTIVE_KL_NATS).sum())
    assert summary["vae"]["active_dims"] == active

    per_digit = outputs["per_digit.csv"]
    assert list(per_digit.columns) == ["digit", "noisy", "blur", "dae", "vae"]
    assert per_digit["digit"].tolist() == list(range(10)) and per_digit.notna().all().all()

    robustness = outputs["robustness.csv"]
    assert robustness["noise_level"].tolist() == params.evaluate.noise_levels == [0.0, 0.5]
    assert robustness["noisy"].iloc[0] == 0.0  # no noise: the input is the clean image
    assert robustness["noisy"].iloc[1] > 0


def test_evaluate_main_writes_the_same_metrics_again(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [METRICS_DIR / name for name in evaluate.OUTPUTS]
    first = {path: path.read_bytes() for path in names}
    for path in names:
        path.unlink()
    code, out, err = run_main(evaluate.main, capsys)
    assert (code, err) == (0, "")
    assert {path: path.read_bytes() for path in names} == first  # deterministic
    metrics = json.loads((METRICS_DIR / "test.json").read_text())
    assert metrics["n_images"] == N_TEST and set(metrics["vae"]) >= {"kl", "active_dims"}
    printed = {line.split(":")[0].strip() for line in out.splitlines()}
    assert printed == {"noisy", "blur", "dae", "vae"}
    header = (METRICS_DIR / "robustness.csv").read_text().splitlines()[0]
    assert header == "noise_level,noisy,blur,dae,vae"
    assert temporaries(project) == []


def test_plot_main_draws_every_figure(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = plot.draw(load_params())
    assert len(figures) == len(plot.OUTPUTS) and all(isinstance(f, Figure) for f in figures)
    code, _, err = run_main(plot.main, capsys)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in PLOTS_DIR.iterdir()) == sorted(plot.OUTPUTS)
    for name in plot.OUTPUTS:
        data = (PLOTS_DIR / name).read_bytes()
        assert data[:8] == PNG and len(data) > 2000, name
    assert temporaries(project) == []


def test_evaluate_refuses_an_immutable_output_before_loading_anything(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate, "load_split", lambda *a: pytest.fail("evaluate did the work"))
    before = snapshot(project)
    blocked = METRICS_DIR / "per_digit.csv"
    with immutable(blocked):
        code, out, err = run_main(evaluate.main, capsys)
        assert temporaries(project) == []
    assert code == 1 and out == ""
    assert err.startswith(f"error: cannot write {blocked}: ") and err.count("\n") == 1
    assert snapshot(project) == before  # metrics/test.json included


@pytest.mark.parametrize("stage", [evaluate, plot], ids=["evaluate", "plot"])
def test_a_vae_file_given_as_the_dae_is_refused_naming_it(
    project: Path, capsys: pytest.CaptureFixture[str], stage
) -> None:
    if stage is plot:
        assert run_main(plot.main, capsys)[0] == 0  # previous plots, to be kept
    shutil.copyfile(MODELS_DIR / "vae.pt", MODELS_DIR / "dae.pt")
    before = snapshot(project)
    code, _, err = run_main(stage.main, capsys)
    assert code == 1
    assert err.startswith(f"error: {MODELS_DIR / 'dae.pt'} holds a 'vae' model")
    assert "dvc repro train_dae" in err and "Traceback" not in err
    assert snapshot(project) == before
    assert temporaries(project) == []


def test_validate_writes_params_ok_once_and_refuses_bad_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    assert run_main(validate.main, capsys) == (0, "params.yaml is valid\n", "")
    assert PARAMS_OK.read_text() == validate.OK_TEXT
    stamp = PARAMS_OK.stat().st_mtime_ns
    assert run_main(validate.main, capsys)[0] == 0
    assert PARAMS_OK.stat().st_mtime_ns == stamp  # unchanged: DVC sees the same output

    write_params(tmp_path, {"vae.latent_dim": 100_000})
    code, out, err = run_main(validate.main, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: params.yaml has 1 invalid value(s):")
    assert "vae.latent_dim" in err and "1024" in err
