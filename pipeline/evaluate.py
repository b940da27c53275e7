"""Stage `evaluate`: DAE, VAE and two baselines on the noisy test images.

Reads params `seed`, `device`, `noise.kind`, `noise.clip`, `evaluate`, `paths`;
data/noisy/test.pt, models/dae.pt, models/vae.pt, models/classifier.pt.
Writes metrics/test.json (per method: MSE, PSNR, SSIM and the classifier's accuracy, each with
its 95% bootstrap interval over test images, `<metric>_lo` / `<metric>_hi`, and `fd`, the
Fréchet distance of the classifier's features to the clean images'; the classifier's accuracy
on the clean images; the paired difference `dae_minus_vae`; the VAE's KL and active latent
dimensions), and plot data: metrics/per_digit.csv, metrics/robustness.csv
(MSE at each `evaluate.noise_levels` value of `noise.kind`, no retraining), metrics/vae_kl.csv.
Non-finite metrics are refused (nothing written), naming the model to retrain.
"""

import math
from pathlib import Path

import pandas as pd
import torch

from pipeline.data import Split, add_noise, load_split
from pipeline.judge import Classifier, correct, feature_distance, features, load_classifier
from pipeline.metrics import (
    blur_baseline,
    bootstrap_indices,
    denoise_all,
    mse,
    per_class_mse,
    per_image,
    with_interval,
)
from pipeline.models import Denoiser, VAEBase
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import Params, load_params
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.publish import publish, write_json, write_text
from pipeline.registry import kl_per_dim, load_model
from pipeline.runtime import generator, resolve_device, set_determinism

ACTIVE_KL_NATS = 0.01  # a latent dimension carrying less than this is counted as collapsed
METRICS = ("mse", "psnr", "ssim", "accuracy")  # each with a 95% interval


@stage
def main() -> None:
    params = load_params()
    paths = params.paths
    set_determinism(params.seed, "evaluate")
    device = resolve_device(params.device)
    files = {name: getattr(paths, name) for name in ("test_metrics", "per_digit", "robustness",
                                                     "vae_kl")}  # fmt: skip
    with publish("evaluate", files=files) as out:  # writable? then work
        test = load_split(Path(paths.noisy) / "test.pt").to(device)
        dae, vae = (
            load_model(Path(paths.models) / f"{k}.pt", k).to(device) for k in ("dae", "vae")
        )
        judge = load_classifier(Path(paths.models) / "classifier.pt").to(device)
        results = evaluate(params, dae, vae, judge, test, device)
        check_finite(results["test_metrics"])
        for name, table in results.items():
            if isinstance(table, pd.DataFrame):
                write_text(getattr(out, name), table.to_csv(index=False, float_format="%.6f"))
            else:
                write_json(getattr(out, name), table)
    for name, v in results["test_metrics"].items():
        if isinstance(v, dict):
            shown = [f"{k} {v[k]:.5g} [{v[f'{k}_lo']:.5g}, {v[f'{k}_hi']:.5g}]" for k in METRICS
                     if k in v]  # fmt: skip
            extra = [f"{k} {v[k]:.5g}" for k in v if k.split("_")[0] not in METRICS]
            print(f"{name}: " + ", ".join(shown + extra))


def evaluate(
    params: Params,
    dae: Denoiser,
    vae: VAEBase,
    judge: Classifier,
    test: Split,
    device: torch.device,
) -> dict[str, dict | pd.DataFrame]:
    """Every output of the stage, by its `paths` key."""
    cfg, noise = params.evaluate, params.noise
    methods = {"noisy": lambda x: x, "blur": blur_baseline(cfg.blur_sigma), "dae": dae, "vae": vae}

    outputs = {name: denoise_all(fn, test.noisy, cfg.batch_size) for name, fn in methods.items()}
    scores = {name: per_image(out, test.clean) for name, out in outputs.items()}
    feats = {name: features(judge, images, cfg.batch_size)
             for name, images in {"clean": test.clean, **outputs}.items()}  # fmt: skip
    for name in outputs:
        scores[name]["accuracy"] = correct(judge, feats[name], test.labels)
    gen = generator(params.seed, "bootstrap")
    rows = bootstrap_indices(len(test), cfg.bootstrap_resamples, gen)
    summary = {name: with_interval(values, rows) for name, values in scores.items()}
    for name in outputs:
        summary[name]["fd"] = feature_distance(feats["clean"], feats[name])
    clean = {"accuracy": correct(judge, feats["clean"], test.labels)}
    summary["clean"] = with_interval(clean, rows)
    paired = {k: scores["dae"][k] - scores["vae"][k] for k in scores["dae"]}
    summary["dae_minus_vae"] = with_interval(paired, rows)
    kl = latent_kl(vae, test.noisy, cfg.batch_size)
    summary["vae"] |= {"kl": float(kl.sum()), "active_dims": int((kl > ACTIVE_KL_NATS).sum())}

    per_digit = {n: per_class_mse(out, test.clean, test.labels) for n, out in outputs.items()}
    gen = generator(params.seed, "robustness")
    curve = []
    for level in cfg.noise_levels:
        noisy = add_noise(test.clean.cpu(), noise.kind, level, noise.clip, gen).to(device)
        row = {
            n: mse(denoise_all(fn, noisy, cfg.batch_size), test.clean) for n, fn in methods.items()
        }
        curve.append({"noise_level": level, **row})

    return {
        "test_metrics": {**summary, "n_images": len(test)},
        "per_digit": pd.DataFrame({"digit": range(10), **per_digit}),
        "robustness": pd.DataFrame(curve),
        "vae_kl": pd.DataFrame({"dim": range(len(kl)), "kl": kl.tolist()}),
    }


def check_finite(summary: dict) -> None:
    """Refuse NaN or infinite metrics (a model with non-finite weights), naming the model."""
    for method, values in summary.items():
        bad = (
            [k for k, v in values.items() if not math.isfinite(v)]
            if isinstance(values, dict)
            else []
        )
        if bad:
            rerun = (
                f"; retrain it: `dvc repro -f train@{method}`" if method in ("dae", "vae") else ""
            )
            raise PipelineError(f"evaluate: {method} gives non-finite {', '.join(bad)}{rerun}; "
                                "nothing was written")  # fmt: skip


@torch.no_grad()
def latent_kl(vae: VAEBase, noisy: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean KL(q(z|x) || p(z)) of each latent dimension over `noisy`, in nats."""
    total = torch.zeros(vae.latent_dim, device=noisy.device)
    for i in range(0, len(noisy), batch_size):
        total += kl_per_dim(*vae.encode(noisy[i : i + batch_size])).sum(dim=0)
    return (total / len(noisy)).cpu()


if __name__ == "__main__":
    main()
