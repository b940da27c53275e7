"""Stage `validate`: checks the whole of params.yaml before any other stage runs.

Reads params.yaml (all of it, as DVC reads it). Writes `paths.params_ok` (data/params.ok),
whose content never changes: every other stage depends on it, so a bad value stops
`dvc repro` here, before DVC removes the previous outputs of the stages that would use it,
and a good edit reruns only the stages whose own keys changed.
"""

from pathlib import Path

from pipeline.plumbing.cli import stage
from pipeline.plumbing.config import load_params

OK_TEXT = "params.yaml is valid\n"


@stage
def main() -> None:
    marker = Path(load_params().paths.params_ok)
    if not marker.exists() or marker.read_text() != OK_TEXT:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(OK_TEXT)
    print("params.yaml is valid")


if __name__ == "__main__":
    main()
