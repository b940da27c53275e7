"""The denoisers: our DAE and VAE, the reference notebook's layouts, their losses and files.

Every model's `forward` maps noisy images (N x 1 x 28 x 28) to denoised images in [0, 1].
Losses take `(model, noisy, clean, epochs_done)` and return `(loss, terms to log)`.
:data:`REGISTRY` holds one entry per (kind, arch): its class, the params keys it is built
from and its loss; a saved model file holds its state dict and the spec that rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.runtime import load_torch

IMAGE_PIXELS = 28 * 28
# loss_fn(model, noisy, clean, epochs_done) -> (loss to minimise, named terms to log)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]


def conv(c_in: int, c_out: int, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """3x3 convolution + activation, 'same' padding (halving the size when stride is 2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), act())


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(SiLU(GN(conv(SiLU(GN(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            norm(c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, 1, 1),
            norm(c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Denoiser(nn.Module):
    """Base of all models: `forward(noisy)` is the denoised image in [0, 1]."""


class DAEBase(Denoiser):
    """A DAE regresses the clean image with a linear output (`predict`, trained with MSE);
    denoising clips it to [0, 1], which can only lower the error."""

    def predict(self, noisy: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.predict(noisy).clamp(0.0, 1.0)


class UNet(DAEBase):
    """One U-Net family, scaled by params. `fold` 2 folds 28x28 into 4 x 14x14 (pixel
    unshuffle: cheap on CPU), 1 works at full resolution. Each of `levels` downsamplings
    halves the size and doubles the width; each level has `blocks` blocks in the encoder and
    in the decoder, `plain` (conv + ReLU) or `residual` (GroupNorm + SiLU); skips are added.

    The CPU default (32 channels, 1 level, 1 plain block, fold 2) is 14x14 -> 7x7 and back.
    """

    def __init__(
        self,
        channels: int = 32,
        levels: int = 1,
        blocks: int = 1,
        block: str = "plain",
        fold: int = 2,
    ) -> None:
        super().__init__()
        residual = block == "residual"
        act = nn.SiLU if residual else nn.ReLU
        widths = [channels * 2**i for i in range(levels + 1)]

        def stack(c: int) -> nn.Sequential:
            return nn.Sequential(*(ResBlock(c) if residual else conv(c, c) for _ in range(blocks)))

        fold_in = nn.PixelUnshuffle(fold) if fold > 1 else nn.Identity()
        self.stem = nn.Sequential(fold_in, nn.Conv2d(fold * fold, widths[0], 3, 1, 1), act())
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i in range(levels):
            self.encoders.append(stack(widths[i]))
            self.downs.append(conv(widths[i], widths[i + 1], stride=2, act=act))
        self.middle = stack(widths[-1])
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels)
        )
        self.decoders = nn.ModuleList(stack(widths[i]) for i in range(levels))
        self.act = act()
        head_in = [norm(widths[0]), nn.SiLU()] if residual else []
        fold_out = nn.PixelShuffle(fold) if fold > 1 else nn.Identity()
        self.head = nn.Sequential(*head_in, nn.Conv2d(widths[0], fold * fold, 3, 1, 1), fold_out)

    def predict(self, noisy: torch.Tensor) -> torch.Tensor:
        x = self.stem(noisy)
        skips = []
        for encode, down in zip(self.encoders, self.downs, strict=True):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for i in reversed(range(len(self.ups))):
            x = self.decoders[i](self.act(self.ups[i](x)) + skips[i])
        return self.head(x)


class ReferenceDAE(DAEBase):
    """The reference notebook's layout (the Keras blog's convolutional denoiser):
    conv-pool-conv-pool, conv-up-conv-up, conv to one channel."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            conv(1, c),
            nn.MaxPool2d(2),
            conv(c, c),
            nn.MaxPool2d(2),
            conv(c, c),
            nn.Upsample(scale_factor=2),
            conv(c, c),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c, 1, 3, 1, 1),
        )

    def predict(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.net(noisy)


class VAEBase(Denoiser):
    """A denoising VAE: `encoder` gives the posterior's mean and log-variance, `decoder` maps a
    latent to Bernoulli logits per pixel, and denoising decodes the posterior mean."""

    latent_dim: int
    encoder: nn.Module
    decoder: nn.Module

    def encode(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(noisy).float().chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(self.encode(noisy)[0]))


class VAE(VAEBase):
    """Convolutional VAE working at 14x14 and 7x7 (pixel unshuffle as in :class:`UNet`)."""

    def __init__(self, channels: int = 32, latent_dim: int = 16) -> None:
        super().__init__()
        c, self.latent_dim = channels, latent_dim
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(2),
            conv(4, c),
            conv(c, 2 * c, stride=2),
            conv(2 * c, 2 * c),
            nn.Flatten(),
            nn.Linear(2 * c * 49, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * c * 49),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (2 * c, 7, 7)),
            conv(2 * c, 2 * c),
            nn.ConvTranspose2d(2 * c, c, 2, stride=2),
            nn.ReLU(inplace=True),
            conv(c, c),
            nn.Conv2d(c, 4, 3, 1, 1),
            nn.PixelShuffle(2),
        )


class ReferenceVAE(VAEBase):
    """The reference notebook's layout (the Keras example VAE): 784-512-latent-512-784 MLP."""

    def __init__(self, latent_dim: int = 2, hidden: int = 512) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(IMAGE_PIXELS, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, IMAGE_PIXELS),
            nn.Unflatten(1, (1, 28, 28)),
        )


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


@dataclass(frozen=True)
class Entry:
    """One (kind, arch): the class, the params keys passed to it, and its loss for a section."""

    cls: type[Denoiser]
    hparams: tuple[str, ...]
    loss: Callable[[Any], LossFn]


def _dae_loss(cfg: Any) -> LossFn:
    return dae_loss


def _vae_loss(cfg: Any) -> LossFn:
    return partial(vae_loss, beta=cfg.beta, warmup_epochs=cfg.kl_warmup_epochs)


REGISTRY: dict[tuple[str, str], Entry] = {
    ("dae", "unet"): Entry(UNet, ("channels", "levels", "blocks", "block", "fold"), _dae_loss),
    ("dae", "reference"): Entry(ReferenceDAE, ("channels",), _dae_loss),
    ("vae", "conv"): Entry(VAE, ("channels", "latent_dim"), _vae_loss),
    ("vae", "reference"): Entry(ReferenceVAE, ("latent_dim",), _vae_loss),
}


def model_spec(kind: str, cfg: Any) -> dict[str, Any]:
    """What rebuilds the model of a `dae`/`vae` params section: kind, arch, hyper-parameters."""
    entry = REGISTRY[kind, cfg.arch]
    return {"kind": kind, "arch": cfg.arch, **{key: getattr(cfg, key) for key in entry.hparams}}


def loss_for(kind: str, cfg: Any) -> LossFn:
    """The loss of the model a `dae`/`vae` params section describes."""
    return REGISTRY[kind, cfg.arch].loss(cfg)


def build(spec: dict[str, Any]) -> Denoiser:
    """Instantiate the model a :func:`model_spec` describes."""
    entry = REGISTRY[spec["kind"], spec["arch"]]
    return entry.cls(**{key: spec[key] for key in entry.hparams})


def save_model(model: Denoiser, spec: dict[str, Any], path: Path) -> None:
    """Write the weights with the spec that rebuilds them (no params.yaml needed)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"spec": spec, "state_dict": state}, path)


def load_model(path: Path, kind: str) -> Denoiser:
    """Rebuild the saved `kind` model (dae or vae) in eval mode. A damaged file, or one that
    holds the other kind, names the stage that rebuilds it."""
    stage = f"train_{kind}"
    blob = load_torch(path, made_by=stage)
    spec = blob.get("spec") if isinstance(blob, dict) else None
    if isinstance(spec, dict) and spec.get("kind") != kind:
        raise PipelineError(
            f"{path} holds a {spec.get('kind')!r} model ({spec.get('arch')}), not a {kind!r} "
            f"model; run `dvc repro {stage}` (or `dvc checkout --force {path}`) to rebuild it"
        )
    try:
        if not isinstance(spec, dict):
            raise ValueError("no model spec in the file")
        model = build(spec)
        model.load_state_dict(blob["state_dict"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise PipelineError(
            f"{path} is not a valid model file ({e}); run `dvc repro {stage}` to rebuild it"
        ) from e
    return model.eval()
