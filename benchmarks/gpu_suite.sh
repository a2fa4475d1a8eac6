#!/usr/bin/env bash
# One command for every GPU measurement medcore-tp promises; the step limits add up to 8 minutes:
#   1. install what it needs (the package with its test and export extras, pinned);
#   2. bench: ViT-B dense vs 60.03% and LiteMedSAM dense vs 50% on CUDA, fp32 / bf16, eager,
#      sdpa and torch.compile, batch 1 and 4 (benchmarks/bench_deploy.py);
#   3. the Fisher cost benchmark and the evaluate overhead on CUDA;
#   4. with two or more GPUs, the torchrun NCCL check: two processes prune as one does.
# Everything goes under benchmarks/results/, named with the GPU (benchmarks/_machine.py machine_tag).
#
# Usage: benchmarks/gpu_suite.sh [--dry-run]
#   --dry-run  print every step without running it (works on a machine without a GPU; tested in
#              the suite). Each step has its own time limit so that the whole stays within 8 minutes.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; elif [[ -n "${1:-}" ]]; then
    echo "gpu_suite.sh: unknown option $1 (use --dry-run or nothing)" >&2; exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
RESULTS="$ROOT/benchmarks/results"
LOG_DIR="$ROOT/out/gpu_suite"

step() {  # step SECONDS COMMAND...: run (or, dry, print) one step under a time limit
    local limit="$1"; shift
    echo "+ [${limit}s] $*"
    if (( DRY )); then return 0; fi
    timeout "$limit" "$@" || echo "step failed or timed out (exit $?): $*" >&2
}

deploy() {  # deploy SECONDS ARGS...: a bench_deploy.py step; dry, its own --dry-run checks the arguments
    local limit="$1"; shift
    step "$limit" "$PY" benchmarks/bench_deploy.py "$@"
    if (( DRY )); then "$PY" benchmarks/bench_deploy.py "$@" --dry-run; fi
}

if (( DRY )); then
    NGPU="$(command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | wc -l || echo 0)"
    echo "dry run: ${NGPU} GPU(s) seen; nothing is installed, run or written"
else
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_suite.sh: no NVIDIA GPU here (nvidia-smi finds none); use --dry-run to see the steps" >&2
        exit 1
    fi
    NGPU="$(nvidia-smi -L | wc -l)"
    mkdir -p "$LOG_DIR" "$RESULTS"
    echo "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd ';')"
fi

step 45 "$PY" -m pip install -q -c constraints.txt -e ".[test,export]"
step 5 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0))"

# 2. deployment latency (each run prunes once, then times dense vs pruned alternately). Eager and
#    sdpa in fp32 and bf16 at batch 1 and 4; torch.compile separately, bf16 encoder only, since
#    every (model, dtype, batch) is a compilation of its own.
deploy 70 --which vit-b --device cuda --backends torch,sdpa \
    --dtype fp32,bf16 --batch 1,4 --parts encoder,model --repeats 10
deploy 50 --which lite --device cuda --backends torch \
    --dtype fp32,bf16 --batch 1,4 --parts encoder,model --repeats 10
deploy 85 --which vit-b --device cuda --backends compile --dtype bf16 --batch 1 \
    --repeats 10 --tag-suffix _compiled
deploy 70 --which lite --device cuda --backends compile --dtype bf16 --batch 1 \
    --repeats 10 --tag-suffix _compiled

# 3. Fisher cost and evaluate overhead on CUDA
step 50 "$PY" benchmarks/bench_fisher_cost.py --models tiny,sam-vit-b --device cuda
step 30 "$PY" benchmarks/bench_evaluate.py --model lite-medsam --device cuda

# 4. NCCL: two processes must end with the architecture one process chooses
if (( NGPU >= 2 )); then
    common=(prune --model tiny --random-init --ratio 0.3 --recover-steps 5 --no-report --no-progress --device cuda)
    step 25 "$PY" -m medcore_tp "${common[@]}" --out "$LOG_DIR/nccl_one"
    step 45 "$PY" -m torch.distributed.run --nproc_per_node 2 -m medcore_tp "${common[@]}" --out "$LOG_DIR/nccl_two"
    step 5 "$PY" benchmarks/_compare_runs.py "$LOG_DIR/nccl_one/summary.json" "$LOG_DIR/nccl_two/summary.json" \
        "$RESULTS/nccl_check.json"
else
    echo "only ${NGPU} GPU(s): the torchrun NCCL check needs two, skipped"
fi
echo "done: results in $RESULTS"
