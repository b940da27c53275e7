"""`python -m pipeline`: list the stages, in the order `dvc repro` runs them."""

import importlib

STAGES = ("validate", "download", "make_noisy", "train_dae", "train_vae", "evaluate", "plot")


def main() -> None:
    print("denoise-pipeline stages (run all with `dvc repro`, one with `dvc repro <stage>`;")
    print("`python -m pipeline.<stage> --help` says what a stage reads and writes):\n")
    for name in STAGES:
        doc = importlib.import_module(f"pipeline.{name}").__doc__ or ""
        summary = doc.strip().splitlines()[0].split(": ", 1)[-1]
        print(f"  {name:<11} {summary}")


if __name__ == "__main__":
    main()
