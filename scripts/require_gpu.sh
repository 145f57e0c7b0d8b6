# The GPU scripts' refusal without an NVIDIA GPU, written once: sourced (not run) by scripts/gpu_check.sh and
# scripts/benchmarks/gpu_benchmark.sh from the repository root, then called before they run or write anything:
#
#     source scripts/require_gpu.sh
#     require_gpu NAME WHAT CPU_HINT
#
# NAME is the calling script's name, WHAT what it does ("This script measures NVIDIA GPUs only"), CPU_HINT the line
# that says what to run on a CPU instead. Without a GPU it says why on stderr and exits the calling script with
# status 2; with one it sets GPUS, the number of CUDA devices torch sees ($PYTHON's torch).

require_gpu() {
    local name=$1 what=$2 cpu_hint=$3 reason=""
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        reason="no GPU found (nvidia-smi is not installed)"
    elif ! nvidia-smi -L >/dev/null 2>&1; then
        reason="no GPU found (nvidia-smi -L failed: no driver or no device)"
    elif ! GPUS=$("${PYTHON:-python}" -c \
            "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"); then
        reason="'${PYTHON:-python}' cannot import torch"
    elif ! [ "$GPUS" -ge 1 ]; then
        reason="torch sees no CUDA device (a CPU-only torch build, or CUDA_VISIBLE_DEVICES is empty)"
    fi
    if [ -n "$reason" ]; then
        echo "$name: $reason. $what; nothing was run." >&2
        echo "$cpu_hint" >&2
        exit 2
    fi
}
