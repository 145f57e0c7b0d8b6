#!/usr/bin/env bash
# Every CUDA path of run_mlm.py in one command, on one NVIDIA GPU, in about 8 minutes, with no download:
#
#     bash scripts/gpu_check.sh [OUTPUT_DIR]
#
# A bert-base-sized BERT (BertConfig's defaults: 12 layers, 768 wide, 110 M parameters) with random weights and the
# shipped MiniLM's tokenizer trains STEPS steps (default 100) of BATCH x SEQ tokens (32 x 128) on the shipped
# WikiText-2 sample, once per path:
#   fp32_tf32        fp32 weights, TF32 matrix products (our default on Ampere and newer)
#   fp32             strict fp32 (--tf32 False), sparse prediction head (our default)
#   fp32_full_head   the same with the full head (--sparse_prediction False): its losses must equal fp32's
#   bf16, fp16       mixed precision; fp16 with the sparse head and its fused loss under autocast, loss scaling on
#   bf16_compile     --torch_compile
#   torchrun_1       torchrun --nproc_per_node 1 (DDP's code path on one GPU)
#   fsdp_1           torchrun --nproc_per_node 1 with examples/fsdp.yaml (FSDP2 engaged on one GPU, the whole-model
#                    save at the end)
# Attention is transformers' SDPA in every run (checked before the runs). Each run must end, log only finite losses
# and end lower than it began (mean of its last three logged losses below the mean of its first three); fp32 and
# fp32_full_head must log equal losses (relative 1e-3: the two heads sum the same products in another order). The
# table in OUTPUT_DIR/summary.md has, per path, the first and last loss, tokens/s after the first WARMUP steps
# (compilation and warm-up left out) and MFU: 6 x the non-embedding parameters x tokens/s over the GPU's dense peak
# for the run's precision (datasheet values for A100, H100, H200 and L4; PEAK_TFLOPS=... for another GPU). Each
# run's log is OUTPUT_DIR/<path>.log. Exit status 0 when every check passes, 1 when one fails.
#
# Without a GPU it stops at once with exit status 2 and says so. Environment: STEPS, WARMUP (20), BATCH, SEQ,
# PEAK_TFLOPS, PYTHON (python).

set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STEPS=${STEPS:-100}
WARMUP=${WARMUP:-20}
BATCH=${BATCH:-32}
SEQ=${SEQ:-128}
OUT=${1:-outputs/gpu_check-$(date +%Y%m%d-%H%M%S)}

source scripts/require_gpu.sh  # the working directory is the repository root (the cd above)
require_gpu gpu_check.sh "This script checks the CUDA paths on an NVIDIA GPU" \
    "On a CPU the tests cover the rest: python -m pytest tests/test_scaling.py"

mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
MODEL="$OUT/bert-base-random"
"$PYTHON" - "$MODEL" <<'EOF'
import sys

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.model.loading import resolve_model_path

tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
torch.manual_seed(0)
BertForMaskedLM(BertConfig(vocab_size=len(tokenizer))).save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
attention = AutoModelForMaskedLM.from_pretrained(sys.argv[1]).config._attn_implementation
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; attention: {attention}")
sys.exit(0 if attention == "sdpa" else f"attention is {attention}, not sdpa")
EOF

COMMON=(--model_name_or_path "$MODEL" --train_file examples/data/wikitext-2-sample/train.txt --do_eval False
        --max_seq_length "$SEQ" --per_device_train_batch_size "$BATCH" --max_steps "$STEPS" --learning_rate 5e-4
        --warmup_steps 0.1 --logging_steps 5 --include_num_input_tokens_seen true --save_strategy no
        --report_to none --seed 42 --dataloader_num_workers 2 --overwrite_output_dir)
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1)

run() {  # run NAME LAUNCHER... -- FLAGS...: one training run, its log in $OUT/NAME.log
    local name=$1 launcher=()
    shift
    while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
    shift
    echo "== $name: ${launcher[*]} ${*}"
    "${launcher[@]}" "$@" "${COMMON[@]}" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1 \
        || echo "   failed; see $OUT/$name.log"
}

run fp32_tf32 "$PYTHON" run_mlm.py -- --tf32 True
run fp32 "$PYTHON" run_mlm.py -- --tf32 False
run fp32_full_head "$PYTHON" run_mlm.py -- --tf32 False --sparse_prediction False
run bf16 "$PYTHON" run_mlm.py -- --bf16
run fp16 "$PYTHON" run_mlm.py -- --fp16
run bf16_compile "$PYTHON" run_mlm.py -- --bf16 --torch_compile
run torchrun_1 "${TORCHRUN[@]}" run_mlm.py -- --bf16
run fsdp_1 "${TORCHRUN[@]}" run_mlm.py examples/fsdp.yaml -- --bf16 True

"$PYTHON" - "$OUT" "$MODEL" "$WARMUP" "${PEAK_TFLOPS:-}" <<'EOF' | tee "$OUT/summary.md"
import json
import math
import sys
from pathlib import Path

out, model, warmup, peak_override = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
PATHS = {"fp32_tf32": "tf32", "fp32": "fp32", "fp32_full_head": "fp32", "bf16": "16", "fp16": "16",
         "bf16_compile": "16", "torchrun_1": "16", "fsdp_1": "16"}
# Dense datasheet peaks, TFLOP/s, by the name torch gives the GPU: fp32, TF32, bf16/fp16.
PEAKS = {"H100 PCIe": (51, 378, 756), "H100": (67, 495, 989), "H200": (67, 495, 989), "A100": (19.5, 156, 312),
         "L4": (30.3, 60, 121)}


def device_and_parameters():
    import torch
    from transformers import AutoConfig, BertForMaskedLM

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown GPU"
    try:
        with torch.device("meta"):
            parameters = BertForMaskedLM(AutoConfig.from_pretrained(model)).num_parameters(exclude_embeddings=True)
    except OSError:  # no model folder: the report still lists the runs
        parameters = None
    return name, parameters


device, parameters = device_and_parameters()
peaks = next((v for k, v in PEAKS.items() if k in device), None)
rows, failures = [], []
for name, precision in PATHS.items():
    state = out / name / "trainer_state.json"
    if not state.is_file():
        rows.append(f"| {name} | – | – | – | – | failed: no result, see {name}.log |")
        failures.append(name)
        continue
    logs = [e for e in json.loads(state.read_text())["log_history"] if "loss" in e]
    losses = [e["loss"] for e in logs]
    problems = []
    if not losses or not all(math.isfinite(x) for x in losses):
        problems.append("a loss that is not finite")
    elif len(losses) < 6 or sum(losses[-3:]) >= sum(losses[:3]):
        problems.append("the loss did not fall")
    timed = [e for e in logs if e["step"] > warmup and "train_runtime" in e]
    tokens_per_s = mfu = None
    if len(timed) >= 2:
        tokens_per_s = ((timed[-1]["num_input_tokens_seen"] - timed[0]["num_input_tokens_seen"])
                        / (timed[-1]["train_runtime"] - timed[0]["train_runtime"]))
        peak = float(peak_override) if peak_override else (
            peaks[{"fp32": 0, "tf32": 1, "16": 2}[precision]] if peaks else None)
        if peak and parameters:
            mfu = 6 * parameters * tokens_per_s / (peak * 1e12)
    verdict = "; ".join(problems) or "ok"
    if problems:
        failures.append(name)
    rows.append(f"| {name} | {losses[0]:.4f} | {losses[-1]:.4f} | "
                f"{f'{tokens_per_s:,.0f}' if tokens_per_s else '–'} | {f'{mfu:.1%}' if mfu else '–'} | {verdict} |"
                if losses else f"| {name} | – | – | – | – | {verdict} |")

pair = [out / n / "trainer_state.json" for n in ("fp32", "fp32_full_head")]
if all(p.is_file() for p in pair):
    sparse, full = ([e["loss"] for e in json.loads(p.read_text())["log_history"] if "loss" in e] for p in pair)
    equal = len(sparse) == len(full) and all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(sparse, full))
    heads = (f"Sparse and full heads (fp32, {len(sparse)} logged losses): "
             f"{'equal within 1e-3 relative' if equal else 'DIFFERENT'}, largest difference "
             f"{max((abs(a - b) for a, b in zip(sparse, full)), default=float('nan')):.2e}.")
    if not equal:
        failures.append("sparse vs full head")
else:
    heads = "Sparse and full heads: not compared (a run failed)."
print(f"# gpu_check on {device}\n")
print("| path | first loss | last loss | tokens/s | MFU | check |\n|---|---:|---:|---:|---:|---|")
print("\n".join(rows))
print(f"\n{heads}\nMFU: 6 x {parameters or 0:,} non-embedding parameters x tokens/s over the dense peak "
      f"({'PEAK_TFLOPS' if peak_override else device if peaks else 'unknown: give PEAK_TFLOPS'}); tokens/s after "
      f"step {warmup}.")
print(f"\n{'All checks passed.' if not failures else 'FAILED: ' + ', '.join(failures)}")
sys.exit(1 if failures else 0)
EOF
