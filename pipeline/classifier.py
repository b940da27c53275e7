"""Stage `classifier`: the judge of readability, a small CNN trained on the clean images.

Reads params `seed`, `device`, `classifier`, `paths`; data/noisy/{train,val}.pt (clean images
and labels only). Writes models/classifier.pt. `evaluate` uses it to tell whether denoised
digits are still readable (accuracy) and how real they look (Fréchet distance of its features).
"""

from pathlib import Path

from pipeline.data import load_split
from pipeline.judge import Classifier, correct, features, save_classifier, train_classifier
from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params
from pipeline.plumbing.publish import publish
from pipeline.runtime import generator, resolve_device, set_determinism


@stage
def main() -> None:
    params = load_params()
    cfg, paths = params.classifier, params.paths
    set_determinism(params.seed, "init", "classifier")
    device = resolve_device(params.device)
    target = Path(paths.models) / "classifier.pt"
    with publish("classifier", files={"model": target}) as out:
        train, val = (
            load_split(Path(paths.noisy) / f"{n}.pt").to(device) for n in ("train", "val")
        )
        model = Classifier(cfg.channels).to(device)
        train_classifier(model, train.clean, train.labels, epochs=cfg.epochs,
                         batch_size=cfg.batch_size, lr=cfg.lr,
                         order=generator(params.seed, "batch-order", "classifier"))  # fmt: skip
        accuracy = float(correct(model, features(model, val.clean), val.labels).mean())
        save_classifier(model.cpu(), out.model)
    print(f"classifier: validation accuracy {accuracy:.4f} -> {target}")


if __name__ == "__main__":
    main()
