"""The report page (stage `report`, report/README.md): its table equals metrics/test.json, its
headline and findings follow the numbers, and every image it shows exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.pages import parse_table
from pipeline.report import METHODS, METRICS, RESULTS_HEADING, cell, headline, robustness_findings
from tests.helpers import ROOT

e2e = pytest.mark.e2e


def check_table(page: Path, metrics_file: Path) -> None:
    """The page's results table, cell by cell, against the metrics file: the same formatting,
    and each shown number within rounding of the file's."""
    metrics = json.loads(metrics_file.read_text())
    rows = parse_table(page.read_text(), RESULTS_HEADING)
    expected = [(label, key) for label, key in METHODS if key in metrics]
    assert [r[0] for r in rows] == [label for label, _ in expected]
    for row, (_, key) in zip(rows, expected, strict=True):
        for shown, (metric, _, fmt, _) in zip(row[1:], METRICS, strict=True):
            assert shown == cell(metrics[key], metric, fmt), (key, metric)
            if metric in metrics[key]:
                number = float(shown.split()[0].rstrip("%")) / (100 if "%" in fmt else 1)
                assert number == pytest.approx(metrics[key][metric], abs=0.01, rel=0.001)


def test_the_committed_report_table_equals_metrics_test_json() -> None:
    check_table(ROOT / "report" / "README.md", ROOT / "metrics" / "test.json")


def test_every_image_of_the_committed_report_exists() -> None:
    page = ROOT / "report" / "README.md"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())
    assert len(links) >= 7
    for link in links:
        assert (page.parent / link).resolve().is_file(), link
    assert (page.parent / "study.md").is_file()  # the study's page, linked from this one


def metrics(**diffs: tuple[float, float, float]) -> dict:
    values = {"mse": 0.01, "psnr": 20.0, "ssim": 0.9, "accuracy": 0.97, "fd": 15.0}
    worse = {"mse": 0.02, "psnr": 19.0, "ssim": 0.8, "accuracy": 0.96, "fd": 40.0}
    diff = {}
    for key, (mean, lo, hi) in diffs.items():
        diff |= {key: mean, f"{key}_lo": lo, f"{key}_hi": hi}
    return {"dae": values, "vae": worse, "dae_minus_vae": diff}


def test_the_headline_names_the_winner_and_whether_its_interval_excludes_zero() -> None:
    lines = headline(metrics(mse=(-0.01, -0.012, -0.008), accuracy=(0.01, -0.002, 0.02)))
    by_metric = {re.match(r"- \*\*(.+?)\*\*", line)[1]: line for line in lines}
    assert by_metric["MSE"].startswith("- **MSE**: DAE (0.01000 against 0.02000")
    assert "the interval excludes 0" in by_metric["MSE"]
    assert "**the interval spans 0**" in by_metric["read right"]
    assert "no interval" in by_metric["feature distance"]  # no bootstrap for the distance
    lower_psnr = metrics()
    lower_psnr["dae"] = {**lower_psnr["dae"], "psnr": 18.0}
    assert "- **PSNR (dB)**: VAE" in "\n".join(headline(lower_psnr))


def test_the_robustness_findings_follow_the_curve() -> None:
    curve = pd.DataFrame({"noise_level": [0.0, 0.5, 0.9], "noisy": [0, 0.1, 0.2],
                          "blur": [0.01] * 3, "dae": [0.003, 0.01, 0.04],
                          "vae": [0.01, 0.014, 0.03]})  # fmt: skip
    lines = robustness_findings(curve)
    assert "MSE 0.00300" in lines[0] and "doing nothing scores 0" in lines[0]
    assert lines[1] == "- The VAE has the lower MSE at levels 0.9."
    curve["vae"] = 1.0
    assert robustness_findings(curve)[1] == "- The DAE has the lower MSE at every level."


@e2e
def test_repro_writes_the_report_with_the_metrics_table(reproduced: Path) -> None:
    check_table(reproduced / "report" / "README.md", reproduced / "metrics" / "test.json")
    for png in ("mse_vs_noise", "per_digit", "perception_distortion"):
        assert (reproduced / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
