"""The noise-level study (study/dvc.yaml): its params are checked, its fan-out reruns only the
entries a change touches, the default pipeline never reruns for it, and its summary and page
agree with the runs (the tiny study in CI, and the committed study run)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

from pipeline.pages import parse_table
from pipeline.plumbing.config import ParamsError, parse_params
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.study_params import Study, load_study
from pipeline.plumbing.yamlio import read_yaml
from pipeline.study_report import page, read_runs, run_names, summarize, winner
from tests.helpers import (
    ROOT,
    TINY_STUDY,
    VENV_BIN,
    add_study,
    dvc,
    git,
    private_copy,
    ran_stages,
    repro,
    run,
    set_dotted,
    set_params,
    share,
)

e2e = pytest.mark.e2e
STUDY = "study/dvc.yaml"
TABLE = "## Trained and tested at the same level"
SLICES = ROOT / "scripts" / "study_slices.sh"


def study_cfg(changes: dict | None = None) -> Study:
    raw = set_dotted(read_yaml(ROOT / "study/params.yaml"), {**TINY_STUDY, **(changes or {})})
    return parse_params(raw, "study/params.yaml", schema=Study)


def status(repo: Path, target: str) -> dict:
    return json.loads(dvc(repo, "status", target, "--json").stdout or "{}")


# params ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"study.levels": [0.2, 0.4]}, "study.levels [0.4] must also be in study.test_levels"),
        ({"study.blind_levels": [0.5, 0.5]}, "expected low < high"),
        ({"study.seeds": [1, 1]}, "must not repeat"),
        ({"study.train_size": 59_990}, "exceeds the 60000 MNIST training images"),
        ({"study.epochs": 0}, "study.epochs:"),
        ({"study.epoch": 3}, "study.epoch: unknown key. Did you mean 'study.epochs'?"),
    ],
)
def test_bad_study_params_are_refused_naming_the_key(change: dict, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        study_cfg(change)
    assert "study/params.yaml has 1 invalid value" in str(err.value)
    assert message in str(err.value)


def test_the_committed_study_params_are_valid() -> None:
    cfg = load_study(ROOT / "study/params.yaml")
    assert len(cfg.study.seeds) >= 3 and len(cfg.study.levels) >= 5  # what the issue asks


# the summary, from runs ---------------------------------------------------------------------------


def fake_runs(cfg: Study, mse: dict[tuple[str, float], list[float]]) -> dict[str, dict]:
    """Runs whose test MSE at every level is `mse[(kind, train level)][seed index]`."""
    s = cfg.study
    runs = {}
    for name in run_names(cfg):
        kind, level, seed = name.rsplit("-", 2)
        key = ("blind" if level == "blind" else kind, None if level == "blind" else float(level))
        value = mse[key][s.seeds.index(int(seed))]
        test = {str(t): {"mse": value + t, "input_mse": t} for t in s.test_levels}
        runs[name] = {"kind": key[0], "train_level": level, "seed": int(seed), "test": test}
    return runs


def test_the_summary_gives_seed_mean_std_and_paired_t_intervals() -> None:
    cfg = study_cfg()  # levels 0.2, 0.6; seeds 1, 2
    mse = {("dae", 0.2): [0.01, 0.02], ("vae", 0.2): [0.03, 0.05],
           ("dae", 0.6): [0.05, 0.05], ("vae", 0.6): [0.04, 0.04],
           ("blind", None): [0.0, 0.0]}  # fmt: skip
    summary, curves, cross = summarize(cfg, fake_runs(cfg, mse))
    dae = summary["dae"]["0.2"]
    assert dae["mse"] == pytest.approx(0.2 + 0.015)  # tested at 0.2: value + 0.2
    assert dae["mse_std"] == pytest.approx(statistics.stdev([0.01, 0.02]))
    diff = summary["dae_minus_vae"]["0.2"]  # paired by seed: -0.02 and -0.03
    assert diff["mse"] == pytest.approx(-0.025)
    half = 12.706 * statistics.stdev([-0.02, -0.03]) / 2**0.5  # t(1 df) for 2 seeds
    assert (diff["mse_lo"], diff["mse_hi"]) == pytest.approx((-0.025 - half, -0.025 + half))
    assert winner(diff) == "neither (interval spans 0)"  # two seeds: too few to tell
    assert summary["dae_minus_vae"]["0.6"]["mse"] == pytest.approx(0.01)
    assert winner(summary["dae_minus_vae"]["0.6"]) == "VAE"  # no spread: the interval is 0 wide
    assert list(curves.noise_level) == [0.2, 0.6]
    assert curves.noisy.tolist() == pytest.approx([0.2, 0.6])
    assert set(cross.kind) == {"dae", "vae", "blind"} and len(cross) == 5


def test_the_study_page_table_equals_the_summary() -> None:
    cfg = study_cfg()
    mse = {("dae", 0.2): [0.01, 0.02], ("vae", 0.2): [0.03, 0.05], ("dae", 0.6): [0.05, 0.06],
           ("vae", 0.6): [0.04, 0.04], ("blind", None): [0.001, 0.002]}  # fmt: skip
    summary, _, cross = summarize(cfg, fake_runs(cfg, mse))
    rows = parse_table(page(cfg, summary, cross, "study.png"), TABLE)
    assert [r[0] for r in rows] == ["0.2", "0.6"]
    assert rows[0][2].startswith(f"{summary['dae']['0.2']['mse']:.4g} ± ")
    assert rows[1][3].startswith(f"{summary['vae']['0.6']['mse']:.4g} ± ")


def test_summarize_names_the_missing_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = study_cfg()
    runs = tmp_path / cfg.outputs.runs
    runs.mkdir(parents=True)
    (runs / "dae-0.2-1.json").write_text("{}")
    with pytest.raises(PipelineError) as err:
        read_runs(cfg)
    assert "no results for dae-0.2-2, dae-0.6-1," in str(err.value)
    assert "make study" in str(err.value)


# the committed study run -------------------------------------------------------------------------


def test_the_committed_study_summary_and_page_come_from_its_runs() -> None:
    cfg = load_study(ROOT / "study/params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        summary, _, cross = summarize(cfg, read_runs(cfg))
    committed = json.loads((ROOT / cfg.outputs.summary).read_text())
    assert committed == json.loads(json.dumps(summary))
    text = (ROOT / cfg.outputs.page).read_text()
    assert text == page(cfg, summary, cross, Path(cfg.outputs.figure).name)


# the tiny study with DVC -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studied(reproduced: Path, tmp_path_factory: pytest.TempPathFactory, mnist_mirror) -> Path:
    """A copy of the reproduced tiny project after `dvc repro study/dvc.yaml`."""
    repo = tmp_path_factory.mktemp("studied") / "repo"
    shutil.copytree(reproduced, repo, symlinks=True)
    add_study(repo)
    ran = ran_stages(repro(repo, STUDY, mirror=mnist_mirror[0]).stdout)
    assert sorted(ran) == sorted(
        [f"{STUDY}:train@{k}-{lv}-{s}" for k in ("dae", "vae") for lv in (0.2, 0.6) for s in (1, 2)]
        + [f"{STUDY}:blind@1", f"{STUDY}:blind@2", f"{STUDY}:summarize"]
    )
    return repo


@pytest.fixture
def studied_copy(studied: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`studied`."""
    return private_copy(studied, tmp_path)


@e2e
def test_the_study_writes_every_run_a_summary_and_its_page(studied: Path) -> None:
    cfg = study_cfg()
    runs = sorted(p.stem for p in (studied / cfg.outputs.runs).glob("*.json"))
    assert runs == sorted(run_names(cfg))
    summary = json.loads((studied / cfg.outputs.summary).read_text())
    assert set(summary) == {"n_seeds", "dae", "vae", "blind", "noisy", "dae_minus_vae",
                            "blind_minus_dae"}  # fmt: skip
    for level in ("0.2", "0.6"):
        d = summary["dae_minus_vae"][level]
        assert d["mse_lo"] <= d["mse"] <= d["mse_hi"]
    rows = parse_table((studied / cfg.outputs.page).read_text(), TABLE)
    assert [r[0] for r in rows] == ["0.2", "0.6"]
    assert (studied / cfg.outputs.figure).read_bytes()[:4] == b"\x89PNG"
    assert status(studied, STUDY) == {}


@e2e
def test_adding_a_level_runs_only_its_entries_and_the_summary(studied_copy: Path) -> None:
    set_params(studied_copy, {"study.levels": [0.2, 0.6, 0.9]}, "study/params.yaml")
    ran = ran_stages(repro(studied_copy, STUDY).stdout)
    new = [f"{STUDY}:train@{k}-0.9-{s}" for k in ("dae", "vae") for s in (1, 2)]
    assert sorted(ran) == sorted([*new, f"{STUDY}:summarize"])
    summary = json.loads((studied_copy / "metrics/study/summary.json").read_text())
    assert set(summary["dae"]) == {"0.2", "0.6", "0.9"}


@e2e
def test_study_params_never_touch_the_default_pipeline(studied_copy: Path) -> None:
    set_params(studied_copy, {"study.epochs": 2, "study.seeds": [1, 2, 3]}, "study/params.yaml")
    assert status(studied_copy, "dvc.yaml") == {}
    assert ran_stages(repro(studied_copy).stdout) == []


@e2e
def test_a_default_param_the_study_does_not_read_reruns_none_of_it(studied_copy: Path) -> None:
    set_params(studied_copy, {"evaluate.blur_sigma": 2.0})
    repro(studied_copy, "validate")  # params.yaml changed: validate reruns, same marker
    assert status(studied_copy, STUDY) == {}
    set_params(studied_copy, {"dae.channels": 6})  # the study trains the default architecture
    repro(studied_copy, "validate")
    stale = set(status(studied_copy, STUDY))
    dae_entries = {f"study/dvc.yaml:train@dae-{lv}-{s}" for lv in (0.2, 0.6) for s in (1, 2)}
    assert stale == dae_entries | {"study/dvc.yaml:blind@1", "study/dvc.yaml:blind@2"}


@e2e
def test_slices_run_apart_and_collected_give_the_one_machine_study(
    committed: Path, studied: Path, tmp_path: Path
) -> None:
    """scripts/study_slices.sh: two clones each run one seed's slice and push it as an
    experiment; a third collects both. Its runs and summary equal the study run in one go, and
    only `summarize` ran in the collecting clone."""
    dev = tmp_path / "dev"
    shutil.copytree(committed, dev, symlinks=True)
    add_study(dev)
    bare = share(dev, tmp_path, "the study, a DVC remote")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    for seed in (1, 2):  # two machines
        git(tmp_path, "clone", "-q", str(bare), f"slice-{seed}")
        run(["bash", str(SLICES), "slice", str(seed)], tmp_path / f"slice-{seed}", env=env)
    git(tmp_path, "clone", "-q", str(bare), "collect")
    collect = tmp_path / "collect"
    proc = run(["bash", str(SLICES), "collect", "1", "2"], collect, env=env)
    assert ran_stages(proc.stdout) == [f"{STUDY}:summarize"]
    cfg = study_cfg()
    runs = [Path(cfg.outputs.runs) / f"{name}.json" for name in run_names(cfg)]
    for path in [*runs, Path(cfg.outputs.summary)]:
        assert (collect / path).read_bytes() == (studied / path).read_bytes(), path
    assert status(collect, STUDY) == {}


def test_the_slice_script_refuses_a_bad_call(tmp_path: Path) -> None:
    for args in ([], ["slice"], ["slice", "1", "2"], ["collect"], ["deploy"]):
        proc = run(["bash", str(SLICES), *args], tmp_path, check=False)
        assert proc.returncode == 2 and "usage: study_slices.sh" in proc.stderr, args
