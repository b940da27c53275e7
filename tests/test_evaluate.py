"""The `classifier`, `evaluate`, `plot` and `report` stages in-process, without DVC (so
`make test-fast` exercises them), in a tiny folder holding models trained by `train@dae`,
`train@vae` and `classifier`: what they compute and write (intervals, accuracy, feature
distance, the report page), and evaluate's refusal of non-finite metrics."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from pipeline import classifier, evaluate, plot, report, train
from pipeline.data import Split, load_split
from pipeline.judge import Classifier, load_classifier
from pipeline.models import Denoiser
from pipeline.plumbing.config import Params, load_params, parse_params
from pipeline.plumbing.errors import PipelineError
from pipeline.registry import load_model, lookup, save_model
from tests.helpers import (
    file_hashes,
    raw_params,
    run_main,
    temporaries,
    write_params,
    write_splits,
)

CPU = torch.device("cpu")
PNG = b"\x89PNG\r\n\x1a\n"
N_TEST = 40
LATENT_DIM = 3  # tests.helpers.TINY
PATHS = parse_params(raw_params()).paths
MODELS, NOISY = Path(PATHS.models), Path(PATHS.noisy)
METRICS = {key: Path(getattr(PATHS, key)) for key in ("test_metrics", "per_digit", "robustness",
                                                      "vae_kl")}  # fmt: skip
PLOTS = {key: Path(getattr(PATHS, key)) for key in ("denoised", "worst", "latent", "prior_samples")}
REPORT_KEYS = ("report", "report_mse_vs_noise", "report_per_digit", "report_perception")
REPORT = {key: Path(getattr(PATHS, key)) for key in REPORT_KEYS}


pytestmark = pytest.mark.usefixtures("torch_state")  # tests/conftest.py


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny project after train@dae, train@vae, classifier and evaluate (shared: tests copy
    it)."""
    root = tmp_path_factory.mktemp("evaluated")
    write_params(root)
    write_splits(root, {"train": 64, "val": 32, "test": N_TEST})
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_num_threads(1)
        try:
            train.main(["dae"])
            train.main(["vae"])
            classifier.main([])
            evaluate.main([])
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
    yield root


@pytest.fixture
def project(evaluated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of :func:`evaluated`, as the working folder."""
    dest = tmp_path / "project"
    shutil.copytree(evaluated, dest)
    monkeypatch.chdir(dest)
    return dest


def evaluate_inputs() -> tuple[Params, Split, Denoiser, Denoiser, Classifier]:
    """What `evaluate.evaluate` takes, as the stage loads it from the working folder."""
    dae, vae = load_model(MODELS / "dae.pt", "dae"), load_model(MODELS / "vae.pt", "vae")
    judge = load_classifier(MODELS / "classifier.pt")
    return load_params(), load_split(NOISY / "test.pt"), dae, vae, judge


def test_evaluate_returns_every_output_by_its_paths_key(project: Path) -> None:
    params, test, dae, vae, judge = evaluate_inputs()
    outputs = evaluate.evaluate(params, dae, vae, judge, test, CPU)
    assert list(outputs) == list(METRICS)

    summary = outputs["test_metrics"]
    assert summary["n_images"] == N_TEST
    for method in ("noisy", "blur", "dae", "vae"):
        assert set(summary[method]) >= {"mse", "psnr", "ssim", "accuracy", "fd"}
        assert 0 < summary[method]["mse"] < 1 and math.isfinite(summary[method]["psnr"])
        for metric in evaluate.METRICS:  # each mean inside its 95% interval
            lo, hi = summary[method][f"{metric}_lo"], summary[method][f"{metric}_hi"]
            assert lo <= summary[method][metric] <= hi, (method, metric)
        assert 0 <= summary[method]["accuracy"] <= 1 and summary[method]["fd"] >= 0
    assert set(summary["clean"]) == {"accuracy", "accuracy_lo", "accuracy_hi"}
    paired = summary["dae_minus_vae"]
    for metric in ("mse", "psnr", "ssim"):
        assert paired[metric] == pytest.approx(summary["dae"][metric] - summary["vae"][metric])
    noisy_mse = float(torch.mean((test.noisy.clamp(0, 1) - test.clean) ** 2))
    assert summary["noisy"]["mse"] == pytest.approx(noisy_mse, rel=1e-5)  # clipped noise

    kl = outputs["vae_kl"]
    assert kl["dim"].tolist() == list(range(LATENT_DIM)) and (kl["kl"] >= 0).all()
    assert summary["vae"]["kl"] == pytest.approx(kl["kl"].sum(), rel=1e-5)
    active = int((kl["kl"] > evaluate.ACTIVE_KL_NATS).sum())
    assert summary["vae"]["active_dims"] == active

    per_digit = outputs["per_digit"]
    assert list(per_digit.columns) == ["digit", "noisy", "blur", "dae", "vae"]
    assert per_digit["digit"].tolist() == list(range(10)) and per_digit.notna().all().all()

    robustness = outputs["robustness"]
    assert robustness["noise_level"].tolist() == params.evaluate.noise_levels == [0.0, 0.5]
    assert robustness["noisy"].iloc[0] == 0.0  # no noise: the input is the clean image
    assert robustness["noisy"].iloc[1] > 0


def test_evaluate_puts_each_set_of_images_through_the_classifier_once(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracy and feature distance share one pass of the clean images and of each method's
    outputs (the classifier was a third of evaluate's time when each ran its own), and the
    accuracy is still the classifier's reading of the outputs."""
    params, test, dae, vae, judge = evaluate_inputs()
    seen: list[int] = []
    forward = judge.forward
    monkeypatch.setattr(judge, "forward", lambda x: (seen.append(len(x)), forward(x))[1])
    summary = evaluate.evaluate(params, dae, vae, judge, test, CPU)["test_metrics"]
    assert sum(seen) == 5 * N_TEST  # clean, noisy, blur, DAE, VAE
    with torch.no_grad():
        read = judge.logits(dae(test.noisy)).argmax(1) == test.labels
    assert summary["dae"]["accuracy"] == pytest.approx(float(read.double().mean()))


def test_the_evaluate_stage_writes_the_same_metrics_again(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = {path: path.read_bytes() for path in METRICS.values()}
    for path in METRICS.values():
        path.unlink()
    code, out, err = run_main(evaluate.main, capsys)
    assert (code, err) == (0, "")
    assert {path: path.read_bytes() for path in METRICS.values()} == first  # deterministic
    metrics = json.loads(METRICS["test_metrics"].read_text())
    assert metrics["n_images"] == N_TEST and set(metrics["vae"]) >= {"kl", "active_dims"}
    printed = sorted(line.split(":")[0].strip() for line in out.splitlines())  # as test.json
    assert sorted(printed) == sorted(k for k, v in metrics.items() if isinstance(v, dict))
    assert {"noisy", "blur", "dae", "vae"} <= set(printed)  # one line per method
    header = METRICS["robustness"].read_text().splitlines()[0]
    assert header == "noise_level,noisy,blur,dae,vae"
    assert temporaries(project) == []


def test_the_plot_stage_draws_every_figure(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = plot.draw(load_params())
    assert list(figures) == list(PLOTS) and all(isinstance(f, Figure) for f in figures.values())
    code, _, err = run_main(plot.main, capsys)
    assert (code, err) == (0, "")
    folders = {path.parent for path in PLOTS.values()}
    written = sorted(p for folder in folders for p in folder.iterdir())
    assert written == sorted(PLOTS.values())
    for path in PLOTS.values():
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 2000, path
    assert temporaries(project) == []


def test_the_report_stage_writes_its_page_from_the_metrics(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(plot.main, capsys)[0] == 0  # the page links the plot stage's images
    code, out, err = run_main(report.main, capsys)
    assert (code, err) == (0, "") and "report/README.md" in out
    text = REPORT["report"].read_text()
    metrics = json.loads(METRICS["test_metrics"].read_text())
    assert f"| **DAE** | {report.cell(metrics['dae'], 'mse', '.5f')} |" in text
    assert f"{N_TEST} test images" in text
    for key in ("report_mse_vs_noise", "report_per_digit", "report_perception"):
        assert REPORT[key].read_bytes()[:8] == PNG
        assert f"({REPORT[key].name})" in text  # linked beside the page
    for key in ("denoised", "worst", "latent", "prior_samples"):
        assert f"(../{PLOTS[key]})" in text
    assert temporaries(project) == []


def test_a_model_with_nan_weights_is_refused_naming_it_and_nothing_is_written(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = load_model(MODELS / "dae.pt", "dae")
    with torch.no_grad():
        for weight in model.parameters():
            weight.fill_(math.nan)
    cfg = load_params().dae
    save_model(model, lookup("dae", cfg.arch).spec(cfg), MODELS / "dae.pt")
    before = file_hashes(project, [project])  # the previous metrics included
    code, out, err = run_main(evaluate.main, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: evaluate: dae gives non-finite ") and err.count("\n") == 1
    assert "mse" in err
    assert "`dvc repro -f train@dae`" in err and "nothing was written" in err
    assert file_hashes(project, [project]) == before
    assert temporaries(project) == []


@pytest.mark.parametrize(
    ("method", "rerun"), [("dae", "train@dae"), ("vae", "train@vae"), ("blur", None)]
)
def test_check_finite_names_the_method_and_the_stage_that_remakes_it(
    method: str, rerun: str | None
) -> None:
    good = {"mse": 0.01, "psnr": 20.0, "ssim": 0.9}
    evaluate.check_finite({"noisy": good, "dae": good, "vae": good, "blur": good, "n_images": 4})
    with pytest.raises(PipelineError) as info:
        evaluate.check_finite({"noisy": good, method: {**good, "psnr": math.inf}, "n_images": 4})
    message = str(info.value)
    assert message.startswith(f"evaluate: {method} gives non-finite psnr")
    assert (f"`dvc repro -f {rerun}`" in message) if rerun else ("retrain" not in message)
