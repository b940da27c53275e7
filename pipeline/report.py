"""Stage `report`: the one page that answers "which denoiser wins, where, and how sure are we",
report/README.md (GitHub renders it), with its charts drawn from the metrics files.

Reads params `noise`, `evaluate.bootstrap_resamples`, `paths`; metrics/test.json,
metrics/robustness.csv, metrics/per_digit.csv, and links the plot stage's images. Writes
report/README.md, report/mse_vs_noise.png, report/per_digit.png and
report/perception_distortion.png. Every number on the page comes from those files; the study
has its own page (report/study.md, `make study`), linked, never a dependency.
"""

import json
import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pipeline.pages import save_png, table
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import Params, load_params
from pipeline.plumbing.publish import publish, write_text

# (label, key in test.json), the rows of the results table
METHODS = [
    ("clean images (the classifier's own accuracy)", "clean"),
    ("noisy input (no denoising)", "noisy"),
    ("Gaussian blur (`evaluate.blur_sigma`)", "blur"),
    ("**DAE**", "dae"),
    ("**VAE**", "vae"),
    ("DAE minus VAE (paired)", "dae_minus_vae"),
]
# (key, column, format, True when higher is better)
METRICS = [("mse", "MSE", ".5f", False), ("psnr", "PSNR (dB)", ".2f", True),
           ("ssim", "SSIM", ".3f", True), ("accuracy", "read right", ".2%", True),
           ("fd", "feature distance", ".3f", False)]  # fmt: skip
RESULTS_HEADING = "## Results"
STUDY_PAGE = "study.md"
CHARTS = ("mse_vs_noise", "per_digit", "perception")


@stage
def main() -> None:
    params = load_params()
    paths = params.paths
    metrics = json.loads(Path(paths.test_metrics).read_text())
    robustness, per_digit = pd.read_csv(paths.robustness), pd.read_csv(paths.per_digit)
    files = {"page": paths.report, **{n: getattr(paths, f"report_{n}") for n in CHARTS}}
    with publish("report", files=files) as out:
        charts = {"mse_vs_noise": curve_chart(robustness, "noise_level", "noise level",
                                              "Test MSE against noise level (no retraining)"),
                  "per_digit": curve_chart(per_digit, "digit", "digit", "Test MSE per digit"),
                  "perception": perception_distortion(metrics)}  # fmt: skip
        for name, fig in charts.items():
            save_png(fig, getattr(out, name))
        write_text(out.page, page(params, metrics, robustness))
    print(f"report -> {paths.report}")


def cell(values: dict, metric: str, fmt: str) -> str:
    """`mean [lo, hi]` (the 95% bootstrap interval) where the file has one, else the mean."""
    if metric not in values:
        return "-"
    if f"{metric}_lo" not in values:
        return f"{values[metric]:{fmt}}"
    lo, hi = values[f"{metric}_lo"], values[f"{metric}_hi"]
    return f"{values[metric]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def results_table(metrics: dict) -> str:
    rows = [[label, *(cell(metrics[key], m, fmt) for m, _, fmt, _ in METRICS)]
            for label, key in METHODS if key in metrics]  # fmt: skip
    return table(["method", *(col for _, col, _, _ in METRICS)], rows)


def headline(metrics: dict) -> list[str]:
    """One sentence per metric: who wins, by how much, and whether the interval excludes 0."""
    diff, lines = metrics["dae_minus_vae"], []
    for key, col, fmt, higher in METRICS:
        dae, vae = metrics["dae"][key], metrics["vae"][key]
        winner = "DAE" if (dae > vae) == higher else "VAE"
        if key in diff:
            lo, hi = diff[f"{key}_lo"], diff[f"{key}_hi"]
            sure = "the interval excludes 0" if lo > 0 or hi < 0 else "**the interval spans 0**"
            by = f"DAE - VAE = {diff[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}], paired; {sure}"
        else:
            by = "one value per method, no interval"
        lines.append(f"- **{col}**: {winner} ({dae:{fmt}} against {vae:{fmt}}; {by}).")
    return lines


def robustness_findings(curve: pd.DataFrame) -> list[str]:
    """What the no-retraining curve says beyond the training level, from its numbers."""
    lines = []
    clean = curve[curve.noise_level == 0]
    if len(clean):
        row = clean.iloc[0]
        lines.append(f"- On clean input (level 0) the DAE's output has MSE {row.dae:.5f} and the "
                     f"VAE's {row.vae:.5f}, where doing nothing scores 0.")  # fmt: skip
    vae_ahead = curve[curve.vae < curve.dae].noise_level.tolist()
    lines.append(f"- The VAE has the lower MSE at levels {', '.join(f'{x:g}' for x in vae_ahead)}."
                 if vae_ahead else "- The DAE has the lower MSE at every level.")  # fmt: skip
    return lines


def page(params: Params, metrics: dict, curve: pd.DataFrame) -> str:
    paths, noise = params.paths, params.noise
    here = Path(paths.report).parent

    def link(target: str) -> str:
        return Path(os.path.relpath(target, here)).as_posix()

    pd_sentence = (
        "The DAE is lower on both axes: here the VAE does not buy realism with its larger error."
        if metrics["dae"]["fd"] < metrics["vae"]["fd"]
        else "The VAE's outputs lie closer to real digits in feature space, at a larger MSE: the "
        "trade-off the theory predicts."
    )
    name = {n: link(getattr(paths, n)) for n in ("denoised", "worst", "latent", "prior_samples")}
    chart = {n: link(getattr(paths, f"report_{n}")) for n in CHARTS}
    return "\n".join([
        "# Which denoiser removes the noise better: DAE or VAE?",
        "",
        f"MNIST's {metrics['n_images']:,} test images with {noise.kind} noise at level "
        f"{noise.level}{', clipped to [0, 1]' if noise.clip else ''}; the default params.yaml, "
        "regenerated by `dvc repro` (stage `report`). In brackets: 95% bootstrap intervals over "
        f"the test images ({params.evaluate.bootstrap_resamples:,} resamples); the DAE - VAE "
        "differences are paired (the same images and noise).",
        "",
        "## Headline",
        "",
        *headline(metrics),
        "",
        RESULTS_HEADING,
        "",
        results_table(metrics),
        "",
        "*Read right*: accuracy of the pipeline's judge, a small CNN trained on clean images; "
        "*feature distance*: Fréchet distance of its penultimate-layer features to the clean "
        "images' (lower looks more like real digits).",
        "",
        f"![denoised test digits]({name['denoised']})",
        "",
        "## Where each method fails",
        "",
        "The test images each method restores worst, with their error maps (|output - clean|).",
        "",
        f"![worst examples]({name['worst']})",
        "",
        "## Away from the training level",
        "",
        "The same models (trained at one level) on test noise of other levels, no retraining:",
        "",
        *robustness_findings(curve),
        f"- Models trained at each level, with seed spread and a blind DAE: the "
        f"[noise-level study]({STUDY_PAGE}) (`make study`).",
        "",
        f"![MSE against noise level]({chart['mse_vs_noise']})",
        "",
        "## Perception and distortion",
        "",
        f"MSE (distortion) against feature distance (realism). {pd_sentence}",
        "",
        f"![perception-distortion plane]({chart['perception']})",
        "",
        "## Per digit",
        "",
        f"![MSE per digit]({chart['per_digit']})",
        "",
        "## The VAE's latent space",
        "",
        "Posterior means of the test images projected on their first two principal components, "
        "coloured by digit, and digits decoded from the prior.",
        "",
        f"![VAE latent means, PCA]({name['latent']})",
        f"![VAE prior samples]({name['prior_samples']})",
        "",
    ])  # fmt: skip


def curve_chart(data: pd.DataFrame, x: str, xlabel: str, title: str) -> Figure:
    """Each method's test MSE against `x` (log scale)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in ("noisy", "blur", "dae", "vae"):
        ax.plot(data[x], data[name], marker="o", label=name)
    ax.set(yscale="log", xlabel=xlabel, ylabel="test MSE", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def perception_distortion(metrics: dict) -> Figure:
    """Each method at (MSE, Fréchet distance of the classifier's features), the MSE's 95%
    interval as a bar, labelled with the classifier's accuracy: lower left is better."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name in ("noisy", "blur", "dae", "vae"):
        m = metrics[name]
        ax.errorbar(m["mse"], m["fd"], xerr=[[m["mse"] - m["mse_lo"]], [m["mse_hi"] - m["mse"]]],
                    fmt="o", capsize=3)  # fmt: skip
        ax.annotate(f"{name} ({m['accuracy']:.1%} read right)", (m["mse"], m["fd"]),
                    textcoords="offset points", xytext=(6, 6))  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="test MSE (distortion)",
           ylabel="Fréchet distance of classifier features",
           title="Perception-distortion plane (lower left is better)")  # fmt: skip
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
