"""`pipeline.models` and `pipeline.registry`: every architecture's shapes and range, the U-Net's
scaling, the losses, and the model files (rebuilt from their spec, refused when damaged)."""

from __future__ import annotations

import copy
import math
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.distributions import Normal, kl_divergence

from pipeline import registry
from pipeline.models import DAEBase, ResBlock, UNet, VAEBase
from pipeline.plumbing import tensorfile
from pipeline.plumbing.config import MAX_CHANNELS, DAEParams, ParamsError, parse_params
from pipeline.plumbing.errors import PipelineError
from pipeline.registry import (
    REGISTRY,
    dae_loss,
    kl_per_dim,
    load_model,
    lookup,
    save_model,
    vae_loss,
)
from tests.helpers import DEFAULT_PARAMS, flip_a_tensor_byte, set_dotted

LATENT_DIM = 3
UNET_DEFAULTS = dict(levels=1, blocks=1, block="plain", fold=2)
SMALL = SimpleNamespace(channels=4, latent_dim=LATENT_DIM, **UNET_DEFAULTS)
ARCHS = list(REGISTRY)
ARCH_IDS = [f"{k}-{a}" for k, a in ARCHS]


def build(spec: dict[str, Any]) -> torch.nn.Module:
    return lookup(spec["kind"], spec["arch"]).build(spec)


def small_spec(kind: str, arch: str) -> dict[str, Any]:
    return lookup(kind, arch).spec(SimpleNamespace(arch=arch, **vars(SMALL)))


def small_model(kind: str, arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(small_spec(kind, arch)).eval()


def batch(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) N x 1 x 28 x 28 in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    clean = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float()
    noisy = (clean + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return noisy, clean


def unet_spec(channels: int = 4, **changes: Any) -> dict[str, Any]:
    return {"kind": "dae", "arch": "unet", "channels": channels, **UNET_DEFAULTS, **changes}


def n_weights(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("kind", "arch"), ARCHS, ids=ARCH_IDS)
def test_every_arch_builds_and_denoises_to_same_shape_in_unit_range(kind: str, arch: str) -> None:
    spec = small_spec(kind, arch)
    assert spec["kind"] == kind and spec["arch"] == arch
    model = small_model(kind, arch)
    assert isinstance(model, REGISTRY[kind, arch].cls)
    assert isinstance(model, DAEBase if kind == "dae" else VAEBase)
    noisy, _ = batch()
    with torch.no_grad():
        out = model(noisy)
    assert out.shape == noisy.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_the_registry_holds_both_kinds_and_both_layouts() -> None:
    assert set(REGISTRY) == {
        ("dae", "unet"),
        ("dae", "reference"),
        ("vae", "conv"),
        ("vae", "reference"),
    }


@pytest.mark.parametrize(("kind", "arch"), ARCHS, ids=ARCH_IDS)
def test_spec_holds_exactly_the_entry_hparams(kind: str, arch: str) -> None:
    entry = REGISTRY[kind, arch]
    extra = SimpleNamespace(**vars(SMALL), arch=arch, beta=1.0, lr=0.1, epochs=3)
    spec = entry.spec(extra)  # keys outside the entry's hparams are left out
    assert list(spec) == ["kind", "arch", *entry.hparams]
    assert all(spec[key] == getattr(SMALL, key) for key in entry.hparams)
    assert isinstance(build(spec), entry.cls)


@pytest.mark.parametrize(("kind", "arch"), ARCHS, ids=ARCH_IDS)
def test_build_does_not_depend_on_the_order_of_the_spec(kind: str, arch: str) -> None:
    spec = small_spec(kind, arch)
    torch.manual_seed(0)
    model = build(spec)
    torch.manual_seed(0)
    shuffled = build(dict(reversed(list(spec.items()))))
    assert list(model.state_dict()) == list(shuffled.state_dict())
    assert all(torch.equal(v, shuffled.state_dict()[k]) for k, v in model.state_dict().items())


def test_each_entry_gives_its_kind_its_loss() -> None:
    assert lookup("dae", "reference").loss_of(SimpleNamespace(arch="reference")) is dae_loss
    cfg = SimpleNamespace(arch="conv", beta=0.5, kl_warmup_epochs=4)
    loss_fn = lookup("vae", "conv").loss_of(cfg)
    model = small_model("vae", "conv")
    noisy, clean = batch()
    torch.manual_seed(1)
    loss, terms = loss_fn(model, noisy, clean, 2.0)
    torch.manual_seed(1)
    expected = vae_loss(model, noisy, clean, 2.0, beta=0.5, warmup_epochs=4)
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(loss, terms["recon"] + 0.5 * 0.5 * terms["kl"])


def test_spec_holds_only_what_rebuilds_the_model() -> None:
    assert small_spec("dae", "unet") == unet_spec(4)
    assert small_spec("dae", "reference") == {"kind": "dae", "arch": "reference", "channels": 4}
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
    assert n_weights(build(unet_spec(8))) > n_weights(build(unet_spec(4)))


# --------------------------------------------------------------------------- U-Net scaling

# (levels, blocks, block, fold): every shape the params allow at least once
UNET_SHAPES = [
    (0, 1, "plain", 2),
    (1, 1, "plain", 2),
    (1, 2, "residual", 2),
    (0, 3, "residual", 1),
    (1, 1, "plain", 1),
    (2, 1, "plain", 1),
    (2, 2, "residual", 1),
]


@pytest.mark.parametrize(("levels", "blocks", "block", "fold"), UNET_SHAPES)
def test_unet_scales_with_levels_blocks_block_and_fold(
    levels: int, blocks: int, block: str, fold: int
) -> None:
    model = build(unet_spec(4, levels=levels, blocks=blocks, block=block, fold=fold)).eval()
    assert isinstance(model, UNet)
    seen: dict[str, tuple[int, ...]] = {}
    model.stem.register_forward_hook(lambda m, i, out: seen.update(stem=tuple(out.shape)))
    model.middle.register_forward_hook(lambda m, i, out: seen.update(middle=tuple(out.shape)))
    noisy, _ = batch(n=2)
    with torch.no_grad():
        out = model(noisy)
    assert out.shape == noisy.shape and out.min() >= 0 and out.max() <= 1
    side = 28 // fold
    assert seen["stem"] == (2, 4, side, side)  # fold 2: 14x14, fold 1: full resolution
    deep = side // 2**levels  # each level halves the size and doubles the width
    assert seen["middle"] == (2, 4 * 2**levels, deep, deep)
    assert len(model.downs) == len(model.ups) == len(model.encoders) == levels
    assert all(len(stack) == blocks for stack in [*model.encoders, model.middle, *model.decoders])
    residual = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(residual) == (blocks * (2 * levels + 1) if block == "residual" else 0)
    has_norm = any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert has_norm == (block == "residual")


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ({"levels": 0}, {"levels": 1}),
        ({"fold": 1, "levels": 1}, {"fold": 1, "levels": 2}),
        ({"blocks": 1}, {"blocks": 3}),
        ({"block": "plain"}, {"block": "residual"}),
    ],
    ids=["levels", "levels-fold-1", "blocks", "residual"],
)
def test_unet_weights_grow_with_its_size(smaller: dict, larger: dict) -> None:
    assert n_weights(build(unet_spec(4, **larger))) > n_weights(build(unet_spec(4, **smaller)))


def dae_params(**changes: Any) -> dict[str, Any]:
    return set_dotted(copy.deepcopy(DEFAULT_PARAMS), {f"dae.{k}": v for k, v in changes.items()})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"levels": 2, "fold": 2}, ["dae.levels = 2", "dae.fold = 2", "dae.levels <= 1"]),
        ({"levels": 3, "fold": 1}, ["dae.levels", "less than or equal to 2", "got 3"]),
        ({"levels": -1}, ["dae.levels", "greater than or equal to 0"]),
        ({"blocks": 0}, ["dae.blocks", "greater than 0"]),
        ({"blocks": 9}, ["dae.blocks", "less than or equal to 8"]),
        ({"block": "dense"}, ["dae.block", "'plain' or 'residual'"]),
        ({"fold": 4}, ["dae.fold", "1 or 2"]),
    ],
    ids=["too-deep-for-fold-2", "too-deep", "negative-levels", "no-blocks", "many-blocks",
         "unknown-block", "fold-4"],
)  # fmt: skip
def test_invalid_unet_shapes_are_refused_by_the_params(changes: dict, expected: list[str]) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(dae_params(**changes))
    message = str(info.value)
    assert all(fragment in message for fragment in expected), message


def test_dae_params_refuse_levels_too_deep_for_the_fold() -> None:
    fields = {**parse_params(DEFAULT_PARAMS).dae.model_dump(), "levels": 2, "fold": 2}
    with pytest.raises(ValidationError, match=r"dae\.levels = 2 halves the 14x14 feature map"):
        DAEParams(**fields)
    assert DAEParams(**{**fields, "fold": 1}).levels == 2


def test_the_reference_dae_ignores_the_unet_keys() -> None:
    params = parse_params(dae_params(arch="reference", levels=2, fold=2))
    spec = lookup("dae", "reference").spec(params.dae)
    assert spec == {"kind": "dae", "arch": "reference", "channels": 32}
    assert parse_params(dae_params(levels=2, fold=1)).dae.levels == 2  # 28 -> 14 -> 7


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


# ------------------------------------------------------------------------------ model files


def saved(tmp_path: Path, kind: str = "dae", arch: str = "unet") -> Path:
    path = tmp_path / "models" / f"{kind}.pt"
    path.parent.mkdir(exist_ok=True)
    save_model(small_model(kind, arch), small_spec(kind, arch), path)
    return path


def refusal(path: Path, kind: str) -> str:
    """The message of the PipelineError `load_model` raises; it names the file and the stage."""
    with pytest.raises(PipelineError) as info:
        load_model(path, kind)
    message = str(info.value)
    assert str(path) in message and f"dvc repro train@{kind}" in message, message
    return message


@pytest.mark.parametrize(("kind", "arch"), ARCHS, ids=ARCH_IDS)
def test_save_then_load_gives_identical_outputs(tmp_path: Path, kind: str, arch: str) -> None:
    spec = small_spec(kind, arch)
    model = small_model(kind, arch, seed=3)
    path = tmp_path / f"{kind}.pt"
    save_model(model, spec, path)
    assert tensorfile.load(path, made_by="test", max_bytes=2**30)[0] == {"spec": spec}
    loaded = load_model(path, kind)
    assert isinstance(loaded, REGISTRY[kind, arch].cls)
    assert not loaded.training
    noisy, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded(noisy), model(noisy))
    other = small_model(kind, arch, seed=4)  # a differently initialised model differs
    with torch.no_grad():
        assert not torch.equal(other(noisy), model(noisy))


def damaged_model(path: Path, how: str) -> None:
    """Write a broken VAE file at `path`."""
    spec = small_spec("vae", "conv")
    state = small_model("vae", "conv").state_dict()
    if how in ("truncated", "garbage"):
        save_model(small_model("vae", "conv"), spec, path)
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2] if how == "truncated" else b"\x00no\xff" * 50)
    elif how == "no-spec":
        tensorfile.save(path, {}, state)
    elif how == "unknown-arch":
        tensorfile.save(path, {"spec": {**spec, "arch": "x"}}, state)
    elif how == "list-spec":
        tensorfile.save(path, {"spec": [1]}, {})
    else:  # files torch reads but this pipeline never wrote: no checksum
        blob = {"spec": spec, "state_dict": state} if how == "unchecked" else [spec, state]
        torch.save(torch.zeros(3) if how == "tensor" else blob, path)


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "no-spec", "unknown-arch", "list-spec", "unchecked", "not-a-dict",
     "tensor"],
)  # fmt: skip
def test_damaged_model_file_names_file_and_stage(tmp_path: Path, how: str) -> None:
    path = tmp_path / "models" / "vae.pt"
    path.parent.mkdir()
    damaged_model(path, how)
    refusal(path, "vae")


def test_missing_model_file_names_file_and_stage(tmp_path: Path) -> None:
    assert "missing" in refusal(tmp_path / "models" / "dae.pt", "dae")


def test_a_model_file_with_one_flipped_bit_is_refused_by_its_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    flip_a_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch itself sees nothing wrong
    assert "checksum" in refusal(path, "dae")


@pytest.mark.parametrize(
    ("change", "bound"),
    [({"levels": 40}, "levels: Input should be less than or equal to 2"),
     ({"channels": 100_000}, f"channels: Input should be less than or equal to {MAX_CHANNELS}")],
    ids=["levels", "channels"],
)  # fmt: skip
def test_a_stored_spec_beyond_the_params_bounds_is_refused_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, bound: str
) -> None:
    path = tmp_path / "dae.pt"
    tensorfile.save(path, {"spec": {**small_spec("dae", "unet"), **change}}, {})
    monkeypatch.setattr(UNet, "__init__", lambda *a, **k: pytest.fail("the model was built"))
    start = time.perf_counter()
    assert bound in refusal(path, "dae")
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("how", ["compressed", "too-large"])
def test_a_model_file_is_sized_up_before_torch_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A compressed member (torch never writes one: a zip bomb) or more stored bytes than any
    model the params allow is refused from the zip's directory alone."""
    path = saved(tmp_path)
    if how == "compressed":
        with zipfile.ZipFile(path) as archive:
            members = [(m.filename, archive.read(m)) for m in archive.infolist()]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    else:
        monkeypatch.setattr(registry, "MAX_MODEL_BYTES", path.stat().st_size // 2)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    message = refusal(path, "dae")
    assert ("compressed" if how == "compressed" else "bytes of data where at most") in message


@pytest.mark.parametrize("how", ["wider", "missing-tensor", "float64", "vae-latent"])
def test_stored_tensors_that_do_not_fit_the_spec_are_refused(tmp_path: Path, how: str) -> None:
    kind, arch = ("vae", "conv") if how == "vae-latent" else ("dae", "unet")
    spec = small_spec(kind, arch)
    state = small_model(kind, arch).state_dict()
    if how == "wider":
        state = build({**spec, "channels": 8}).state_dict()
    elif how == "missing-tensor":
        del state[next(iter(state))]
    elif how == "float64":
        state = {key: value.double() for key, value in state.items()}
    else:
        spec = {**spec, "latent_dim": LATENT_DIM + 1}
    path = tmp_path / f"{kind}.pt"
    tensorfile.save(path, {"spec": spec}, state)
    assert "tensors do not match" in refusal(path, kind)


@pytest.mark.parametrize(("given", "held"), [("dae", "vae"), ("vae", "dae")])
@pytest.mark.parametrize("arch", ["reference", "default"])
def test_a_file_of_the_other_kind_is_refused_naming_file_content_and_stage(
    tmp_path: Path, given: str, held: str, arch: str
) -> None:
    arch = arch if arch == "reference" else {"dae": "unet", "vae": "conv"}[held]
    path = tmp_path / "models" / f"{given}.pt"
    path.parent.mkdir()
    save_model(small_model(held, arch), small_spec(held, arch), path)
    message = refusal(path, given)
    assert f"holds a {held!r} model ({arch})" in message and f"not a {given!r} model" in message
    assert isinstance(load_model(path, held), REGISTRY[held, arch].cls)  # as its own kind: fine


def test_a_spec_the_schema_refuses_across_keys_is_refused_on_load(tmp_path: Path) -> None:
    """levels 2 with fold 2 halves 14x14 to an odd size: each key is in range, the pair is not."""
    spec = {"kind": "dae", "arch": "unet", "channels": 4, "levels": 2, "blocks": 1,
            "block": "plain", "fold": 2}  # fmt: skip
    path = tmp_path / "dae.pt"
    save_model(UNet(4, levels=2, fold=2), spec, path)
    with pytest.raises(PipelineError, match=r"not a valid model file .*train@dae"):
        load_model(path, "dae")
