#!/usr/bin/env bash
# `bash bench/queue.sh` (docs/performance.md#the-noise-level-study): two small studies (2 levels,
# 1 seed each, 2,000 images, 1 epoch: 5 models each) queued as two experiments, run with -j 1,
# then -j 2, then -j 2 with OMP_NUM_THREADS=1. Run from the project root on a clean, committed
# checkout (queued runs see committed files only); it leaves the six experiments behind
# (`dvc exp remove --all-commits`).
set -uo pipefail
export PATH="$PWD/.venv/bin:$PATH"
small=(-S 'study/params.yaml:study.levels=[0.1,0.5]' -S 'study/params.yaml:study.train_size=2000' -S 'study/params.yaml:study.epochs=1')
run_case() {
    local label="$1" jobs="$2"
    for seed in 7 8; do
        dvc exp run --queue study/dvc.yaml "${small[@]}" -S "study/params.yaml:study.seeds=[$seed]" -n "q-$label-$seed" -q
    done
    local start=$SECONDS
    dvc queue start -j "$jobs" -q
    sleep 5
    while true; do
        status="$(dvc queue status 2>/dev/null)"
        if ! grep -qE "Queued|Running" <<<"$status"; then break; fi
        sleep 2
    done
    echo "$label: -j $jobs: $((SECONDS - start)) s"
    echo "$status" | tail -n 5
    dvc queue stop -q  # each case starts its own workers, with its own environment
    while dvc queue status 2>/dev/null | grep -qE "[1-9] (active|idle)"; do sleep 2; done
}
run_case serial 1
run_case parallel 2
OMP_NUM_THREADS=1 run_case parallel-1thread 2
