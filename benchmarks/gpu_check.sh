#!/usr/bin/env bash
# The prepared GPU check (README "GPU check"): one command, <= 6 minutes on one GPU, results
# in a folder. Parts, each under its own time limit, each recorded even when it fails:
#   1. the `gpu`-marked tests (bf16 autocast step of the trainer through accelerate, CUDA
#      sampling against the CPU's, the backbone's CUDA forward);
#   2. training and sampling throughput of FluxAudio-S and of paper 000's Table II model
#      (~450M) at batch 32, bf16, flash SDPA, with and without torch.compile: MFU against
#      the bf16 matmul peak measured in the same run, clips/s for 10-s clips (25 Euler
#      steps, CFG), peak GPU memory (benchmarks/training_throughput.py).
#
# usage:
#   benchmarks/gpu_check.sh --prepare        here (package registry): the wheels the GPU
#                                            image lacks (pydantic, ruamel.yaml) -> .gpu-wheels/
#   benchmarks/gpu_check.sh [DIR]            on the GPU machine; DIR defaults to $OUT, else
#                                            gpu-check/ (the device tool returns $OUT)
#   benchmarks/gpu_check.sh --dry-run [DIR]  on CPU: every part end to end at toy sizes (CI)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS="$ROOT/.gpu-wheels"
# What the project imports that the GPU image (Python 3.12, torch, accelerate, pandas,
# safetensors, pyyaml, scipy, pytest) lacks; the versions of this project's .venv.
CARRIED=(pydantic pydantic-core annotated-types typing-inspection ruamel.yaml)

mode=run
case "${1:-}" in
    --prepare) mode=prepare; shift ;;
    --dry-run) mode=dry-run; shift ;;
esac

if [ "$mode" = prepare ]; then
    specs=()
    for name in "${CARRIED[@]}"; do
        specs+=("$name==$(.venv/bin/python -m pip show "$name" | awk '/^Version:/ {print $2}')")
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$WHEELS" "${specs[@]}"
    ls "$WHEELS" && du -sh "$WHEELS"
    exit 0
fi

RESULTS=${1:-${OUT:-gpu-check}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
PY=${PYTHON:-python3}
[ "$mode" = dry-run ] && [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"

# The carried wheels go to a folder of their own on PYTHONPATH: the image is left as it is.
if ! "$PY" -c "import pydantic, ruamel.yaml" 2>/dev/null; then
    deps="$RESULTS/.deps"
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$deps" \
        pydantic ruamel.yaml || { echo "missing wheels: run --prepare here first" | tee -a "$SUMMARY"; exit 2; }
    export PYTHONPATH="$deps:${PYTHONPATH:-}"
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"

part() {  # part NAME SECONDS COMMAND...: run, keep its output, record status and time
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - started)) s (limit $limit s)" | tee -a "$SUMMARY"
}

{
    echo "mode: $mode"
    date -u
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$RESULTS/environment.txt" 2>&1

if [ "$mode" = dry-run ]; then
    # Toy sizes on the CPU: the same scripts, imports and options, no figure worth reading;
    # without --compile, which tests/train/test_speedups.py checks (a cold compile: ~45 s).
    part gpu_tests 120 "$PY" -m pytest -m gpu tests/models/test_gpu.py -p no:cacheprovider -q \
        --junitxml="$RESULTS/gpu_tests.xml"
    part throughput_embedded 300 "$PY" -m benchmarks.training_throughput --device cpu \
        --configs embedded --batch 2 --steps 1 --warmup 1 --sample-steps 1
else
    part gpu_tests 90 "$PY" -m pytest -m gpu tests/models/test_gpu.py -p no:cacheprovider -q \
        --junitxml="$RESULTS/gpu_tests.xml"
    for config in fluxaudio_s table2_450m; do
        part "throughput_$config" 150 "$PY" -m benchmarks.training_throughput --device cuda \
            --precision bf16 --configs "$config" --batch 32 --steps 10 --warmup 3 --compile
    done
fi
cat "$SUMMARY"
! grep -qv ": exit 0 " "$SUMMARY"
