#!/usr/bin/env bash
# The steps of the `compare` job in .github/workflows/pr.yml, one subcommand a step, so that the
# job's logic runs (and is tested: tests/test_ci.py) outside GitHub too. Run from the
# project root with the venv's `dvc` and `python` on PATH (`make compare BASE=main` does).
#
#   ci_compare.sh fetch-base   git fetch the base branch into refs/heads/$BASE
#   ci_compare.sh pull         dvc pull then dvc repro; without a DVC remote, dvc repro alone.
#                              With a remote, a failed pull fails the step (no silent rebuild)
#   ci_compare.sh diff         dvc params diff and dvc metrics diff vs $BASE into $SUMMARY
#   ci_compare.sh plots        dvc plots diff vs $BASE into $PLOTS_DIR (default plots-diff)
#   ci_compare.sh gate         python -m pipeline.check_regression --rev $BASE, table into $SUMMARY
#   ci_compare.sh report       the report pages' text and tables (report/README.md, and
#                              study.md where the study has run; no images) into $SUMMARY, and the pages with their images into
#                              $REPORT_DIR (default report-page/, laid out as in the repository)
#
# BASE: the base branch (required by fetch-base, diff, plots, gate). SUMMARY: a markdown file to
# append to (default: $GITHUB_STEP_SUMMARY on GitHub, else standard output).
set -euo pipefail

step="${1:-}"
summary="${SUMMARY:-${GITHUB_STEP_SUMMARY:-/dev/stdout}}"

need_base() {
    if [[ -z "${BASE:-}" ]]; then
        echo "ci_compare.sh $step: set BASE to the branch to compare with (e.g. BASE=main)" >&2
        exit 2
    fi
}

case "$step" in
fetch-base)
    need_base
    git fetch --no-tags origin "+refs/heads/$BASE:refs/heads/$BASE"
    ;;
pull)
    if ! remote="$(dvc remote default 2>/dev/null)"; then
        remote=""
    fi
    if [[ -z "$remote" ]]; then
        echo "::notice title=No DVC remote::no default DVC remote in .dvc/config: reproducing the pipeline from scratch"
        dvc repro
        exit 0
    fi
    if ! dvc pull; then
        echo "::error title=dvc pull failed::could not pull from DVC remote '$remote'. Check its" \
            "credentials and endpoint (repository secrets, see docs/workflow.md) and that the" \
            "outputs of this commit were pushed (dvc push). Not reproducing instead: that would" \
            "hide a broken remote behind a long rebuild."
        exit 1
    fi
    # A no-op when the pulled outputs match dvc.lock; otherwise reruns what the change touched.
    dvc repro
    ;;
diff)
    need_base
    {
        echo "## Params and metrics vs \`$BASE\`"
        dvc params diff "$BASE" --md
        echo
        dvc metrics diff "$BASE" --md
        echo
    } >>"$summary"
    ;;
plots)
    need_base
    dvc plots diff "$BASE" --out "${PLOTS_DIR:-plots-diff}"
    ;;
gate)
    need_base
    # The gate prints its table anyway: --summary only for a file, not standard output.
    if [[ "$summary" == /dev/stdout ]]; then
        python -m pipeline.check_regression --rev "$BASE"
    else
        python -m pipeline.check_regression --rev "$BASE" --summary "$summary"
    fi
    ;;
report)
    if [[ ! -f report/README.md ]]; then
        echo "ci_compare.sh report: no report/README.md; run dvc repro first" >&2
        exit 1
    fi
    for page in report/README.md report/study.md; do  # the study's page once it has run
        if [[ -f "$page" ]]; then
            # image lines would not resolve in the job summary: the artifact has the images
            grep -v '^!\[' "$page" >>"$summary"
            echo >>"$summary"
        fi
    done
    out="${REPORT_DIR:-report-page}"
    mkdir -p "$out"
    cp -R report plots "$out/"
    ;;
*)
    echo "usage: ci_compare.sh fetch-base|pull|diff|plots|gate|report (see the top of $0)" >&2
    exit 2
    ;;
esac
