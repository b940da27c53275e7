"""Stage `train@<kind>-<level>-<seed>` / `blind@<seed>` of the noise-level study (study/dvc.yaml):
one model trained at one noise level (or, blind, at a level drawn per image over
`study.blind_levels`) and evaluated at every `study.test_levels` value.

Reads params `noise.kind`, `noise.clip`, `device`, `<kind>` (the architecture; its `epochs` and
`batch_size` replaced by the study's) and `paths.mnist` of params.yaml, `study` and `paths` of
study/params.yaml. Every random stream (split, noise, init, batch order) derives from `seed`.
Writes models/study/<name>.pt and metrics/study/runs/<name>.json, both or neither.
"""

import tempfile
from pathlib import Path

import torch

from pipeline.data import Split, add_noise, load_mnist, split_indices
from pipeline.metrics import denoise_all, per_image
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params
from pipeline.plumbing.publish import publish, write_json
from pipeline.plumbing.study_params import load_study
from pipeline.registry import lookup, save_model
from pipeline.runtime import generator, resolve_device, set_determinism
from pipeline.training import fit, fresh_noise

BLIND = "blind"


def arguments(parser) -> None:
    parser.add_argument("kind", choices=["dae", "vae"])
    parser.add_argument("level", help=f"training noise level, or {BLIND!r}")
    parser.add_argument("seed", type=int)


@stage(arguments=arguments)
def main(kind: str, level: str, seed: int) -> None:
    params, cfg = load_params(), load_study()
    study, name = cfg.study, f"{kind}-{level}-{seed}"
    model_cfg = getattr(params, kind).model_copy(
        update={"epochs": study.epochs, "batch_size": study.batch_size}
    )
    set_determinism(seed, "init", kind)
    device = resolve_device(params.device)
    blind = level == BLIND
    levels = tuple(study.blind_levels) if blind else None
    noise = params.noise if blind else params.noise.at(float(level))
    draw = fresh_noise(noise, seed, levels)

    images, labels = load_mnist(Path(params.paths.mnist), train=True)
    val_idx, train_idx = split_indices(seed, study.val_size, study.train_size)
    train, val = (
        Split(clean, draw(clean, "val"), labels[idx])
        for idx in (train_idx, val_idx)
        for clean in [images[idx].unsqueeze(1).float() / 255]
    )  # the training noise is drawn anew each epoch by `fit`
    entry = lookup(kind, model_cfg.arch)
    spec = entry.spec(model_cfg)
    net = entry.build(spec)
    files = {"model": Path(cfg.outputs.models) / f"{name}.pt",
             "run": Path(cfg.outputs.runs) / f"{name}.json"}  # fmt: skip
    with publish(f"train@{name}", files=files) as out, tempfile.TemporaryDirectory() as live:
        summary = fit(net, entry.loss_of(model_cfg), train, val, model_cfg, seed=seed,
                      device=device, live_dir=Path(live), name=name, noise=draw)  # fmt: skip
        save_model(net, spec, out.model)
        test = test_metrics(net.eval(), params, study, seed, device)
        run = {"kind": "blind" if blind else kind, "train_level": level, "seed": seed,
               "val_mse": summary["val"]["mse"], "test": test}  # fmt: skip
        write_json(out.run, run)
    print(f"{name}: " + ", ".join(f"MSE {m['mse']:.5f} at {t}" for t, m in test.items()))


def test_metrics(net, params, study, seed: int, device: torch.device) -> dict[str, dict]:
    """Mean MSE, PSNR and SSIM of `net` (and the MSE of its input) at each test level, on the
    first `study.test_size` test images with noise from stream `study-test/<level>`."""
    images, _ = load_mnist(Path(params.paths.mnist), train=False)
    clean = images[: study.test_size].unsqueeze(1).float() / 255
    results = {}
    for level in study.test_levels:
        gen = generator(seed, "study-test", level)
        noisy = add_noise(clean, params.noise.kind, level, params.noise.clip, gen)
        out = denoise_all(net, noisy.to(device)).cpu()
        scores = {k: float(v.mean()) for k, v in per_image(out, clean).items()}
        results[str(level)] = scores | {"input_mse": float(torch.mean((noisy - clean) ** 2))}
    return results


if __name__ == "__main__":
    main()
