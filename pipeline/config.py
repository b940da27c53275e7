"""Typed, validated `params.yaml`: the only module that reads it.

Every stage calls :func:`load_params`, which validates the whole file (types, ranges, allowed
values, unknown keys) before any work starts, then uses only its own sections.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.runtime import PipelineError

PARAMS_FILE = Path("params.yaml")
# Stage inputs and outputs (the same paths dvc.yaml declares), relative to the project root.
DATA_DIR = Path("data")  # torchvision layout: data/MNIST/raw
NOISY_DIR = DATA_DIR / "noisy"  # train.pt, val.pt, test.pt
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
TRAIN_LOG_DIR = METRICS_DIR / "train"  # dvclive folders, one per model
PLOTS_DIR = Path("plots")
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ParamsError(PipelineError):
    """`params.yaml` is missing, unreadable or holds an invalid value."""


class Section(BaseModel):
    """A params section: strict types, no NaN/inf, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataParams(Section):
    """`download` reads the mirrors and timeout; `make_noisy` reads the split sizes."""

    mirrors: list[str] = Field(min_length=1)
    timeout_s: PositiveFloat
    train_size: int = Field(gt=0, le=MNIST_TRAIN_IMAGES)
    val_size: int = Field(gt=0, lt=MNIST_TRAIN_IMAGES)
    test_size: int = Field(gt=0, le=MNIST_TEST_IMAGES)

    @model_validator(mode="after")
    def _fits_in_mnist(self) -> DataParams:
        if self.train_size + self.val_size > MNIST_TRAIN_IMAGES:
            raise ValueError(
                f"train_size + val_size = {self.train_size + self.val_size} exceeds the "
                f"{MNIST_TRAIN_IMAGES} MNIST training images"
            )
        return self


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

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    weight_decay: NonNegativeFloat


class DAEParams(TrainParams):
    arch: Literal["unet", "reference"]
    channels: PositiveInt


class VAEParams(TrainParams):
    arch: Literal["conv", "reference"]
    channels: PositiveInt
    latent_dim: PositiveInt
    beta: NonNegativeFloat
    kl_warmup_epochs: int = Field(ge=0)


class EvaluateParams(Section):
    batch_size: PositiveInt
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
    def _batches_fit(self) -> Params:
        for name in ("dae", "vae"):
            size = getattr(self, name).batch_size
            if size > self.data.train_size:
                raise ValueError(
                    f"{name}.batch_size = {size} is larger than the training set "
                    f"(data.train_size = {self.data.train_size})"
                )
        return self


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate `path`; raise :class:`ParamsError` naming every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the project root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping (used by :func:`load_params` and tests)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise ParamsError(f"{source} has {e.error_count()} invalid value(s):\n{problems}") from None


def _describe(err: dict[str, Any]) -> str:
    """One line per pydantic error: the dotted key, what is wrong and what is allowed."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "<top level>"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" Did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        return f"{key}: unknown key.{hint} Allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    value = err.get("input")
    shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
    return f"{key}: {err['msg']} (got {shown})"


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the section at `loc` (a path of field names from :class:`Params`)."""
    model: type[BaseModel] = Params
    for name in loc:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
