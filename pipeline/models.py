"""The denoisers: our DAE (a U-Net) and VAE, and the reference notebook's layouts.

Every model's `forward` maps noisy images (N x 1 x 28 x 28) to denoised images in [0, 1].
docs/models.md describes each one; `pipeline.registry` builds them from params.
"""

from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_PIXELS = 28 * 28


def activation(act: type[nn.Module]) -> nn.Module:
    """ReLU works in place (one tensor less to write per layer: ~5-10% of a CPU training step,
    the same values); SiLU keeps its input, which its gradient needs."""
    return act(inplace=True) if act is nn.ReLU else act()


def conv(c_in: int, c_out: int, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """3x3 convolution + activation, 'same' padding (halving the size when stride is 2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), activation(act))


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
        self.stem = nn.Sequential(
            fold_in, nn.Conv2d(fold * fold, widths[0], 3, 1, 1), activation(act)
        )
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
        self.act = activation(act)
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
