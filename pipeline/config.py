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

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key written twice in one mapping (PyYAML would
    silently keep the last one, hiding the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate `path`; raise :class:`ParamsError` naming every bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the project root)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path} cannot be read as UTF-8 text ({e})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    return parse_params(raw, source=str(path))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """`line L, column C: problem (context at line L', column C')`, 1-based like editors."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem_mark is None:
        return str(e)
    mark = e.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
    if e.context and e.context_mark is not None:
        where = f"line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
        text += f" ({e.context} at {where})"
    return text


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
    """Why a number was read as a string: quotes, or YAML 1.1's `1e-3` (it needs `1.0e-3`)."""
    if kind not in ("int_type", "float_type") or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if "e" in value.lower() and "." not in value:
        return "; YAML reads exponent notation without a dot as a string: write e.g. 1.0e-3"
    return "; write the number without quotes"


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the section at `loc` (a path of field names from :class:`Params`)."""
    model: type[BaseModel] = Params
    for name in loc:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
