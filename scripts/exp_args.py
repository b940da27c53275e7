"""Print a dotted-keys overrides file (e.g. configs/gpu.yaml) as `dvc exp run` arguments.

    dvc exp run -n gpu $(python scripts/exp_args.py configs/gpu.yaml)
    python scripts/exp_args.py configs/gpu.yaml --apply params.yaml   # edit params.yaml instead

Values are scalars without spaces (each `-S key=value` is one word for the shell); every key
must already exist in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.plumbing.config import PARAMS_FILE
from pipeline.plumbing.errors import PipelineError
from pipeline.plumbing.yamlio import read_yaml

DELETE = object()  # as a value in `set_dotted` changes: remove the key


def set_dotted(tree: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`vae.latent_dim`) in a nested mapping in place (DELETE removes one).
    The one copy: tests/helpers.py loads it from here."""
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return tree


def overrides(path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of `path`, each checked to name a value of `params` and be a scalar."""
    found = read_yaml(path)
    if not isinstance(found, dict) or not found:
        raise PipelineError(f"{path}: expected a mapping of dotted keys to values")
    for dotted, value in found.items():
        node: Any = params
        for key in str(dotted).split("."):
            if not isinstance(node, dict) or key not in node:
                raise PipelineError(f"{path}: {dotted} is not a key of {PARAMS_FILE}")
            node = node[key]
        if isinstance(value, dict | list) or " " in str(value):
            raise PipelineError(f"{path}: {dotted} must be a scalar without spaces")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", type=Path)
    parser.add_argument("--apply", type=Path, help="write the values into this params file")
    args = parser.parse_args()
    params = read_yaml(args.apply or PARAMS_FILE)
    values = overrides(args.overrides, params)
    if not args.apply:
        print(" ".join(f"-S {key}={json.dumps(v) if isinstance(v, bool) else v}"
                       for key, v in values.items()))  # fmt: skip
        return
    # JSON is YAML 1.2
    args.apply.write_text(json.dumps(set_dotted(params, values), indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        sys.exit(f"error: {e}")
