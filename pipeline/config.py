"""Typed, validated `params.yaml`: the only module that reads it.

Every stage calls :func:`load_params`, which validates the whole file (types, ranges, allowed
values, unknown keys) before any work starts, then uses only its own sections.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pipeline.errors import PipelineError
from pipeline.paths import PARAMS_FILE
from pipeline.yamlio import YAMLFileError, YAMLFileNotFoundError, read_yaml

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
# Upper bounds on sizes, so that a typo (latent_dim: 100000) is refused at once instead of
# failing in the allocator after minutes. Each is far above what fits this task.
MAX_CHANNELS = 256
MAX_LATENT = 1024
MAX_BATCH = 8192
MAX_EVAL_BATCH = 10_000
MAX_EPOCHS = 1000

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
MIRROR_SCHEMES = ("http", "https", "file")  # or no scheme: a local folder


def _check_mirror(mirror: str) -> str:
    scheme = urlparse(mirror).scheme
    if scheme and scheme not in MIRROR_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r} in {mirror!r}: use http(s)://, file:// or a folder"
        )
    return mirror


Mirror = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(_check_mirror)
]


class ParamsError(PipelineError):
    """`params.yaml` is missing, unreadable or holds an invalid value."""


class Section(BaseModel):
    """A params section: strict types, no NaN/inf, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataParams(Section):
    """`download` reads the mirrors and timeout; `make_noisy` reads the split sizes."""

    mirrors: list[Mirror] = Field(min_length=1)
    timeout_s: PositiveFloat
    train_size: int = Field(gt=0, le=MNIST_TRAIN_IMAGES)
    val_size: int = Field(gt=0, lt=MNIST_TRAIN_IMAGES)
    test_size: int = Field(gt=0, le=MNIST_TEST_IMAGES)


class NoiseParams(Section):
    """Corruption applied by `make_noisy`; `level` is the strength for the chosen kind."""

    kind: Literal["gaussian", "salt_pepper", "speckle"]
    std: NonNegativeFloat
    amount: Fraction
    clip: bool

    @property
    def level(self) -> float:
        """`amount` for salt-and-pepper noise, `std` for gaussian and speckle noise."""
        return self.amount if self.kind == "salt_pepper" else self.std


class TrainParams(Section):
    """Optimisation settings shared by both models."""

    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    fresh_noise: bool  # draw new training noise every epoch (seeded by seed and epoch)
    precision: Literal["fp32", "bf16"]  # bf16: autocast the forward pass to bfloat16


class DAEParams(TrainParams):
    arch: Literal["unet", "reference"]
    channels: int = Field(gt=0, le=MAX_CHANNELS)  # width of the first level
    levels: int = Field(ge=0, le=2)  # unet: downsamplings (each halves the size, doubles width)
    blocks: int = Field(gt=0, le=8)  # unet: blocks per level, encoder and decoder
    block: Literal["plain", "residual"]  # unet: conv+ReLU, or GroupNorm+SiLU residual pairs
    fold: Literal[1, 2]  # unet: 2 works at 14x14 (pixel unshuffle), 1 at full 28x28

    @model_validator(mode="after")
    def _fits_image(self) -> DAEParams:
        side = 28 // self.fold
        if self.arch == "unet" and side % 2**self.levels:
            raise ValueError(
                f"dae.levels = {self.levels} halves the {side}x{side} feature map "
                f"(dae.fold = {self.fold}) to an odd size; allowed: dae.levels <= "
                f"{2 if self.fold == 1 else 1} with dae.fold = {self.fold}"
            )
        return self


class VAEParams(TrainParams):
    arch: Literal["conv", "reference"]
    channels: int = Field(gt=0, le=MAX_CHANNELS)
    latent_dim: int = Field(gt=0, le=MAX_LATENT)
    beta: NonNegativeFloat
    kl_warmup_epochs: int = Field(ge=0)


class EvaluateParams(Section):
    batch_size: int = Field(gt=0, le=MAX_EVAL_BATCH)
    blur_sigma: PositiveFloat
    noise_levels: list[NonNegativeFloat] = Field(min_length=1)


class PlotParams(Section):
    n_digits: int = Field(gt=0, le=100)
    n_prior_samples: int = Field(gt=0, le=400)


class Params(Section):
    """The whole of `params.yaml`."""

    seed: int = Field(ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"]
    data: DataParams
    noise: NoiseParams
    dae: DAEParams
    vae: VAEParams
    evaluate: EvaluateParams
    plot: PlotParams

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        """Checks across keys; each message names every dotted key involved."""
        data = self.data
        if data.train_size + data.val_size > MNIST_TRAIN_IMAGES:
            raise ValueError(
                f"data.train_size + data.val_size = {data.train_size} + {data.val_size} = "
                f"{data.train_size + data.val_size} exceeds the {MNIST_TRAIN_IMAGES} MNIST "
                "training images"
            )
        for name in ("dae", "vae"):
            size = getattr(self, name).batch_size
            if size > data.train_size:
                raise ValueError(
                    f"{name}.batch_size = {size} is larger than the training set "
                    f"(data.train_size = {data.train_size})"
                )
        too_big = [level for level in self.evaluate.noise_levels if level > 1]
        if self.noise.kind == "salt_pepper" and too_big:
            raise ValueError(
                f"evaluate.noise_levels {too_big} must be <= 1: with noise.kind = salt_pepper "
                "a level is the fraction of pixels changed"
            )
        return self


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read `path` as DVC does (YAML 1.2, see `pipeline.yamlio`) and validate it; raise
    :class:`ParamsError` naming every bad key."""
    try:
        raw = read_yaml(path)
    except YAMLFileNotFoundError as e:
        raise ParamsError(f"{e} (run from the project root)") from None
    except YAMLFileError as e:
        raise ParamsError(str(e)) from None
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (used by :func:`load_params` and tests)."""
    if raw is None:
        raise ParamsError(
            f"{source} is empty: expected the sections {', '.join(Params.model_fields)}"
        )
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise ParamsError(f"{source} has {e.error_count()} invalid value(s):\n{problems}") from None


def _describe(err: dict[str, Any]) -> str:
    """One line per pydantic error: the dotted key, what is wrong and what is allowed."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]  # list indexes dropped
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" Did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        return f"{key}: unknown key.{hint} Allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":  # a validator's own message, which names the keys involved
        text = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{key}: {text}" if key else text
    if kind == "model_type":
        return f"{key}: expected a section (a mapping of keys), got {value!r}"
    shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
    return f"{key}: {err['msg']} (got {shown}){_number_hint(kind, value)}"


def _number_hint(kind: str, value: Any) -> str:
    """Why a number was read as a string: it was quoted (YAML 1.2, as DVC reads it, takes
    `1e-3`, `010` and `.5` as numbers)."""
    if kind not in ("int_type", "float_type") or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return "; write the number without quotes" if math.isfinite(number) else ""


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the section at `loc` (a path of field names from :class:`Params`)."""
    model: type[BaseModel] = Params
    for name in loc:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
