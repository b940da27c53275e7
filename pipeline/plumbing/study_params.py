"""Typed, validated `study/params.yaml`: the noise-level study's own budget and paths."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from pipeline.plumbing.config import (
    MAX_BATCH,
    MAX_EPOCHS,
    MNIST_TEST_IMAGES,
    MNIST_TRAIN_IMAGES,
    NonNegativeFloat,
    RelPath,
    Section,
    load_params,
)

STUDY_FILE = Path("study/params.yaml")


class StudyBudget(Section):
    """What the study trains: each `levels` x `seeds` entry and one blind DAE per seed."""

    levels: list[NonNegativeFloat] = Field(min_length=1)  # training levels of noise.kind
    seeds: list[int] = Field(min_length=1)  # each entry's seed, for every random stream
    test_levels: list[NonNegativeFloat] = Field(min_length=1)
    blind_levels: list[NonNegativeFloat] = Field(min_length=2, max_length=2)  # [low, high]
    train_size: int = Field(gt=0)
    val_size: int = Field(gt=0)
    test_size: int = Field(gt=0, le=MNIST_TEST_IMAGES)
    epochs: int = Field(gt=0, le=MAX_EPOCHS)  # replaces dae.epochs and vae.epochs
    batch_size: int = Field(gt=0, le=MAX_BATCH)  # replaces their batch_size

    @model_validator(mode="after")
    def _consistent(self) -> StudyBudget:
        if self.train_size + self.val_size > MNIST_TRAIN_IMAGES:
            raise ValueError(
                f"study.train_size + study.val_size = {self.train_size + self.val_size} "
                f"exceeds the {MNIST_TRAIN_IMAGES} MNIST training images"
            )
        low, high = self.blind_levels
        if low >= high:
            raise ValueError(f"study.blind_levels = [{low}, {high}]: expected low < high")
        untested = [lv for lv in self.levels if lv not in self.test_levels]
        if untested:
            raise ValueError(f"study.levels {untested} must also be in study.test_levels")
        if len(set(self.seeds)) < len(self.seeds) or len(set(self.levels)) < len(self.levels):
            raise ValueError("study.seeds and study.levels must not repeat a value")
        return self


class StudyPaths(Section):  # the `outputs` section
    """Relative to the project root (the study's stages run there: `wdir: ..`)."""

    models: RelPath  # <kind>-<level>-<seed>.pt
    runs: RelPath  # one JSON per trained model: its metrics at every test level
    summary: RelPath  # metrics: mean and spread over seeds per level
    curves: RelPath  # plot data: matched-level MSE per kind
    cross: RelPath  # train level x test level MSE, mean over seeds
    page: RelPath  # the study's report page
    figure: RelPath  # its figure


class Study(Section):
    """The whole of `study/params.yaml`."""

    study: StudyBudget
    outputs: StudyPaths


def load_study(path: Path | str = STUDY_FILE) -> Study:
    """Validate `study/params.yaml` like params.yaml (every bad key named)."""
    return load_params(path, schema=Study)
