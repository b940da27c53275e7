"""Typed, validated `params.yaml`: the only module that reads it.

Every stage calls :func:`load_params`, which validates the whole file (types, ranges, allowed
values, unknown keys) before any work starts, then uses only its own sections.
"""

from __future__ import annotations

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

from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.messages import describe
from pipeline.plumbing.yamlio import YAMLFileError, YAMLFileNotFoundError, read_yaml

MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000
# Upper bounds on sizes, so that a typo (latent_dim: 100000) is refused at once instead of
# failing in the allocator after minutes. Each is far above what fits this task.
MAX_CHANNELS = 256
MAX_LATENT = 1024
MAX_BATCH = 8192
MAX_EVAL_BATCH = 10_000
MAX_EPOCHS = 1000

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
MIRROR_SCHEMES = ("http", "https", "file")  # or no scheme: a local folder
PARAMS_FILE = Path("params.yaml")  # DVC's default params file, read from the project root
NoiseKind = Literal["gaussian", "salt_pepper", "speckle"]


def check_mirror(mirror: str) -> str:
    """`mirror` itself, or a ValueError naming an unsupported URL scheme."""
    scheme = urlparse(mirror).scheme
    if scheme and scheme not in MIRROR_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r} in {mirror!r}: use http(s)://, file:// or a folder"
        )
    return mirror


Mirror = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(check_mirror)
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

    kind: NoiseKind
    std: NonNegativeFloat
    amount: Fraction
    clip: bool

    @property
    def level(self) -> float:
        """`amount` for salt-and-pepper noise, `std` for gaussian and speckle noise."""
        return self.amount if self.kind == "salt_pepper" else self.std

    def at(self, level: float) -> NoiseParams:
        """The same noise at another `level` (its `amount` or `std`, by kind)."""
        return self.model_copy(update={"amount" if self.kind == "salt_pepper" else "std": level})


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


class ClassifierParams(Section):
    """The judge of readability (`classifier` stage): a small CNN on the clean images."""

    channels: int = Field(gt=0, le=MAX_CHANNELS)
    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    lr: PositiveFloat


class EvaluateParams(Section):
    batch_size: int = Field(gt=0, le=MAX_EVAL_BATCH)
    bootstrap_resamples: int = Field(ge=100, le=10_000)  # for the 95% intervals
    blur_sigma: PositiveFloat
    noise_levels: list[NonNegativeFloat] = Field(min_length=1)


class PlotParams(Section):
    n_digits: int = Field(gt=0, le=100)
    n_worst: int = Field(gt=0, le=50)
    n_prior_samples: int = Field(gt=0, le=400)


RelPath = Annotated[str, StringConstraints(pattern=r"^[^/\s]\S*$")]  # relative, no spaces


class PathsParams(Section):
    """Where the stages read and write, relative to the project root (dvc.yaml: `${paths.*}`)."""

    params_ok: RelPath
    mnist: Annotated[str, StringConstraints(pattern=r"^([^/\s]\S*/)?MNIST$")]  # torchvision's name
    noisy: RelPath
    models: RelPath
    train_logs: RelPath
    test_metrics: RelPath
    per_digit: RelPath
    robustness: RelPath
    vae_kl: RelPath
    denoised: RelPath
    worst: RelPath
    latent: RelPath
    prior_samples: RelPath
    report: RelPath
    report_mse_vs_noise: RelPath
    report_per_digit: RelPath
    report_perception: RelPath


class Params(Section):
    """The whole of `params.yaml`."""

    seed: int = Field(ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"]
    data: DataParams
    noise: NoiseParams
    dae: DAEParams
    vae: VAEParams
    classifier: ClassifierParams
    evaluate: EvaluateParams
    plot: PlotParams
    paths: PathsParams

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
        for name in ("dae", "vae", "classifier"):
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


def load_params(path: Path | str = PARAMS_FILE, schema: type[Section] = Params) -> Any:
    """Read `path` as DVC does (YAML 1.2, see `pipeline.plumbing.yamlio`) and validate it with
    `schema` (`Params`: the whole params.yaml); raise :class:`ParamsError` naming every bad key."""
    try:
        raw = read_yaml(path)
    except YAMLFileNotFoundError as e:
        raise ParamsError(f"{e} (run from the project root)") from None
    except YAMLFileError as e:
        raise ParamsError(str(e)) from None
    return parse_params(raw, source=str(path), schema=schema)


def parse_params(raw: Any, source: str = "params", schema: type[Section] = Params) -> Any:
    """Validate an already-parsed mapping (used by :func:`load_params` and tests)."""
    if raw is None:
        raise ParamsError(
            f"{source} is empty: expected the sections {', '.join(schema.model_fields)}"
        )
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {describe(err, schema)}" for err in e.errors())
        raise ParamsError(f"{source} has {e.error_count()} invalid value(s):\n{problems}") from None
