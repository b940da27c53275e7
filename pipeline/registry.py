"""Losses, the (kind, arch) registry and model files.

Losses take `(model, noisy, clean, epochs_done)` and return `(loss, terms to log)`.
:data:`REGISTRY` holds one :class:`Entry` per (kind, arch): its class, the params keys it is
built from and its loss. A model file holds its weights and the spec that rebuilds them; the
spec is validated with the params schema's own bounds before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError, create_model
from torch import nn

from pipeline.models import VAE, DAEBase, Denoiser, ReferenceDAE, ReferenceVAE, UNet, VAEBase
from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import DAEParams, Section, VAEParams
from pipeline.plumbing.errors import PipelineError

# loss_fn(model, noisy, clean, epochs_done) -> (loss to minimise, named terms to log)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]
MAX_MODEL_BYTES = 2**30  # far above any model the params bounds allow here; refused before loading


def dae_loss(
    model: DAEBase, noisy: torch.Tensor, clean: torch.Tensor, epochs_done: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of the linear output against the clean image: the test metric itself.
    (A sigmoid output trained with MSE saturates at 0 within a few steps on MNIST.)"""
    return F.mse_loss(model.predict(noisy).float(), clean), {}


def kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) for each latent dimension, in nats (N x latent_dim)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def vae_loss(
    model: VAEBase,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    epochs_done: float,
    beta: float = 1.0,
    warmup_epochs: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative ELBO per image: Bernoulli reconstruction of the clean image (nats, summed over
    pixels) + beta * KL, with beta ramped linearly from 0 over `warmup_epochs`."""
    mean, logvar = model.encode(noisy)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
    logits = model.decode_logits(z).float()
    recon = F.binary_cross_entropy_with_logits(logits, clean, reduction="sum") / len(clean)
    kl = kl_per_dim(mean, logvar).sum(dim=1).mean()
    ramp = min(1.0, epochs_done / warmup_epochs) if warmup_epochs else 1.0
    return recon + beta * ramp * kl, {"recon": recon, "kl": kl}


SECTIONS: dict[str, type[Section]] = {"dae": DAEParams, "vae": VAEParams}


@dataclass(frozen=True)
class Entry:
    """One (kind, arch): the class, the params keys passed to it, and its loss for a section."""

    kind: str
    arch: str
    cls: type[Denoiser]
    hparams: tuple[str, ...]
    loss_of: Callable[[Any], LossFn]

    def spec(self, cfg: Any) -> dict[str, Any]:
        """What rebuilds the model of a `dae`/`vae` params section: kind, arch, hyper-parameters."""
        return {"kind": self.kind, "arch": self.arch, **{k: getattr(cfg, k) for k in self.hparams}}

    def build(self, spec: dict[str, Any]) -> Denoiser:
        return self.cls(**{key: spec[key] for key in self.hparams})

    def check(self, spec: dict[str, Any]) -> None:
        """Validate a stored spec with the params schema's types and bounds (ValueError)."""
        section = SECTIONS[self.kind]
        fields: dict[str, Any] = {k: (section.model_fields[k].annotation, section.model_fields[k])
                                  for k in self.hparams}  # fmt: skip
        fields |= {"kind": (Literal[self.kind], ...), "arch": (Literal[self.arch], ...)}
        try:
            create_model(f"{self.kind}_{self.arch}_spec", __base__=Section, **fields)(**spec)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ValueError(f"invalid model spec ({problems})") from None


def _entry(kind: str, arch: str, cls: type[Denoiser], hparams: tuple[str, ...], loss: Any) -> Entry:
    return Entry(kind, arch, cls, hparams, loss)


REGISTRY: dict[tuple[str, str], Entry] = {
    (e.kind, e.arch): e
    for e in (
        _entry("dae", "unet", UNet, ("channels", "levels", "blocks", "block", "fold"),
               lambda cfg: dae_loss),
        _entry("dae", "reference", ReferenceDAE, ("channels",), lambda cfg: dae_loss),
        _entry("vae", "conv", VAE, ("channels", "latent_dim"),
               lambda cfg: partial(vae_loss, beta=cfg.beta, warmup_epochs=cfg.kl_warmup_epochs)),
        _entry("vae", "reference", ReferenceVAE, ("latent_dim",),
               lambda cfg: partial(vae_loss, beta=cfg.beta, warmup_epochs=cfg.kl_warmup_epochs)),
    )
}  # fmt: skip


def lookup(kind: str, arch: str) -> Entry:
    return REGISTRY[kind, arch]


def save_model(model: Denoiser, spec: dict[str, Any], path: Path) -> None:
    """Write the weights with the spec that rebuilds them (no params.yaml needed)."""
    tensorfile.save(path, {"spec": spec}, model.state_dict())


def load_model(path: Path, kind: str) -> Denoiser:
    """Rebuild the saved `kind` model (dae or vae) in eval mode. A damaged file, one that holds
    the other kind, or one whose spec or tensors do not fit the schema names the stage that
    rebuilds it; nothing is built before the spec is validated."""
    stage = f"train@{kind}"
    meta, state = tensorfile.load(path, made_by=stage, max_bytes=MAX_MODEL_BYTES)
    spec = meta.get("spec")
    hint = f"run `dvc repro {stage}` (or `dvc checkout --force {path}`) to rebuild it"
    if isinstance(spec, dict) and spec.get("kind") != kind:
        raise PipelineError(
            f"{path} holds a {spec.get('kind')!r} model ({spec.get('arch')}), not a {kind!r} "
            f"model; {hint}"
        )
    try:
        if not isinstance(spec, dict) or (kind, spec.get("arch")) not in REGISTRY:
            raise ValueError("no valid model spec in the file")
        entry = lookup(kind, spec["arch"])
        entry.check(spec)
        model = entry.build(spec)
        expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
        if expected != {k: (v.shape, v.dtype) for k, v in state.items()}:
            raise ValueError("its tensors do not match the spec's model")
        model.load_state_dict(state)
        with torch.no_grad():  # a spec the schema's cross-key rules refuse fails here
            model.eval()(torch.zeros(1, 1, 28, 28))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise PipelineError(f"{path} is not a valid model file ({e}); {hint}") from e
    return model.eval().to(memory_format=torch.channels_last)  # as trained: faster on a CPU
