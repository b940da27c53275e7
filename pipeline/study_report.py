"""Stage `summarize` of the noise-level study (study/dvc.yaml): the spread over seeds at each
level, the train x test tables, and the study's page.

Reads `study` and `outputs` of study/params.yaml and metrics/study/runs/*.json (only the entries
the params name: a run left from a removed level is ignored). Writes metrics/study/summary.json
(per kind and training level: mean and std over seeds of the test MSE at that level; the
paired DAE - VAE and blind - DAE differences with 95% t-intervals over seeds),
metrics/study/curves.csv and cross.csv (plot data), report/study.md and report/study.png.
"""

import json
import statistics
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pipeline.pages import interval, num, save_png, t95, table
from pipeline.plumbing.cli import stage
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import publish, write_json, write_text
from pipeline.plumbing.study_params import Study, load_study

KINDS = ("dae", "vae")
LABELS = {"dae": "DAE", "vae": "VAE", "blind": "blind DAE", "noisy": "noisy input"}
PAIRS = {"dae_minus_vae": ("dae", "vae"), "blind_minus_dae": ("blind", "dae")}


@stage
def main() -> None:
    cfg = load_study()
    paths = cfg.outputs
    runs = read_runs(cfg)
    files = {k: getattr(paths, k) for k in ("summary", "curves", "cross", "page", "figure")}
    with publish("summarize", files=files) as out:
        summary, curves, cross = summarize(cfg, runs)
        write_json(out.summary, summary)
        write_text(out.curves, curves.to_csv(index=False, float_format="%.6f"))
        write_text(out.cross, cross.to_csv(index=False, float_format="%.6f"))
        write_text(out.page, page(cfg, summary, cross, Path(paths.figure).name))
        save_png(figure(curves, cross), out.figure)
    print(f"study: {len(runs)} runs -> {paths.summary}, {paths.page}")


def run_names(cfg: Study) -> list[str]:
    """The entries of study/dvc.yaml that `cfg` asks for (`<kind>-<level>-<seed>`)."""
    s = cfg.study
    names = [f"{k}-{lv}-{seed}" for k in KINDS for lv in s.levels for seed in s.seeds]
    return names + [f"dae-blind-{seed}" for seed in s.seeds]


def read_runs(cfg: Study) -> dict[str, dict]:
    folder = Path(cfg.outputs.runs)
    missing = [n for n in run_names(cfg) if not (folder / f"{n}.json").is_file()]
    if missing:
        raise PipelineError(f"summarize: no results for {', '.join(missing)} in {folder}; "
                            "run the whole study: `make study`")  # fmt: skip
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in run_names(cfg)}


def summarize(cfg: Study, runs: dict[str, dict]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """summary.json's content, the matched-level curves and the train x test table."""
    s = cfg.study

    def mse(kind: str, level: float, seed: int, test_level: float | None = None) -> float:
        name = f"dae-blind-{seed}" if kind == "blind" else f"{kind}-{level}-{seed}"
        return runs[name]["test"][str(level if test_level is None else test_level)]["mse"]

    summary: dict = {"n_seeds": len(s.seeds)}
    curves = []
    for level in s.levels:
        per_kind = {k: [mse(k, level, seed) for seed in s.seeds] for k in (*KINDS, "blind")}
        per_kind["noisy"] = [runs[f"dae-{level}-{seed}"]["test"][str(level)]["input_mse"]
                             for seed in s.seeds]  # fmt: skip
        row = {"noise_level": level}
        for kind, values in per_kind.items():
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.setdefault(kind, {})[str(level)] = {"mse": statistics.mean(values),
                                                        "mse_std": std}  # fmt: skip
            row |= {kind: statistics.mean(values), f"{kind}_std": std}
        for pair, (a, b) in PAIRS.items():
            diffs = [x - y for x, y in zip(per_kind[a], per_kind[b], strict=True)]
            summary.setdefault(pair, {})[str(level)] = t_interval(diffs)
        curves.append(row)
    cross = [
        {"kind": kind, "train_level": level,
         **{str(t): statistics.mean(mse(kind, level, seed, t) for seed in s.seeds)
            for t in s.test_levels}}
        for kind in (*KINDS, "blind") for level in (s.levels if kind != "blind" else ["blind"])
    ]  # fmt: skip
    return summary, pd.DataFrame(curves), pd.DataFrame(cross)


def t_interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% Student-t interval over seeds (the interval is 0 wide for one seed)."""
    mean = statistics.mean(values)
    n = len(values)
    half = t95(n - 1) * statistics.stdev(values) / n**0.5 if n > 1 else 0.0
    return {"mse": mean, "mse_lo": mean - half, "mse_hi": mean + half}


def winner(diff: dict[str, float]) -> str:
    """Who has the lower MSE by a DAE - VAE interval: one side of 0, or neither."""
    if diff["mse_hi"] < 0:
        return "DAE"
    return "VAE" if diff["mse_lo"] > 0 else "neither (interval spans 0)"


def findings(summary: dict, cross: pd.DataFrame | None = None) -> list[str]:
    """The study's answer in a few sentences, from `summary` and `cross` (the page and the
    README use them)."""
    diffs, n = summary["dae_minus_vae"], summary["n_seeds"]
    levels = list(diffs)
    by = {w: [lv for lv in levels if winner(diffs[lv]).startswith(w)] for w in ("DAE", "VAE", "n")}
    said = "; ".join(f"{'neither is sure' if w == 'n' else w} at {', '.join(lvs)}"
                     for w, lvs in by.items() if lvs)  # fmt: skip
    extra = {
        lv: 100 * (summary["blind"][lv]["mse"] / summary["dae"][lv]["mse"] - 1) for lv in levels
    }
    low, high = min(extra, key=extra.get), max(extra, key=extra.get)
    lines = [
        f"- Trained and tested at each noise level, the lower test MSE (95% t-interval of the "
        f"paired DAE - VAE difference over {n} seeds): {said}.",
        f"- One blind DAE for every level has {extra[low]:+.0f}% (at {low}) to {extra[high]:+.0f}% "
        f"(at {high}) the MSE of the DAE trained at the level itself.",
    ]
    if cross is not None:  # the middle training level's models, tested at every level
        mid = levels[len(levels) // 2]
        row = {k: cross[(cross.kind == k) & (cross.train_level.astype(str) == mid)].iloc[0]
               for k in ("dae", "vae")}  # fmt: skip
        tests = [c for c in cross.columns if c not in ("kind", "train_level")]
        ahead = [t for t in tests if row["vae"][t] < row["dae"][t]]
        again = [t for t in ahead if t in diffs and winner(diffs[t]) == "DAE"]
        said = (
            f"the VAE is ahead at test levels {', '.join(ahead)}" if ahead else "the DAE is ahead"
        )
        lines.append(
            f"- Without retraining (both trained at {mid}), {said}"
            + (f"; trained at {', '.join(again)} itself, the DAE is ahead again." if again else ".")
        )
    return lines


def page(cfg: Study, summary: dict, cross: pd.DataFrame, figure_name: str) -> str:
    """The study's page, every number from `summary` and `cross`."""
    s = cfg.study
    rows = []
    for level in map(str, s.levels):
        d = summary["dae_minus_vae"][level]
        b = summary["blind_minus_dae"][level]
        spread = [f"{num(summary[k][level]['mse'])} ± {num(summary[k][level]['mse_std'], 2)}"
                  for k in ("noisy", "dae", "vae", "blind")]  # fmt: skip
        rows.append([level, *spread, interval(d["mse"], d["mse_lo"], d["mse_hi"], 3),
                     winner(d), interval(b["mse"], b["mse_lo"], b["mse_hi"], 3)])  # fmt: skip
    header = ["level", *(LABELS[k] for k in ("noisy", "dae", "vae", "blind")),
              "DAE - VAE [95% CI]", "lower MSE", "blind - DAE [95% CI]"]  # fmt: skip
    tests = [c for c in cross.columns if c not in ("kind", "train_level")]
    cross_tables = "\n\n".join(
        f"**{LABELS[kind]}** (rows: training level; columns: test level)\n\n"
        + table(["trained at", *tests], [[str(level), *map(num, values)] for level, *values in
                                         cross[cross.kind == kind][["train_level", *tests]].values])
        for kind in (*KINDS, "blind")
    )  # fmt: skip
    return "\n".join([
        "# Noise-level study: DAE against VAE at every noise level",
        "",
        f"Each model trained at one noise level ({', '.join(map(str, s.levels))}) with "
        f"{len(s.seeds)} seeds ({', '.join(map(str, s.seeds))}), plus one **blind** DAE per seed "
        f"trained on levels drawn per image from {s.blind_levels[0]} to {s.blind_levels[1]}. "
        f"Budget: {s.train_size:,} training images, {s.epochs} epochs of batch {s.batch_size}, "
        f"{s.test_size:,} test "
        "images per level (study/params.yaml); the architectures are the default pipeline's. "
        "Regenerated by `make study`; the numbers come from metrics/study/summary.json.",
        "",
        *findings(summary, cross),
        "",
        f"![MSE against noise level]({figure_name})",
        "",
        "## Trained and tested at the same level",
        "",
        f"Test MSE, mean ± std over {len(s.seeds)} seeds; differences are paired by seed "
        "(same training sample and test noise), with a 95% t-interval over seeds.",
        "",
        table(header, rows),
        "",
        "## Every model at every test level (mean test MSE over seeds)",
        "",
        cross_tables,
        "",
    ])  # fmt: skip


def figure(curves: pd.DataFrame, cross: pd.DataFrame) -> Figure:
    """Left: matched-level MSE per kind with ±1 std bands over seeds. Right: each DAE tested
    away from its training level, and the blind DAE."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    x = curves.noise_level
    for kind in ("noisy", "dae", "vae", "blind"):
        mean, std = curves[kind], curves[f"{kind}_std"]
        style = "--" if kind == "noisy" else "-"
        left.plot(x, mean, marker="o", label=LABELS[kind], linestyle=style)
        left.fill_between(x, mean - std, mean + std, alpha=0.25)
    left.set(yscale="log", xlabel="noise level (train = test)", ylabel="test MSE",
             title="Trained at each level (bands: ±1 std over seeds)")  # fmt: skip
    left.legend()
    tests = [c for c in cross.columns if c not in ("kind", "train_level")]
    for _, row in cross[cross.kind.isin(["dae", "blind"])].iterrows():
        values = [row[t] for t in tests]
        label = "blind DAE" if row.kind == "blind" else f"DAE trained at {row.train_level}"
        right.plot([float(t) for t in tests], values, marker=".",
                   linewidth=2.5 if row.kind == "blind" else 1, label=label)  # fmt: skip
    right.set(yscale="log", xlabel="test noise level", ylabel="test MSE",
              title="Away from the training level (mean over seeds)")  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
