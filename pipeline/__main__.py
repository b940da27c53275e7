"""`python -m pipeline`: list the stages of dvc.yaml, in the order `dvc repro` runs them."""

import importlib
from pathlib import Path

from pipeline.plumbing.yamlio import read_yaml

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def stage_names(dvc_yaml: Path = DVC_YAML) -> list[str]:
    """Stage names as DVC shows them (`train@dae`, `train@vae` for the matrix stage)."""
    names = []
    for name, definition in read_yaml(dvc_yaml)["stages"].items():
        matrix = definition.get("matrix")
        values = next(iter(matrix.values())) if matrix else None
        names += [f"{name}@{value}" for value in values] if values else [name]
    return names


def main() -> None:
    print("denoise-pipeline stages (run all with `dvc repro`, one with `dvc repro <stage>`;")
    print("`python -m pipeline.<module> --help` says what a stage reads and writes):\n")
    for name in stage_names():
        doc = importlib.import_module(f"pipeline.{name.split('@')[0]}").__doc__ or ""
        summary = doc.strip().splitlines()[0].split(": ", 1)[-1]
        print(f"  {name:<11} {summary}")


if __name__ == "__main__":
    main()
