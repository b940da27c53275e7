"""The judge of readability: a small CNN digit classifier trained on clean images, its training
loop, and the two things `evaluate` asks of it: accuracy on a method's outputs, and the Fréchet
distance between its penultimate-layer features of those outputs and of the clean images (the
FID recipe, torchmetrics' implementation, with a network that trains offline in a minute).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from pipeline.plumbing import tensorfile
from pipeline.plumbing.errors import PipelineError
from pipeline.runtime import INFERENCE_BATCH

MAX_BYTES = 2**26  # the largest classifier the params bounds allow is far smaller


class Classifier(nn.Module):
    """conv-pool-conv-pool, a `features`-wide hidden layer (the features the distance uses),
    then 10 logits."""

    def __init__(self, channels: int = 32, features: int = 128) -> None:
        super().__init__()
        c = channels
        self.num_features = features  # read by torchmetrics' FrechetInceptionDistance
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * 49, features), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(features, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N x features): what the Fréchet distance compares."""
        return self.body(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_classifier(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    order: torch.Generator,
) -> None:
    """Adam with cosine decay on clean images (in place), one log line per epoch."""
    model.to(memory_format=torch.channels_last)  # with in-place ReLUs: 1.6x faster on a CPU
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), torch.zeros(())
        perm = torch.randperm(len(images), generator=order)
        for i in range(0, len(images), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model.logits(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        loss_mean = float(total) / len(images)
        seconds = time.perf_counter() - start
        print(f"classifier epoch {epoch + 1}/{epochs}: train loss {loss_mean:.4f}, {seconds:.1f} s")
        sys.stdout.flush()
    model.eval()


@torch.no_grad()
def features(model: Classifier, images: torch.Tensor, batch: int = INFERENCE_BATCH) -> torch.Tensor:
    """The classifier's penultimate-layer features of `images` (N x features), in batches:
    computed once per set of images, for both the accuracy and the distance."""
    return torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def correct(model: Classifier, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the classifier, from the :func:`features` of an image, reads its digit right,
    else 0.0 (one value per image)."""
    return (model.head(feats).argmax(1) == labels).double()


class _Given(nn.Identity):
    """torchmetrics' Fréchet distance runs its feature extractor itself; this one passes the
    :func:`features` already computed through, so no image goes through the classifier twice."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def feature_distance(clean_feats: torch.Tensor, out_feats: torch.Tensor) -> float:
    """Fréchet distance between the classifier's features of a method's outputs and of the
    clean images (NaN when a feature is not finite)."""
    if not (bool(torch.isfinite(clean_feats).all()) and bool(torch.isfinite(out_feats).all())):
        return math.nan  # LAPACK can crash on NaN; refused by evaluate, naming the model
    fid = FrechetInceptionDistance(feature=_Given(clean_feats.shape[1])).to(clean_feats.device)
    fid.update(clean_feats, real=True)
    fid.update(out_feats, real=False)
    return float(fid.compute())


def save_classifier(model: Classifier, path: Path) -> None:
    spec = {
        "kind": "classifier",
        "channels": model.body[0].out_channels,
        "features": model.num_features,
    }
    tensorfile.save(path, {"spec": spec}, model.state_dict())


def load_classifier(path: Path) -> Classifier:
    """The saved classifier in eval mode; a damaged or foreign file names the `classifier` stage."""
    meta, state = tensorfile.load(path, made_by="classifier", max_bytes=MAX_BYTES)
    spec = meta.get("spec")
    hint = f"run `dvc repro classifier` (or `dvc checkout --force {path}`) to rebuild it"
    ok = isinstance(spec, dict) and spec.get("kind") == "classifier"
    channels, features = (spec.get("channels"), spec.get("features")) if ok else (None, None)
    if not (
        isinstance(channels, int)
        and 0 < channels <= 256
        and isinstance(features, int)
        and 0 < features <= 1024
    ):
        raise PipelineError(f"{path} does not hold this pipeline's classifier; {hint}")
    model = Classifier(channels, features)
    if {k: v.shape for k, v in model.state_dict().items()} != {
        k: v.shape for k, v in state.items()
    }:
        raise PipelineError(f"{path}: its tensors do not match its classifier spec; {hint}")
    model.load_state_dict(state)
    return model.eval().to(memory_format=torch.channels_last)  # as trained: 2-3x faster on a CPU
