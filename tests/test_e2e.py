"""End to end: the tiny pipeline runs under `dvc repro` and reruns only what a change touches."""

import json
from pathlib import Path

import pytest

from tests.helpers import dvc, ran_stages, repro, set_params

pytestmark = pytest.mark.e2e

ALL_STAGES = ["validate", "download", "make_noisy", "train_dae", "train_vae", "evaluate", "plot"]


def test_repro_writes_metrics_plots_and_models(reproduced: Path) -> None:
    metrics = json.loads((reproduced / "metrics/test.json").read_text())
    for method in ("noisy", "blur", "dae", "vae"):
        assert set(metrics[method]) >= {"mse", "psnr", "ssim"}
        assert 0 <= metrics[method]["mse"] < 1
    assert metrics["n_images"] == 128
    assert 0 <= metrics["vae"]["active_dims"] <= 4
    for png in ("denoised", "loss_curves", "mse_vs_noise", "vae_prior_samples"):
        assert (reproduced / f"plots/{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("dae", "vae"):
        assert (reproduced / f"models/{kind}.pt").stat().st_size > 0
        summary = json.loads((reproduced / f"metrics/train/{kind}/metrics.json").read_text())
        assert set(summary) == {"train", "val"} and summary["val"]["mse"] > 0  # last epoch
        curve = (reproduced / f"metrics/train/{kind}/plots/metrics/val/mse.tsv").read_text()
        assert curve.splitlines()[0] == "step\tmse" and curve.splitlines()[1].startswith("1\t")
    robustness = (reproduced / "metrics/robustness.csv").read_text().splitlines()
    assert robustness[0] == "noise_level,noisy,blur,dae,vae" and len(robustness) == 3


def test_noop_repro_runs_nothing(reproduced_copy: Path) -> None:
    assert ran_stages(repro(reproduced_copy).stdout) == []
    assert json.loads(dvc(reproduced_copy, "status", "--json").stdout) == {}


@pytest.mark.parametrize(
    ("change", "expected"),
    [  # the README's table (The pipeline)
        ({"vae.latent_dim": 3}, ["train_vae", "evaluate", "plot"]),
        ({"dae.lr": 0.001}, ["train_dae", "evaluate", "plot"]),
        ({"dae.fresh_noise": False}, ["train_dae", "evaluate", "plot"]),
        ({"dae.channels": 4}, ["train_dae", "evaluate", "plot"]),
        ({"noise.std": 0.3}, ALL_STAGES[2:]),  # everything but download
        ({"evaluate.blur_sigma": 2.0}, ["evaluate", "plot"]),
        ({"plot.n_digits": 5}, ["plot"]),
    ],
)
def test_a_param_change_reruns_exactly_its_stages(reproduced_copy, change, expected) -> None:
    """`validate` reruns first on any change of params.yaml; then exactly the table's stages."""
    set_params(reproduced_copy, change)
    ran = ran_stages(repro(reproduced_copy).stdout)
    assert ran[:1] == ["validate"], ran
    assert sorted(ran[1:]) == sorted(expected)


def test_a_params_edit_that_changes_no_value_reruns_only_validate(reproduced_copy) -> None:
    params = reproduced_copy / "params.yaml"
    params.write_text(params.read_text() + "# a comment changes no value\n")
    assert ran_stages(repro(reproduced_copy).stdout) == ["validate"]
    assert json.loads(dvc(reproduced_copy, "status", "--json").stdout) == {}
