"""The denoisers: our DAE and VAE, the reference notebook's layouts, their losses and files.

Every model's `forward` maps noisy images (N x 1 x 28 x 28) to denoised images in [0, 1].
Losses take `(model, noisy, clean, epochs_done)` and return `(loss, terms to log)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.runtime import PipelineError, load_torch, save_torch

IMAGE_PIXELS = 28 * 28


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + ReLU, 'same' padding (halving the size when stride is 2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.ReLU(inplace=True))


class Denoiser(nn.Module):
    """Base of all models: `forward(noisy)` is the denoised image in [0, 1]."""


class DAEBase(Denoiser):
    """A DAE regresses the clean image with a linear output (`predict`, trained with MSE);
    denoising clips it to [0, 1], which can only lower the error."""

    def predict(self, noisy: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.predict(noisy).clamp(0.0, 1.0)


class DAE(DAEBase):
    """U-Net at reduced resolution: 28x28 is folded to 4 x 14x14 (pixel unshuffle), processed
    at 14x14 and 7x7 with a skip connection, and unfolded back. Cheap on CPU, wide where it
    is cheap."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), conv(4, c), conv(c, c))
        self.down = nn.Sequential(conv(c, 2 * c, stride=2), conv(2 * c, 2 * c))
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.decode = conv(c, c)
        self.head = nn.Sequential(nn.Conv2d(c, 4, 3, 1, 1), nn.PixelShuffle(2))

    def predict(self, noisy: torch.Tensor) -> torch.Tensor:
        skip = self.stem(noisy)
        x = F.relu(self.up(self.down(skip))) + skip
        return self.head(self.decode(x))


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
    """A denoising VAE: `encode` gives the posterior's mean and log-variance, `decode_logits`
    maps a latent to Bernoulli logits per pixel, and denoising decodes the posterior mean."""

    latent_dim: int

    def encode(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(self.encode(noisy)[0]))


class VAE(VAEBase):
    """Convolutional VAE working at 14x14 and 7x7 (pixel unshuffle as in :class:`DAE`)."""

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

    def encode(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(noisy).chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


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

    def encode(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(noisy).chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


ARCHS: dict[tuple[str, str], type[Denoiser]] = {
    ("dae", "unet"): DAE,
    ("dae", "reference"): ReferenceDAE,
    ("vae", "conv"): VAE,
    ("vae", "reference"): ReferenceVAE,
}


def model_spec(kind: str, cfg: Any) -> dict[str, Any]:
    """The architecture part of a `dae`/`vae` params section: all that rebuilds the model."""
    spec: dict[str, Any] = {"kind": kind, "arch": cfg.arch}
    if (kind, cfg.arch) != ("vae", "reference"):
        spec["channels"] = cfg.channels
    if kind == "vae":
        spec["latent_dim"] = cfg.latent_dim
    return spec


def build(spec: dict[str, Any]) -> Denoiser:
    """Instantiate the model a :func:`model_spec` describes."""
    kind, arch, *_ = spec.values()
    hparams = {k: v for k, v in spec.items() if k not in ("kind", "arch")}
    return ARCHS[kind, arch](**hparams)


def save_model(model: Denoiser, spec: dict[str, Any], path: Path) -> None:
    """Atomically write the weights with the spec that rebuilds them (no params.yaml needed)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"spec": spec, "state_dict": state}, path)


def load_model(path: Path, stage: str) -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild a saved model in eval mode; a damaged file names the `stage` that rebuilds it."""
    blob = load_torch(path, made_by=stage)
    try:
        if not (isinstance(blob, dict) and isinstance(blob.get("spec"), dict)):
            raise ValueError("no model spec in the file")
        model = build(blob["spec"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise PipelineError(
            f"{path} is not a valid model file ({e}); run `dvc repro {stage}` to rebuild it"
        ) from e
    return model.eval(), blob["spec"]


def dae_loss(
    model: DAEBase, noisy: torch.Tensor, clean: torch.Tensor, epochs_done: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of the linear output against the clean image: the test metric itself.
    (A sigmoid output trained with MSE saturates at 0 within a few steps on MNIST.)"""
    return F.mse_loss(model.predict(noisy), clean), {}


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
    recon = F.binary_cross_entropy_with_logits(model.decode_logits(z), clean, reduction="sum")
    recon = recon / len(clean)
    kl = kl_per_dim(mean, logvar).sum(dim=1).mean()
    ramp = min(1.0, epochs_done / warmup_epochs) if warmup_epochs else 1.0
    return recon + beta * ramp * kl, {"recon": recon, "kl": kl}
