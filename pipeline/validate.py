"""Stage `validate`: checks the whole of params.yaml before any other stage runs.

Reads params.yaml (all of it, as DVC reads it). Writes data/params.ok, whose content never
changes: every other stage depends on it, so a bad value stops `dvc repro` here, before DVC
removes the previous outputs of the stages that would use it, and a good edit reruns only the
stages whose own keys changed.
"""

from pipeline.cli import stage
from pipeline.config import load_params
from pipeline.paths import PARAMS_OK

OK_TEXT = "params.yaml is valid\n"


@stage
def main() -> None:
    load_params()
    if not PARAMS_OK.exists() or PARAMS_OK.read_text() != OK_TEXT:
        PARAMS_OK.parent.mkdir(parents=True, exist_ok=True)
        PARAMS_OK.write_text(OK_TEXT)
    print("params.yaml is valid")


if __name__ == "__main__":
    main()
