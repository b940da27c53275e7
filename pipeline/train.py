"""Stage `train@dae` / `train@vae`: one denoiser, noisy -> clean (`python -m pipeline.train dae`).

Reads params `seed`, `device`, `noise` (for <model>.fresh_noise), `<model>` and `paths`;
data/noisy/{train,val}.pt.
Writes models/<model>.pt and metrics/train/<model>/ (metrics.json and per-epoch curves from
dvclive), both or neither. Progress: one line per epoch (and tqdm bars on a terminal); the
curves appear when the stage publishes.
"""

from pathlib import Path

from pipeline.data import load_split
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params
from pipeline.plumbing.preflight import check_memory, check_precision
from pipeline.plumbing.publish import publish, write_json
from pipeline.registry import lookup, save_model
from pipeline.runtime import resolve_device, set_determinism
from pipeline.training import fit, fresh_noise


def arguments(parser) -> None:
    parser.add_argument("model", choices=["dae", "vae"], help="which denoiser to train")


@stage(arguments=arguments)
def main(model: str) -> None:
    params = load_params()
    cfg, paths = getattr(params, model), params.paths
    model_file = Path(paths.models) / f"{model}.pt"
    logs = Path(paths.train_logs) / model
    set_determinism(params.seed, "init", model)
    device = resolve_device(params.device)
    check_precision(model, cfg.precision, device)
    train, val = (load_split(Path(paths.noisy) / f"{name}.pt") for name in ("train", "val"))
    entry = lookup(model, cfg.arch)
    spec = entry.spec(cfg)
    net = entry.build(spec)
    check_memory(model, net, cfg.batch_size, device)
    noise = fresh_noise(params.noise, params.seed) if cfg.fresh_noise else None
    with publish(f"train@{model}", files={"model": model_file}, folders={"logs": logs}) as out:
        summary = fit(net, entry.loss_of(cfg), train, val, cfg, seed=params.seed, device=device,
                      live_dir=out.logs, name=model, noise=noise)  # fmt: skip
        save_model(net, spec, out.model)
        write_json(out.logs / "metrics.json", summary)
    print(f"{model}: validation MSE {summary['val']['mse']:.5f} -> {model_file}")


if __name__ == "__main__":
    main()
