"""The judge of readability (pipeline/judge.py) and the bootstrap intervals (pipeline/metrics.py):
the classifier learns, its file is refused like every model file when it is stale or damaged,
the feature distance grows with the damage, and the intervals behave like intervals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.judge import (
    Classifier,
    correct,
    feature_distance,
    features,
    load_classifier,
    save_classifier,
    train_classifier,
)
from pipeline.metrics import bootstrap_indices, with_interval
from pipeline.plumbing.config import parse_params
from pipeline.plumbing.errors import PipelineError
from pipeline.registry import lookup, save_model
from tests.helpers import flip_a_tensor_byte, raw_params, tiny_images

pytestmark = pytest.mark.usefixtures("torch_state")  # tests/conftest.py


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    clean, labels = tiny_images(n, seed)
    return clean.unsqueeze(1).float() / 255, labels


def test_the_classifier_learns_digits_it_can_tell_apart(capsys) -> None:
    """Images whose brightness says their label: a working loop reads them all right."""
    labels = torch.arange(400) % 10
    x = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    torch.manual_seed(0)
    model = Classifier(channels=4, features=16)
    train_classifier(model, x, labels, epochs=30, batch_size=50, lr=0.01,
                     order=torch.Generator().manual_seed(0))  # fmt: skip
    assert correct(model, features(model, x, 100), labels).mean() == 1.0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 30 and lines[0].startswith("classifier epoch 1/30: train loss ")


def test_the_feature_distance_is_zero_for_the_clean_images_and_grows_with_noise() -> None:
    torch.manual_seed(0)
    model = Classifier(channels=4, features=16).eval()
    clean, _ = images(300, seed=1)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(clean.shape, generator=gen)
    reference = features(model, clean, 100)
    distances = [feature_distance(reference, features(model, (clean + s * noise).clamp(0, 1), 100))
                 for s in (0.0, 0.2, 0.6)]  # fmt: skip
    assert distances[0] == pytest.approx(0, abs=1e-6)
    assert distances[0] < distances[1] < distances[2]


def test_a_saved_classifier_loads_back_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Classifier(channels=4, features=16).eval()
    save_classifier(model, tmp_path / "classifier.pt")
    again = load_classifier(tmp_path / "classifier.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    x, _ = images(8, seed=3)
    model.to(memory_format=torch.channels_last)  # as loaded: the same kernels, the same values
    assert torch.equal(model.logits(x), again.logits(x))


def test_a_stale_or_damaged_classifier_is_refused_naming_its_stage(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    cfg = parse_params(raw_params()).dae
    entry = lookup("dae", cfg.arch)
    save_model(entry.build(entry.spec(cfg)), entry.spec(cfg), path)  # a DAE in its place
    with pytest.raises(
        PipelineError, match=r"does not hold this pipeline's classifier.*classifier"
    ):
        load_classifier(path)
    save_classifier(Classifier(channels=4, features=16), path)
    flip_a_tensor_byte(path)
    with pytest.raises(PipelineError, match=r"checksum.*dvc repro classifier"):
        load_classifier(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match=r"not a PyTorch file.*dvc repro classifier"):
        load_classifier(path)


def test_an_interval_contains_its_mean_and_shrinks_with_more_images() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(4000, generator=gen)
    widths = []
    for n in (250, 4000):
        rows = bootstrap_indices(n, 500, torch.Generator().manual_seed(1))
        out = with_interval({"x": values[:n]}, rows)
        assert out["x_lo"] <= out["x"] <= out["x_hi"]
        assert out["x"] == pytest.approx(float(values[:n].double().mean()))
        widths.append(out["x_hi"] - out["x_lo"])
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) of it


def test_intervals_are_the_same_for_the_same_seed() -> None:
    values = {"x": torch.rand(100, generator=torch.Generator().manual_seed(0))}
    rows = [bootstrap_indices(100, 200, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert with_interval(values, rows[0]) == with_interval(values, rows[1])
