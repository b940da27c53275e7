#!/usr/bin/env bash
# The GPU measurement, run on a machine with one GPU from a copy of the repo that has the
# MNIST .gz files in .mnist/ (and, where dvc/dvclive/pydantic are missing, Python wheels in
# .whl/). Results go to $OUT (default: gpu-results/): logs, dvc.lock, metrics, plots.
#   1. the GPU configuration (configs/gpu.yaml) applied to params.yaml, whole `dvc repro`;
#   2. if time is left, the default params.yaml on the same GPU, for comparison.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MNIST_MIRROR="$PWD/.mnist" CUBLAS_WORKSPACE_CONFIG=:4096:8
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && export PATH="/tmp/site/bin:$PATH" || exit 1
fi
python3 -c 'import dvc, dvclive, pydantic, torch; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cp params.yaml /tmp/params.default.yaml
if command -v git >/dev/null; then
    git init -q && printf '/.whl/\n/.mnist/\n' >> .git/info/exclude && git add -A >/dev/null 2>&1 && git -c user.name=gpu -c user.email=gpu@localhost commit -qm gpu
else
    dvc config --local core.no_scm true
fi

run() {  # run NAME SECONDS: dvc repro under a time limit, then pack the results as $OUT/NAME.tgz
    local name=$1 limit=$2 start res=/tmp/res/$1
    mkdir -p "$res"
    start=$(date +%s)
    timeout "$limit" dvc repro 2>&1 | tee "$res/repro.log"
    echo "$name: dvc repro took $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
    cp dvc.lock params.yaml metrics/test.json "$res/" 2>/dev/null
    for kind in dae vae; do cp "metrics/train/$kind/metrics.json" "$res/train_$kind.json" 2>/dev/null; done
    cp -r metrics/train plots "$res/" 2>/dev/null
    tar -czf "$OUT/$name.tgz" -C /tmp/res "$name"
}

python3 scripts/exp_args.py configs/gpu.yaml --apply params.yaml
run gpu "${GPU_LIMIT:-400}"
cp /tmp/params.default.yaml params.yaml
sed -i 's/^device: auto/device: cuda/' params.yaml
run default "${DEFAULT_LIMIT:-150}"
