#!/usr/bin/env bash
# The prepared GPU check (README "GPU check"): one command, under 6 minutes on one GPU,
# results in one folder. Parts, each under its own time limit and all within one budget,
# each recorded even when it fails (the next one still runs):
#   wheels          the packages the GPU image lacks, from .gpu-wheels/ (see --prepare)
#   gpu_tests       the `gpu`-marked tests: the trainer's bf16-autocast step through
#                   accelerate on one GPU, CUDA sampling against the CPU's, the CUDA forward
#   throughput_*    benchmarks/gpu_throughput.py for FluxAudio-S and paper 000's Table II
#                   model (~450M) at batch $BATCH (32), FluxAudio-S at 4x that too, bf16, flash SDPA, eager and
#                   torch.compile: MFU against the bf16 matmul peak measured in the same
#                   run, clips/s for 10-s clips (25 Euler steps, CFG), peak GPU memory
# Results: summary.txt, results.json (everything, machine-readable) and one log per part:
# at most 8 flat files, which the device tool brings back from $OUT.
#
# usage:
#   benchmarks/gpu_check.sh --prepare        here (package registry): the wheels the GPU
#                                            image (Python 3.12) lacks -> .gpu-wheels/
#   benchmarks/gpu_check.sh [DIR]            on the GPU machine; DIR defaults to $OUT, else
#                                            gpu-check/
#   benchmarks/gpu_check.sh --dry-run [DIR]  on the CPU: every part end to end at toy sizes,
#                                            the gpu tests' bodies on the CPU
#                                            (tests/test_gpu_check.py); no GPU figure
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WHEELS="$ROOT/.gpu-wheels"
# What the project imports that the GPU image lacks (KINDS.md), with their dependencies;
# the versions of this project's .venv.
IMPORTED=(pydantic ruamel.yaml)
CARRIED=(pydantic pydantic-core annotated-types typing-inspection typing-extensions ruamel.yaml)
GPU_PYTHON=3.12
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
    manylinux2014_x86_64 manylinux1_x86_64)
BUDGET=330 # seconds for all parts together (+ start-up and report: under 6 minutes)
BATCH=${BATCH:-32}

mode=run
case "${1:-}" in
    --prepare) mode=prepare; shift ;;
    --dry-run) mode=dry-run; shift ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
esac
platform_flags=(--only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp)
for platform in "${PLATFORMS[@]}"; do platform_flags+=(--platform "$platform"); done

if [ "$mode" = prepare ]; then
    specs=()
    for name in "${CARRIED[@]}"; do
        version=$(.venv/bin/python -m pip show "$name" | awk '/^Version:/ {print $2}')
        [ -n "$version" ] || { echo "$name is not in .venv: run make setup first"; exit 2; }
        specs+=("$name==$version")
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    .venv/bin/python -m pip download --quiet --no-deps "${platform_flags[@]}" -d "$WHEELS" \
        "${specs[@]}" || exit 2
    ls "$WHEELS" && du -sh "$WHEELS"
    exit 0
fi

RESULTS=${1:-${OUT:-gpu-check}}
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
PY=${PYTHON:-python3}
[ "$mode" = dry-run ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS

record() { # record NAME STATUS SECONDS LIMIT [NOTE]
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$SCRATCH/parts.tsv"
    echo "$1: exit $2 in $3 s (limit $4 s) ${5:-}"
}

part() { # part NAME LIMIT COMMAND...: its output to NAME.log, its record to parts.tsv
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - started)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        record "$name" 124 0 0 "not run: the check's time budget is spent"
        return 124
    fi
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local status=$?
    record "$name" "$status" $((SECONDS - began)) "$limit"
    return "$status"
}

command -v nvidia-smi > /dev/null \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        > "$SCRATCH/nvidia-smi.txt" 2>&1

# The carried wheels go to a folder of their own on PYTHONPATH: the image stays as it is.
# A dry run resolves them for the GPU's Python instead, which checks that none is missing.
if [ "$mode" = run ]; then
    if "$PY" -c "import pydantic, ruamel.yaml" 2> /dev/null; then
        record wheels 0 0 0 "skipped: the image has pydantic and ruamel.yaml"
    elif part wheels 60 "$PY" -m pip install --no-index --find-links "$WHEELS" \
        --target "$SCRATCH/site" "${IMPORTED[@]}"; then
        export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
    fi
elif compgen -G "$WHEELS/*.whl" > /dev/null; then
    part wheels 60 "$PY" -m pip install --dry-run --no-index --find-links "$WHEELS" \
        --target "$SCRATCH/site" "${platform_flags[@]}" "${IMPORTED[@]}"
else
    record wheels 0 0 0 "skipped: no .gpu-wheels/ here (benchmarks/gpu_check.sh --prepare)"
fi

# A dry run runs the same test bodies on the CPU (tests/conftest.py), which catches a broken
# test before GPU time is spent on it.
[ "$mode" = dry-run ] && export TTM_GPU_TESTS_DEVICE=cpu
part gpu_tests 75 "$PY" -m pytest -m gpu tests/models/test_gpu.py -p no:cacheprovider -q \
    -rA --junitxml="$SCRATCH/gpu_tests.xml"

if [ "$mode" = run ]; then
    batch=$BATCH
    sizes=(--device cuda --steps 10 --warmup 3 --sample-prompts 32)
else # toy sizes; Dynamo's tracing without inductor's code generation (minutes on a CPU)
    batch=2
    sizes=(--device cpu --tiny --compile eager --steps 1 --warmup 1 --rounds 1
        --sample-prompts 2 --sample-steps 2 --peak-size 512)
fi
# FluxAudio-S at the issue's batch and, last (it gets what the budget leaves), at 4x it: its
# 448-wide matmuls fill an H200 only with many tokens per step (19 % MFU at batch 32 compiled,
# 29 % at 128: README "GPU check").
for run in fluxaudio_s:1 table2_450m:1 fluxaudio_s:4; do
    config=${run%:*} times=${run#*:} name=${run%:*}
    [ "$times" = 1 ] || name="${config}_x$times"
    part "throughput_$name" 150 "$PY" -m benchmarks.gpu_throughput "$config" \
        --json "$SCRATCH/$name.json" "${sizes[@]}" --batch $((batch * times))
done

"$PY" -m benchmarks.gpu_check_report --mode "$mode" --scratch "$SCRATCH" --results "$RESULTS"
