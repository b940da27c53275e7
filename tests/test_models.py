"""`pipeline.models`: every architecture's shapes and range, the losses, and the model files."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from pipeline.models import (
    ARCHS,
    DAEBase,
    VAEBase,
    build,
    dae_loss,
    kl_per_dim,
    load_model,
    model_spec,
    save_model,
    vae_loss,
)
from pipeline.runtime import PipelineError

LATENT_DIM = 3
SMALL = SimpleNamespace(channels=4, latent_dim=LATENT_DIM)


def small_spec(kind: str, arch: str) -> dict[str, Any]:
    return model_spec(kind, SimpleNamespace(arch=arch, **vars(SMALL)))


def small_model(kind: str, arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(small_spec(kind, arch)).eval()


def batch(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) N x 1 x 28 x 28 in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    clean = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float()
    noisy = (clean + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return noisy, clean


@pytest.mark.parametrize(("kind", "arch"), list(ARCHS), ids=[f"{k}-{a}" for k, a in ARCHS])
def test_every_arch_builds_and_denoises_to_same_shape_in_unit_range(kind: str, arch: str) -> None:
    spec = small_spec(kind, arch)
    assert spec["kind"] == kind and spec["arch"] == arch
    model = small_model(kind, arch)
    assert isinstance(model, ARCHS[kind, arch])
    assert isinstance(model, DAEBase if kind == "dae" else VAEBase)
    noisy, _ = batch()
    with torch.no_grad():
        out = model(noisy)
    assert out.shape == noisy.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_spec_holds_only_what_rebuilds_the_model() -> None:
    assert small_spec("dae", "unet") == {"kind": "dae", "arch": "unet", "channels": 4}
    assert small_spec("vae", "conv") == {
        "kind": "vae",
        "arch": "conv",
        "channels": 4,
        "latent_dim": LATENT_DIM,
    }
    assert small_spec("vae", "reference") == {  # the MLP has no channels
        "kind": "vae",
        "arch": "reference",
        "latent_dim": LATENT_DIM,
    }


def test_channels_change_the_model_size() -> None:
    narrow = build({"kind": "dae", "arch": "unet", "channels": 4})
    wide = build({"kind": "dae", "arch": "unet", "channels": 8})
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())


@pytest.mark.parametrize("arch", ["conv", "reference"])
def test_vae_encode_gives_mean_and_logvar_per_latent_dim(arch: str) -> None:
    model = small_model("vae", arch)
    noisy, _ = batch(n=7)
    mean, logvar = model.encode(noisy)
    assert model.latent_dim == LATENT_DIM
    assert mean.shape == logvar.shape == (7, LATENT_DIM)
    assert model.decode_logits(mean).shape == (7, 1, 28, 28)
    with torch.no_grad():  # denoising decodes the posterior mean
        assert torch.equal(model(noisy), torch.sigmoid(model.decode_logits(mean)))


def test_kl_per_dim_is_zero_at_the_prior() -> None:
    zeros = torch.zeros(4, LATENT_DIM)
    assert torch.equal(kl_per_dim(zeros, zeros), zeros)


def test_kl_per_dim_matches_the_closed_form() -> None:
    mean = torch.tensor([[1.0, 0.0, -2.0, 0.5]])
    logvar = torch.tensor([[0.0, math.log(2.0), math.log(0.25), -1.0]])
    kl = kl_per_dim(mean, logvar)
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s
    expected = [
        0.5,
        (1 - math.log(2)) / 2,
        (4 + 0.25 - 1) / 2 - math.log(0.5),
        (0.25 + math.exp(-1) - 1) / 2 + 0.5,
    ]
    assert kl[0].tolist() == pytest.approx(expected, rel=1e-6)
    reference = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(kl, reference)
    assert (kl > 0).all()


def test_vae_loss_terms_match_an_independent_computation() -> None:
    model = small_model("vae", "conv").train()
    noisy, clean = batch()
    torch.manual_seed(123)
    loss, terms = vae_loss(model, noisy, clean, epochs_done=5.0, beta=0.7, warmup_epochs=2)
    assert set(terms) == {"recon", "kl"}

    torch.manual_seed(123)  # the same reparameterisation sample
    mean, logvar = model.encode(noisy)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
    bce = F.binary_cross_entropy_with_logits(model.decode_logits(z), clean, reduction="none")
    recon = bce.sum(dim=(1, 2, 3)).mean()  # nats per image
    kl = kl_per_dim(mean, logvar).sum(dim=1).mean()
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(loss, recon + 0.7 * kl)


@pytest.mark.parametrize(
    ("epochs_done", "ramp"),
    [(0.0, 0.0), (0.5, 0.25), (1.0, 0.5), (2.0, 1.0), (3.5, 1.0)],
)
def test_vae_loss_ramps_the_kl_weight_over_warmup(epochs_done: float, ramp: float) -> None:
    model = small_model("vae", "conv")
    noisy, clean = batch()
    torch.manual_seed(0)
    loss, terms = vae_loss(model, noisy, clean, epochs_done, beta=2.0, warmup_epochs=2)
    assert terms["kl"] > 0
    torch.testing.assert_close(loss, terms["recon"] + 2.0 * ramp * terms["kl"])
    if ramp == 0.0:
        assert torch.equal(loss, terms["recon"])


def test_vae_loss_without_warmup_uses_full_beta_from_the_start() -> None:
    model = small_model("vae", "reference")
    noisy, clean = batch()
    loss, terms = vae_loss(model, noisy, clean, epochs_done=0.0, beta=1.5, warmup_epochs=0)
    torch.testing.assert_close(loss, terms["recon"] + 1.5 * terms["kl"])


def test_vae_loss_is_reproducible_under_the_same_seed() -> None:
    model = small_model("vae", "conv")
    noisy, clean = batch()
    losses = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        losses.append(vae_loss(model, noisy, clean, 1.0, warmup_epochs=2)[0])
    assert torch.equal(losses[0], losses[1])
    assert not torch.equal(losses[0], losses[2])  # z is sampled


@pytest.mark.parametrize("arch", ["unet", "reference"])
def test_dae_loss_is_mse_of_the_linear_prediction(arch: str) -> None:
    model = small_model("dae", arch)
    noisy, clean = batch()
    loss, terms = dae_loss(model, noisy, clean, 0.0)
    assert terms == {}
    torch.testing.assert_close(loss, F.mse_loss(model.predict(noisy), clean), rtol=0, atol=0)
    assert loss.requires_grad


@pytest.mark.parametrize(("kind", "arch"), list(ARCHS), ids=[f"{k}-{a}" for k, a in ARCHS])
def test_save_then_load_gives_identical_outputs(tmp_path: Path, kind: str, arch: str) -> None:
    spec = small_spec(kind, arch)
    model = small_model(kind, arch, seed=3)
    path = tmp_path / "models" / f"{kind}.pt"
    save_model(model, spec, path)
    loaded, loaded_spec = load_model(path, f"train_{kind}")
    assert loaded_spec == spec
    assert not loaded.training
    noisy, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded(noisy), model(noisy))
    other = small_model(kind, arch, seed=4)  # a differently initialised model differs
    with torch.no_grad():
        assert not torch.equal(other(noisy), model(noisy))


def _saved(tmp_path: Path, blob: Any) -> bytes:
    path = tmp_path / "blob.pt"
    torch.save(blob, path)
    return path.read_bytes()


def damaged_model(tmp_path: Path, how: str) -> bytes:
    """The bytes of a broken model file."""
    spec = small_spec("vae", "conv")
    state = small_model("vae", "conv").state_dict()
    good = _saved(tmp_path, {"spec": spec, "state_dict": state})
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "garbage":
        return b"\x00not a model\xff" * 50
    blobs = {
        "no-spec": {"state_dict": state},
        "unknown-arch": {"spec": {**spec, "arch": "x"}, "state_dict": state},
        "wrong-weights": {"spec": {**spec, "latent_dim": LATENT_DIM + 1}, "state_dict": state},
        "not-a-dict": [spec, state],
    }
    return _saved(tmp_path, blobs[how])


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "no-spec", "unknown-arch", "wrong-weights", "not-a-dict"],
)
def test_damaged_model_file_names_file_and_stage(tmp_path: Path, how: str) -> None:
    path = tmp_path / "models" / "vae.pt"
    path.parent.mkdir()
    path.write_bytes(damaged_model(tmp_path, how))
    with pytest.raises(PipelineError) as info:
        load_model(path, "train_vae")
    message = str(info.value)
    assert str(path) in message and "dvc repro train_vae" in message


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("blob", ["tensor", "list-spec"])
def test_model_file_of_the_wrong_structure_names_file_and_stage(tmp_path: Path, blob: str) -> None:
    path = tmp_path / "dae.pt"
    torch.save(torch.zeros(3) if blob == "tensor" else {"spec": [1], "state_dict": {}}, path)
    with pytest.raises(PipelineError, match="dvc repro train_dae"):
        load_model(path, "train_dae")


def test_missing_model_file_names_file_and_stage(tmp_path: Path) -> None:
    path = tmp_path / "models" / "dae.pt"
    with pytest.raises(PipelineError, match="missing") as info:
        load_model(path, "train_dae")
    assert str(path) in str(info.value) and "dvc repro train_dae" in str(info.value)
