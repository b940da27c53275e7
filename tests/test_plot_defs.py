"""The charts of `dvc plots show` / `dvc plots diff`: dvc.yaml's top-level plots and the
project's vega-lite templates in .dvc/plots/ (rendered for a look by scripts/render_plots.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, dvc

TEMPLATES_DIR = ROOT / ".dvc" / "plots"
BUILT_IN = {"linear", "simple", "smooth", "scatter", "scatter_jitter", "confusion"}
BUILT_IN |= {"confusion_normalized", "bar_horizontal", "bar_horizontal_sorted"}
TRAIN_LOG = re.compile(r"^metrics/train/(\w+)/plots/metrics/(train|val)/(\w+)\.tsv$")


def dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def top_level_plots() -> dict[str, dict[str, Any]]:
    return {name: spec for entry in dvc_yaml()["plots"] for name, spec in entry.items()}


def template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATES_DIR / f"{name}.json").read_text())


def y_files(spec: dict[str, Any]) -> list[str]:
    return list(spec["y"]) if isinstance(spec["y"], dict) else []


def encodings(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The `encoding` blocks of a vega-lite spec, layers included."""
    found = [spec["encoding"]] if "encoding" in spec else []
    for layer in spec.get("layer", []):
        found += encodings(layer)
    return found


def test_every_top_level_plot_has_a_title_axis_labels_and_a_known_template() -> None:
    plots = top_level_plots()
    assert plots
    for name, spec in plots.items():
        for key in ("title", "x_label", "y_label", "x", "y"):
            assert spec.get(key), f"{name}: no {key}"
        name_of = spec.get("template", "linear")
        assert name_of in BUILT_IN or (TEMPLATES_DIR / f"{name_of}.json").exists(), name


@pytest.mark.parametrize("name", sorted(p.stem for p in TEMPLATES_DIR.glob("*.json")))
def test_templates_fill_dvc_anchors_for_data_title_and_axis_titles(name: str) -> None:
    text = (TEMPLATES_DIR / f"{name}.json").read_text()
    spec = json.loads(text)
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v5")
    for anchor in ("DATA", "TITLE", "X", "Y", "X_LABEL", "Y_LABEL"):
        assert f"<DVC_METRIC_{anchor}>" in text, f"{name}: no {anchor} anchor"
    enc = spec["encoding"]
    assert enc["x"]["title"] == "<DVC_METRIC_X_LABEL>"
    assert enc["y"]["title"] == "<DVC_METRIC_Y_LABEL>"


def test_line_charts_colour_each_method_and_dash_each_revision() -> None:
    """Two revisions x four methods stay readable: colour = method, dash = revision."""
    plots = top_level_plots()
    assert plots["mse_vs_noise"]["y"] == {"metrics/robustness.csv": ["noisy", "blur", "dae", "vae"]}
    for name in ("epoch_lines", "lines_symlog"):
        enc = template(name)["encoding"]
        assert enc["color"]["field"] == "series" and enc["strokeDash"]["field"] == "rev"
        # `series` is the y column (the method) or, for several files, the file
        calc = template(name)["transform"][0]
        assert calc["as"] == "series" and "datum.field" in calc["calculate"]


def test_per_digit_and_kl_are_bars_in_numeric_order() -> None:
    plots = top_level_plots()
    for name in ("per_digit_mse", "vae_kl_per_dim"):
        spec = template(plots[name]["template"])
        assert spec["mark"]["type"] == "bar", name
        x = spec["encoding"]["x"]
        # x is categorical but sorted by its numeric value: 0, 1, 2, ..., 10, not 0, 1, 10, 2
        assert x["sort"]["field"] == "x_order", name
        assert {"calculate": "toNumber(datum['<DVC_METRIC_X>'])", "as": "x_order"} in spec[
            "transform"
        ]
    per_digit = template(plots["per_digit_mse"]["template"])["encoding"]
    assert per_digit["color"]["field"] == "series" and per_digit["opacity"]["field"] == "rev"
    assert plots["vae_kl_per_dim"]["x"] == "dim"
    assert plots["vae_kl_per_dim"]["y"] == {"metrics/vae_kl.csv": "kl"}


def test_one_training_chart_per_model_with_train_and_validation_loss_by_epoch() -> None:
    plots = top_level_plots()
    loss_charts: dict[str, set[str]] = {}
    for name, spec in plots.items():
        logs = [TRAIN_LOG.match(f) for f in y_files(spec)]
        if not any(logs):
            continue
        assert all(logs), f"{name} mixes training logs with other files"
        assert spec["x"] == "step" and spec["x_label"] == "epoch", name
        kinds = {m.group(1) for m in logs}
        if {m.group(3) for m in logs} == {"loss"}:
            assert len(kinds) == 1, f"{name}: a loss chart is for one model"
            loss_charts[kinds.pop()] = {m.group(2) for m in logs}
            assert spec["title"].startswith(name.split("_")[0].upper()), name
    assert loss_charts == {"dae": {"train", "val"}, "vae": {"train", "val"}}


def test_training_logs_are_not_also_per_file_plots() -> None:
    """Declared as stage `plots`, every TSV would get its own chart titled by its path."""
    for name, stage in dvc_yaml()["stages"].items():
        for entry in stage.get("plots", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            assert not path.startswith("metrics/train/"), f"stage {name} plots {path}"
    for kind in ("dae", "vae"):
        outs = dvc_yaml()["stages"][f"train_{kind}"]["outs"]
        paths = [e if isinstance(e, str) else next(iter(e)) for e in outs]
        assert f"metrics/train/{kind}/plots/metrics" in paths


def test_plots_output_folder_is_git_ignored() -> None:
    assert "dvc_plots/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.e2e
def test_rendered_specs_have_titles_axis_titles_and_no_raw_paths(reproduced_copy: Path) -> None:
    repo = reproduced_copy
    # The templates travel with the project (.dvc/plots/ is committed); bring them to this copy
    # in case the tiny project was made without them.
    shutil.copytree(TEMPLATES_DIR, repo / ".dvc" / "plots", dirs_exist_ok=True)
    shown = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown.get("errors")
    charts = {name: items[0] for name, items in shown["data"].items()}
    plots = top_level_plots()
    vega = {name for name, chart in charts.items() if chart["type"] == "vega"}
    assert vega == set(plots), "every curve comes from a titled top-level definition"
    for name, definition in plots.items():
        spec = charts[name]["content"]
        assert spec["title"]["text"] == definition["title"]
        assert spec["data"]["values"], name
        titles = {axis: enc[axis]["title"] for enc in encodings(spec) for axis in ("x", "y")}
        assert titles == {"x": definition["x_label"], "y": definition["y_label"]}, name
        text = json.dumps({k: v for k, v in spec.items() if k != "data"})
        assert "<DVC_METRIC" not in text and "metrics/train" not in text, name
    # one line per log file; the template labels them from DVC's shortened file names
    files = {row["filename"] for row in charts["dae_loss"]["content"]["data"]["values"]}
    assert files == {"train/loss.tsv", "val/loss.tsv"}
