#!/usr/bin/env python
"""Side by side: stock transformers fine-tuning against ours, same task files, model, epochs, learning rate, batch,
maximum length and seeds.

    python scripts/benchmarks/compare_finetuning.py                                   # citation intent, MiniLM, 10 epochs, seed 1
    python scripts/benchmarks/compare_finetuning.py --seeds 1 2 3 --num_train_epochs 10
    python scripts/benchmarks/compare_finetuning.py --max_train_samples 200 --num_train_epochs 1   # a quick check
    python scripts/benchmarks/compare_finetuning.py --profile      # where a fine-tuning step's time goes, stock and ours

Stock is transformers' examples/pytorch/text-classification/run_classification.py as it runs by default: every text
tokenized with ``padding="max_length"`` to --max_seq_length, ``default_data_collator``,
``AutoModelForSequenceClassification``, a plain ``Trainer`` with checkpoints holding the optimizer state, and a final
dev evaluation after training. To compare like with like it also scores the dev set every epoch (full logits
gathered, argmax in NumPy) and keeps the best epoch by dev macro-F1, with the same warm-up. Ours is
scripts/run_classification.py's code path (mlm_pretraining.classification.fine_tune) with its defaults: length-grouped
batches padded to their longest text, fast CPU dropout, argmax on the device, checkpoints only when dev improves, and
early stopping (so it may run fewer epochs; time per epoch is the fair speed comparison). Both read the files and draw
--max_*_samples subsets with the same functions, so they train and score on the same examples.

Each run is its own process (stock and ours alternate in order from seed to seed, against drifting machine load).
Printed: minutes per run (the whole process: loading, tokenizing, training, final scoring), seconds per epoch of the
training loop (each epoch's training, dev scoring and checkpoint; then training alone; then the loop's CPU time, all
threads, a steadier measure on a shared machine), dev and test macro-F1 and accuracy, and ours/stock in time per
epoch. The last line printed is one JSON object with all of it. With --output_dir, each finished run is recorded
there and a rerun with the same settings reuses it.

With --profile each pipeline instead trains --profile_warmup_steps steps, then --profile_steps steps under
torch.profiler (mlm_pretraining.profiling), and the table gives each op class's share of those steps' time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mlm_lab import runs
from mlm_lab.intervals import CONFIDENCE, paired_interval
from mlm_lab.paths import REPO, SHARED_DATA, check_file
from mlm_lab.tables import markdown_table
from transformers import TrainerCallback

from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.errors import InputError, run_cli

TASK = SHARED_DATA / "citation_intent"
DEFAULT_FILES = {"train_file": TASK / "train.jsonl", "validation_file": TASK / "dev.jsonl",
                 "test_file": TASK / "test.jsonl"}
VARIANTS = ("stock", "ours")
RESULT_PREFIX = "COMPARE_RESULT "
METRIC = "macro_f1"


def parse_args(argv=None) -> argparse.Namespace:
    """The comparison's flags, checked: a bad one raises InputError naming it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model_name_or_path", default=EMBEDDED_MODEL,
                        help="Model to fine-tune in both pipelines (default: the shipped MiniLM).")
    parser.add_argument("--train_file", default=str(DEFAULT_FILES["train_file"]),
                        help="Labelled training data, .jsonl or .csv with text and label columns "
                        "(default: citation intent).")
    parser.add_argument("--validation_file", default=str(DEFAULT_FILES["validation_file"]),
                        help="Dev data: scored every epoch, selects the kept epoch.")
    parser.add_argument("--test_file", default=str(DEFAULT_FILES["test_file"]),
                        help="Test data, scored once at the end.")
    parser.add_argument("--num_train_epochs", type=float, default=10.0,
                        help="Epochs for both (ours may stop earlier: early stopping on dev macro-F1).")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate, the same for both.")
    parser.add_argument("--warmup_ratio", type=float, default=0.06,
                        help="Share of the steps spent warming up the learning rate, the same for both.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16, help="Training batch size.")
    parser.add_argument("--max_seq_length", type=int, default=128,
                        help="Truncation length in tokens (stock pads every text to it; ours pads each batch to "
                        "its longest text). Stock run_classification.py's default is 128.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="Seeds: each pipeline is fine-tuned once per seed (classifier head, data order, dropout).")
    parser.add_argument("--max_train_samples", type=int, default=None,
                        help="Train on a fixed random subset of N rows (the same for both and every seed).")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Score a fixed random dev subset.")
    parser.add_argument("--max_test_samples", type=int, default=None, help="Score a fixed random test subset.")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="Stop both pipelines after this many optimizer steps (a quick check; overrides "
                        "--num_train_epochs).")
    parser.add_argument("--profile", action="store_true",
                        help="Instead of timing epochs, profile --profile_steps training steps of each pipeline "
                        "after --profile_warmup_steps and print each op class's share of the step time.")
    parser.add_argument("--profile_steps", type=int, default=10, help="Steps to profile with --profile.")
    parser.add_argument("--profile_warmup_steps", type=int, default=3,
                        help="Steps trained before profiling with --profile.")
    parser.add_argument("--output_dir", default=None,
                        help="Keep every run's model and results here; a rerun with the same settings reuses the "
                        "finished runs, so a stopped comparison continues and more --seeds add to it (default: a "
                        "temporary folder, removed).")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, default in DEFAULT_FILES.items():
        check_file(getattr(args, flag), f"--{flag}", default)
    for flag in ("num_train_epochs", "learning_rate", "per_device_train_batch_size"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} must be positive, got {getattr(args, flag)}.")
    if not 0 <= args.warmup_ratio < 1:
        raise InputError(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}.")
    if args.max_seq_length < 8:
        raise InputError(f"--max_seq_length must be at least 8, got {args.max_seq_length}.")
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f"--seeds must be distinct integers, got {' '.join(map(str, args.seeds))}.")
    for flag in ("max_train_samples", "max_eval_samples", "max_test_samples", "max_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be a positive integer, got {getattr(args, flag)}.")
    if args.profile_steps < 1 or args.profile_warmup_steps < 0:
        raise InputError(f"--profile_steps must be at least 1 and --profile_warmup_steps at least 0, got "
                         f"{args.profile_steps} and {args.profile_warmup_steps}.")
    if args.profile:  # warm-up and profiled steps only
        args.max_steps = args.profile_warmup_steps + args.profile_steps
    return args


# ---------------------------------------------------------------- one run (inside its own process)

class EpochTimer(TrainerCallback):
    """Wall-clock times of the training loop: its start and end, and each epoch's start and end of training; and the
    CPU time of the whole loop (all threads), which other processes on a shared machine disturb less."""

    def __init__(self):
        self.train_begin = self.train_end = self.cpu_begin = self.cpu_end = None
        self.epoch_begins: list[float] = []
        self.epoch_ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()
        self.cpu_begin = time.process_time()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_begins.append(time.perf_counter())

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end = time.perf_counter()
        self.cpu_end = time.process_time()

    def summary(self) -> dict:
        """Epochs run, seconds per epoch of the whole loop (training, dev scoring, checkpoints) and of training only."""
        epochs = len(self.epoch_ends)
        train_only = sum(end - begin for begin, end in zip(self.epoch_begins, self.epoch_ends))
        return {"epochs": epochs, "train_loop_s": self.train_end - self.train_begin,
                "s_per_epoch": (self.train_end - self.train_begin) / epochs, "train_s_per_epoch": train_only / epochs,
                "cpu_s_per_epoch": (self.cpu_end - self.cpu_begin) / epochs}


def data_arguments(args):
    """ClassificationDataArguments for both pipelines' reading (same files, same subsets)."""
    from mlm_pretraining.classification import ClassificationDataArguments

    return ClassificationDataArguments(train_file=[args.train_file], validation_file=[args.validation_file],
                                       test_file=[args.test_file], max_seq_length=args.max_seq_length,
                                       max_train_samples=args.max_train_samples,
                                       max_eval_samples=args.max_eval_samples, max_test_samples=args.max_test_samples)


def run_stock(args, run_dir: str, timer: EpochTimer, callbacks=()) -> dict:
    """transformers' run_classification.py by default (pad to max_length, default_data_collator, plain Trainer)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from mlm_pretraining.classification import (
        compute_metrics,
        encode_labels,
        label_list,
        label_maps,
        load_labelled_datasets,
        take_subsets,
    )
    from mlm_pretraining.model.loading import resolve_model_path

    set_seed(args.seed)
    data_args = data_arguments(args)
    raw = load_labelled_datasets(data_args)
    labels = label_list(raw["train"])
    encoded = encode_labels(take_subsets(raw, data_args), labels)
    id2label, label2id = label_maps(labels)
    path = resolve_model_path(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenized = encoded.map(lambda batch: tokenizer(batch["text"], padding="max_length",
                                                    max_length=args.max_seq_length, truncation=True),
                            batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), id2label=id2label,
                                                               label2id=label2id)
    training_args = TrainingArguments(
        output_dir=run_dir, seed=args.seed, learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size, warmup_steps=args.warmup_ratio,
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model=METRIC,
        save_total_limit=1,  # keeps the disk bounded; stock keeps every checkpoint, which costs time too
        logging_strategy="epoch", report_to="none", disable_tqdm=True, max_steps=args.max_steps or -1)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], processing_class=tokenizer,
                      data_collator=default_data_collator, compute_metrics=compute_metrics,
                      callbacks=[timer, *callbacks])
    trainer.train()
    results = trainer.evaluate()  # stock's do_eval after training
    results.update(trainer.evaluate(tokenized["test"], metric_key_prefix="test"))
    return results


def run_ours(args, run_dir: str, timer: EpochTimer, callbacks=()) -> dict:
    """scripts/run_classification.py's code path with its defaults and the shared settings."""
    from arguments import ModelArguments
    from mlm_pretraining.classification import (
        ClassificationTrainingArguments,
        fine_tune,
    )

    training_args = ClassificationTrainingArguments(
        output_dir=run_dir, seed=args.seed, learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size, warmup_steps=args.warmup_ratio,
        disable_tqdm=True, max_steps=args.max_steps or -1)
    return fine_tune(ModelArguments(model_name_or_path=args.model_name_or_path), data_arguments(args), training_args,
                     callbacks=[timer, *callbacks])


def run_variant(args) -> dict:
    """Fine-tune one pipeline for one seed in this process; return its times and scores."""
    import torch
    from mlm_lab.profiling import StepProfiler

    timer = EpochTimer()
    profiler = StepProfiler(args.profile_warmup_steps, args.profile_steps) if args.profile else None
    run = run_stock if args.child == "stock" else run_ours
    results = run(args, args.run_dir, timer, callbacks=[profiler] if profiler else [])
    scores = {f"{split}_{name}": results[f"{split}_{name}"] for split in ("eval", "test")
              for name in (METRIC, "accuracy")}
    result = {"variant": args.child, "seed": args.seed, **timer.summary(), **scores,
              "torch_threads": torch.get_num_threads()}
    if profiler is not None:
        result.update(op_class_seconds=profiler.per_step(), step_seconds=profiler.wall_seconds / args.profile_steps)
    return result


# ---------------------------------------------------------------- orchestration (parent process)

def run_settings(args) -> dict:
    """What decides a run's result besides its pipeline and seed: the flags but the seed list and the folders."""
    return {k: v for k, v in vars(args).items() if k not in ("seeds", "output_dir", "child", "seed", "run_dir")}


def run_child(variant: str, seed: int, argv: list[str], run_dir: Path, settings: dict) -> dict:
    """Run one pipeline for one seed in a fresh Python process; return its result with the process's wall time.
    A run that finished earlier in ``run_dir`` with the same ``settings`` is reused (a stopped comparison continues
    where it stood, and more --seeds add to it); a folder holding one launched with others is an InputError, not a
    mislabelled row."""
    record = runs.finished(run_dir, settings, variant)
    if record is not None:
        print(f"--- {variant}, seed {seed}: reusing the finished run in {run_dir}", file=sys.stderr, flush=True)
    else:
        # A stopped run starts over (resuming would time half a run); its log stays, the new attempt appended.
        for path in run_dir.glob("*"):
            if path.name != runs.LOG_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", variant, "--seed", str(seed),
                   "--run_dir", str(run_dir)]
        print(f"--- {variant}, seed {seed}: running ...", file=sys.stderr, flush=True)
        record = runs.run_and_record(command, run_dir, settings,
                                     lambda output: runs.result_line(output, RESULT_PREFIX, command, run_dir),
                                     cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                                    "TOKENIZERS_PARALLELISM": "false"})
    return {**record["result"], "minutes": record["seconds"] / 60}


COLUMNS = [("variant", "variant", "{}"), ("seed", "seed", "{}"), ("epochs", "epochs", "{}"),
           ("min/run", "minutes", "{:.2f}"), ("s/epoch", "s_per_epoch", "{:.1f}"),
           ("train s/epoch", "train_s_per_epoch", "{:.1f}"), ("CPU s/epoch", "cpu_s_per_epoch", "{:.1f}"),
           ("dev macro-F1", "eval_macro_f1", "{:.4f}"),
           ("dev acc", "eval_accuracy", "{:.4f}"), ("test macro-F1", "test_macro_f1", "{:.4f}"),
           ("test acc", "test_accuracy", "{:.4f}")]


def summarise(results: list[dict]) -> dict:
    """Per seed and on average: ours/stock in seconds per epoch (loop and training only) and the score differences."""
    by_key = {(r["variant"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    per_seed = {}
    for seed in seeds:
        ours, stock = by_key[("ours", seed)], by_key[("stock", seed)]
        per_seed[seed] = {"s_per_epoch": ours["s_per_epoch"] / stock["s_per_epoch"],
                          "train_s_per_epoch": ours["train_s_per_epoch"] / stock["train_s_per_epoch"],
                          "cpu_s_per_epoch": ours["cpu_s_per_epoch"] / stock["cpu_s_per_epoch"],
                          "minutes": ours["minutes"] / stock["minutes"]}
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    averages = {variant: {key: mean([by_key[(variant, s)][key] for s in seeds])
                          for key in ("minutes", "s_per_epoch", "eval_macro_f1", "eval_accuracy", "test_macro_f1",
                                      "test_accuracy")}
                for variant in VARIANTS}
    return {
        "per_seed_ratio": per_seed,
        "mean": averages,
        # The ratio of mean times, so one slow seed weighs by its time, not as one of n ratios.
        "ours_over_stock_s_per_epoch": averages["ours"]["s_per_epoch"] / averages["stock"]["s_per_epoch"],
        "test_macro_f1_difference": averages["ours"]["test_macro_f1"] - averages["stock"]["test_macro_f1"],
        # Ours − stock, paired by seed (same seed: same classifier head, data order), with a 95 % t interval: is a
        # difference in scores more than the noise between seeds?
        "paired_difference": {key: paired_interval([by_key[("ours", s)][key] - by_key[("stock", s)][key]
                                                    for s in seeds])
                              for key in ("eval_macro_f1", "test_macro_f1", "test_accuracy")},
    }


def print_profiles(args, settings: dict, results: list[dict]) -> dict:
    """--profile: the op-class table of both pipelines' profiled steps, and one JSON line."""
    from mlm_lab.profiling import op_class_table

    print(f"\n{Path(args.train_file).parent.name}: {args.model_name_or_path}, "
          f"batch {args.per_device_train_batch_size}, max length {args.max_seq_length}, "
          f"{results[0]['torch_threads']} torch threads; {args.profile_steps} steps "
          f"profiled after {args.profile_warmup_steps}; share of the profiled steps' wall-clock time (profiler "
          "overhead included)")
    print(op_class_table({r["variant"]: r["op_class_seconds"] for r in results}))
    output = {"settings": settings, "profiles": results}
    print(json.dumps(output))
    return output


def main(argv: list[str] | None = None) -> dict:
    """Run both pipelines for every seed (or, with --child, one run in this process) and print the comparison."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_variant(args)), flush=True)
        return {}
    if args.profile:
        args.seeds = args.seeds[:1]
    scratch = Path(args.output_dir or tempfile.mkdtemp(prefix="compare-finetuning-"))
    results = []
    for i, seed in enumerate(args.seeds):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            # A run that fails raises, leaving even a temporary folder in place: the error names the log in it.
            results.append(run_child(variant, seed, argv, scratch / f"{variant}-seed{seed}", run_settings(args)))
    if not args.output_dir:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {k: getattr(args, k) for k in ("model_name_or_path", "train_file", "num_train_epochs", "learning_rate",
                                               "warmup_ratio", "per_device_train_batch_size", "max_seq_length",
                                               "seeds", "max_train_samples", "max_steps")}
    if args.profile:
        return print_profiles(args, settings, results)
    summary = summarise(results)
    print(f"\n{Path(args.train_file).parent.name}: {args.model_name_or_path}, up to {args.num_train_epochs:g} epochs, "
          f"lr {args.learning_rate:g}, batch {args.per_device_train_batch_size}, max length {args.max_seq_length}, "
          f"{results[0]['torch_threads']} torch threads")
    print(markdown_table(results, COLUMNS))
    for seed, ratio in summary["per_seed_ratio"].items():
        print(f"seed {seed}: ours/stock time per epoch {ratio['s_per_epoch']:.2f} (training only "
              f"{ratio['train_s_per_epoch']:.2f}, CPU time {ratio['cpu_s_per_epoch']:.2f}), per run "
              f"{ratio['minutes']:.2f}")
    ratio = summary["ours_over_stock_s_per_epoch"]
    print(f"ours/stock time per epoch (mean over seeds): {ratio:.2f}, i.e. ours {1 / ratio:.2f}x as fast")
    for key, interval in summary["paired_difference"].items():
        spread = ("" if math.isnan(interval["half_width"]) else
                  f", {CONFIDENCE:.0%} t interval [{interval['low']:+.4f}, {interval['high']:+.4f}]")
        print(f"{key} ours - stock, paired by seed (n = {interval['n']}): {interval['mean']:+.4f}{spread}")
    output = {"settings": settings, "results": results, **summary}
    print(json.dumps(output))
    return output


if __name__ == "__main__":
    run_cli(main, "compare_finetuning.py")
