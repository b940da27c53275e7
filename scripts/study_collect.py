"""Merge the study's slices (experiments `study-seed-<seed>`, already pulled) into the workspace:
study.seeds becomes the given seeds, each slice's study/dvc.lock entries (its trained models)
join the workspace's lock, and its run files (git-tracked metrics) are copied in. Then
`dvc checkout` brings the models from the cache and `dvc repro study/dvc.yaml` finds every
entry up to date but `summarize`. Used by scripts/study_slices.sh collect.

    python scripts/study_collect.py SEED...
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

LOCK = Path("study/dvc.lock")
PARAMS = Path("study/params.yaml")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiment_commit(name: str) -> str:
    """The commit of experiment `name` (its ref is refs/exps/<..>/<baseline>/<name>)."""
    refs = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines()
    found = [sha for ref, sha in (line.split() for line in refs) if ref.endswith(f"/{name}")]
    if len(found) != 1:
        sys.exit(f"study_collect: experiment {name!r} not found (dvc exp pull it first)")
    return found[0]


def main(seeds: list[int]) -> None:
    yaml = YAML()  # round trip: keeps the comments of study/params.yaml
    params = yaml.load(PARAMS)
    params["study"]["seeds"] = seeds
    yaml.dump(params, PARAMS)
    lock = yaml.load(LOCK.read_text()) if LOCK.exists() else {"schema": "2.0", "stages": {}}
    runs = Path(params["outputs"]["runs"])
    runs.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        commit = experiment_commit(f"study-seed-{seed}")
        theirs = yaml.load(git("show", f"{commit}:{LOCK}"))["stages"]
        for stage, entry in theirs.items():
            if stage.endswith(f"-{seed}") or stage.endswith(f"@{seed}"):  # this slice's models
                lock["stages"][stage] = entry
        for name in git("ls-tree", "--name-only", f"{commit}:{runs.as_posix()}").split():
            if name.endswith(f"-{seed}.json"):
                text = git("show", f"{commit}:{runs.as_posix()}/{name}")
                json.loads(text)  # a run file, not something else
                (runs / name).write_text(text)
    with LOCK.open("w") as f:
        yaml.dump(lock, f)
    print(f"study_collect: seeds {seeds} from {len(seeds)} experiment(s) into {LOCK} and {runs}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all(a.isdigit() for a in sys.argv[1:]):
        sys.exit("usage: python scripts/study_collect.py SEED...")
    main([int(a) for a in sys.argv[1:]])
