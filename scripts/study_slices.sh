#!/usr/bin/env bash
# The noise-level study across machines (the `study` jobs of .github/workflows/pr.yml, started
# by hand with workflow_dispatch): each job runs one slice, the study for one seed, as a DVC
# experiment and pushes it to the shared git and DVC remotes; a last job pulls every slice and
# summarizes them all. Tested by tests/test_study.py with two clones, a bare origin and a
# local DVC remote. Run from the project root with the venv's `dvc` and `python` on PATH.
#
#   study_slices.sh slice SEED        dvc exp run study/dvc.yaml with study.seeds = [SEED] as the
#                                     experiment study-seed-SEED; dvc exp push it to $REMOTE
#   study_slices.sh collect SEED...   dvc exp pull those slices; their study/dvc.lock entries
#                                     and runs into the workspace, their models (dvc pull); then
#                                     dvc repro study/dvc.yaml with study.seeds set to every
#                                     SEED: only `summarize` runs
#
# REMOTE: the git remote to push to and pull from (default: origin).
set -euo pipefail

remote="${REMOTE:-origin}"
step="${1:-}"
shift || true

case "$step" in
slice)
    if [[ $# -ne 1 ]]; then
        echo "usage: study_slices.sh slice SEED" >&2
        exit 2
    fi
    dvc pull validate download # MNIST from the DVC remote, as the other slices train on it
    dvc exp run study/dvc.yaml --name "study-seed-$1" --set-param "study/params.yaml:study.seeds=[$1]"
    dvc exp push "$remote" "study-seed-$1"
    ;;
collect)
    if [[ $# -lt 1 ]]; then
        echo "usage: study_slices.sh collect SEED..." >&2
        exit 2
    fi
    names=()
    for seed in "$@"; do
        names+=("study-seed-$seed")
    done
    dvc exp pull "$remote" "${names[@]}"
    python "$(dirname "$0")/study_collect.py" "$@"
    # the slices' models and the MNIST files they were trained on (from the cache, else the
    # DVC remote), so that the entries are up to date
    dvc pull validate download study/dvc.yaml
    dvc repro study/dvc.yaml
    ;;
*)
    echo "usage: study_slices.sh slice SEED | collect SEED... (see the top of $0)" >&2
    exit 2
    ;;
esac
