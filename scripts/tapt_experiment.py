#!/usr/bin/env python
"""Task-adaptive pretraining (TAPT, Gururangan et al. 2020), measured: does masked-LM on a task's own training text
improve fine-tuning on that task?

For one task folder (train/dev/test files with text and label columns):
  (a) fine-tune the base model, once per seed;
  (b) continue masked-LM pretraining of the base model on the task's training text (run_mlm.py; once);
  (c) fine-tune that checkpoint, once per seed, with exactly the settings of (a).
Prints a table of mean ± std (over seeds) dev and test macro-F1 for both arms and their difference, and writes
it to output_dir/results.md and results.json. Finished runs are reused, so an interrupted experiment continues.

    python scripts/tapt_experiment.py --task_dir ../shared/data/citation_intent --output_dir out/tapt-ci
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from arguments import InputError, parse_args
from mlm_pretraining.errors import run_cli
from mlm_pretraining.logs import get_logger
from mlm_pretraining.modeling import EMBEDDED_MODEL, resolve_model_path
from mlm_pretraining.text import BUILDERS

logger = get_logger("tapt_experiment")
REPO = Path(__file__).resolve().parents[1]
SPLIT_NAMES = {"train": ("train",), "validation": ("dev", "validation", "valid"), "test": ("test",)}
METRICS = ("macro_f1", "micro_f1")


@dataclass
class TaptArguments:
    """The task, the model, the seeds, and the settings of both stages. Defaults follow the paper, scaled to CPU."""

    task_dir: str | None = field(
        default=None, metadata={"help": "Folder with train, dev (or validation) and test files (.jsonl/.json/.csv), "
                                "e.g. ../shared/data/citation_intent."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where every run and the result table go."})
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={"help": "The base model of both arms."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3],
                             metadata={"help": "Fine-tuning seeds; each arm is fine-tuned once per seed."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the label."})
    # Fine-tuning, the same for both arms.
    learning_rate: float = field(default=2e-5, metadata={"help": "Fine-tuning learning rate (paper: 2e-5)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning epochs; the best on dev is kept "
                                                          "(paper: 10 with early stopping)."})
    max_steps: int = field(default=-1, metadata={"help": "Fine-tuning steps, overriding --num_train_epochs (for "
                                                 "quick checks); the dev set is then scored at the end only."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Fine-tuning batch size (paper: 16)."})
    max_seq_length: int = field(default=128, metadata={"help": "Fine-tuning truncation length in tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Fine-tune on a fixed random subset."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Select on a fixed random dev subset."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Test on a fixed random subset."})
    # Task-adaptive pretraining.
    tapt_epochs: float = field(default=100.0, metadata={"help": "Masked-LM epochs over the training text "
                                                         "(paper: 100)."})
    tapt_max_steps: int = field(default=-1, metadata={"help": "Masked-LM steps, overriding --tapt_epochs."})
    tapt_learning_rate: float = field(default=1e-4, metadata={"help": "Masked-LM peak learning rate (paper: 1e-4)."})
    tapt_batch_size: int = field(default=16, metadata={"help": "Masked-LM batch size in blocks (paper: 256 texts; "
                                                       "smaller here so a CPU takes many steps)."})
    tapt_max_seq_length: int = field(default=128, metadata={"help": "Masked-LM block length in tokens."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (paper: 0.15)."})
    tapt_seed: int = field(default=0, metadata={"help": "Seed of the one masked-LM run both TAPT arms share."})
    tapt_max_eval_samples: int = field(default=64, metadata={"help": "Dev blocks scored for masked-LM perplexity "
                                                             "before and after TAPT (a sanity check)."})
    keep_models: bool = field(default=False, metadata={"help": "Keep every fine-tuned model's weights (large); by "
                                                       "default only their results are kept."})

    def __post_init__(self):
        if not self.task_dir or not Path(self.task_dir).is_dir():
            raise InputError(f"--task_dir must be a folder with train/dev/test files, got '{self.task_dir}'.")
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder for every run and the result table.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds must be distinct integers, got {self.seeds}.")
        for name in ("learning_rate", "num_train_epochs", "tapt_epochs", "tapt_learning_rate"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}.")
        for name in ("per_device_train_batch_size", "max_seq_length", "tapt_batch_size", "tapt_max_seq_length",
                     "tapt_max_eval_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        if not 0 < self.mlm_probability < 1:
            raise InputError(f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}.")


def task_files(task_dir: str) -> dict[str, str]:
    """The task's train, validation and test files, found by name (train.jsonl, dev.jsonl, test.jsonl, ...)."""
    found = {}
    for split, stems in SPLIT_NAMES.items():
        matches = [p for p in sorted(Path(task_dir).iterdir()) if p.stem in stems and p.suffix.lower() in BUILDERS]
        if not matches:
            raise InputError(f"--task_dir {task_dir}: no {split} file (named {' or '.join(stems)} with a "
                             ".jsonl/.json/.csv extension).")
        found[split] = str(matches[0])
    return found


def finished(run_dir: Path) -> dict | None:
    """The results of a run that completed earlier, else None."""
    results = run_dir / "all_results.json"
    return json.loads(results.read_text()) if results.is_file() else None


def run_script(script: str, flags: list[str], run_dir: Path) -> dict:
    """Run one of the repository's entry points in its own process (fresh memory, its own logging); its results."""
    done = subprocess.run([sys.executable, str(REPO / script), *flags])
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {done.returncode}) writing {run_dir}; its output is above.")
    return json.loads((run_dir / "all_results.json").read_text())


def pretrain(args: TaptArguments, files: dict[str, str], run_dir: Path) -> dict:
    """(b): masked-LM on the task's training text, scored on its dev text before and after."""
    flags = ["--model_name_or_path", args.model_name_or_path, "--train_file", files["train"],
             "--validation_file", files["validation"], "--text_column_name", args.text_column_name,
             "--output_dir", str(run_dir), "--overwrite_output_dir", "true", "--max_seq_length",
             str(args.tapt_max_seq_length), "--mlm_probability", str(args.mlm_probability),
             "--learning_rate", str(args.tapt_learning_rate), "--num_train_epochs", str(args.tapt_epochs),
             "--max_steps", str(args.tapt_max_steps), "--per_device_train_batch_size", str(args.tapt_batch_size),
             "--per_device_eval_batch_size", str(args.tapt_batch_size), "--warmup_steps", "0.06",
             "--max_eval_samples", str(args.tapt_max_eval_samples), "--seed", str(args.tapt_seed),
             "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none", "--log_level", "warning"]
    results = run_script("run_mlm.py", flags, run_dir)
    restore_unused_weights(resolve_model_path(args.model_name_or_path), run_dir)
    return results


def restore_unused_weights(base: str, run_dir: Path) -> list[str]:
    """Copy into the TAPT checkpoint the base weights masked-LM training neither used nor saved (BERT's pooler).

    A masked-LM model has no pooler, so without this the TAPT arm would fine-tune from a random pooler while the
    base arm starts from the pretrained one: a difference between the arms that is not TAPT. Masked-LM training
    never touches the pooler, so the base's pooler is exactly what a full pretraining checkpoint would hold.
    """
    base_file, tapt_file = Path(base) / "model.safetensors", run_dir / "model.safetensors"
    if not base_file.is_file() or not tapt_file.is_file():
        return []
    base_weights, tapt_weights = load_file(str(base_file)), load_file(str(tapt_file))
    anchor = "embeddings.word_embeddings.weight"
    base_prefix = next((k[: -len(anchor)] for k in base_weights if k.endswith(anchor)), None)
    tapt_prefix = next((k[: -len(anchor)] for k in tapt_weights if k.endswith(anchor)), None)
    if base_prefix is None or tapt_prefix is None:
        return []
    added = []
    for key, tensor in base_weights.items():
        if key.startswith(base_prefix) and "pooler" in key:
            target = tapt_prefix + key[len(base_prefix):]
            if target not in tapt_weights:
                tapt_weights[target] = tensor
                added.append(target)
    if added:
        save_file(tapt_weights, str(tapt_file), metadata={"format": "pt"})
        logger.info("Copied the base model's unused %s into the TAPT checkpoint.", ", ".join(added))
    return added


def fine_tune(args: TaptArguments, files: dict[str, str], model: str, seed: int, run_dir: Path) -> dict:
    """(a) or (c): one fine-tuning run, dev-selected, scored on dev and test."""
    flags = ["--model_name_or_path", model, "--train_file", files["train"], "--validation_file", files["validation"],
             "--test_file", files["test"], "--text_column_name", args.text_column_name, "--label_column_name",
             args.label_column_name, "--output_dir", str(run_dir), "--seed", str(seed),
             "--learning_rate", str(args.learning_rate), "--num_train_epochs", str(args.num_train_epochs),
             "--max_steps", str(args.max_steps), "--per_device_train_batch_size", str(args.per_device_train_batch_size),
             "--max_seq_length", str(args.max_seq_length), "--report_to", "none", "--log_level", "warning"]
    for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    if args.max_steps > 0:  # too few steps for an epoch: score and keep the end of training
        flags += ["--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", str(args.max_steps),
                  "--save_steps", str(args.max_steps)]
    results = run_script("scripts/run_classification.py", flags, run_dir)
    if not args.keep_models:  # results are what the experiment needs; weights are 90 MB a run
        for path in list(run_dir.glob("checkpoint-*")) + list(run_dir.glob("*.safetensors")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return results


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), in percent."""
    values = [100 * v for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def result_table(runs: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[str, dict]:
    """Markdown table of mean ± std over seeds for each arm and for the paired difference TAPT − base."""
    columns = [("eval", "macro_f1", "dev macro-F1"), ("test", "macro_f1", "test macro-F1"),
               ("test", "micro_f1", "test micro-F1")]
    summary: dict[str, dict] = {}
    rows = ["| | " + " | ".join(title for *_, title in columns) + " |", "|---|" + "---|" * len(columns)]
    for arm, label in (("base", "base model"), ("tapt", "TAPT, then fine-tune")):
        cells = []
        for split, metric, _ in columns:
            mean, std = summarize([runs[arm][s][f"{split}_{metric}"] for s in seeds])
            summary.setdefault(arm, {})[f"{split}_{metric}"] = {"mean": mean, "std": std}
            cells.append(f"{mean:.2f} ± {std:.2f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for split, metric, _ in columns:
        key = f"{split}_{metric}"
        mean, std = summarize([runs["tapt"][s][key] - runs["base"][s][key] for s in seeds])
        summary.setdefault("difference", {})[key] = {"mean": mean, "std": std}
        cells.append(f"{mean:+.2f} ± {std:.2f}")
    rows.append("| TAPT − base (paired by seed) | " + " | ".join(cells) + " |")
    return "\n".join(rows), summary


def main(argv: list[str] | None = None) -> dict:
    """Run (a), (b), (c) over the seeds; print and save the table; return everything measured."""
    (args,) = parse_args(argv, groups=(TaptArguments,))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING, handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO)
    files = task_files(args.task_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    tapt_dir = out / "tapt"
    tapt_results = finished(tapt_dir)
    if tapt_results is None:
        logger.info("(b) masked-LM on %s's training text -> %s", Path(args.task_dir).name, tapt_dir)
        start = time.time()
        tapt_results = pretrain(args, files, tapt_dir)
        timings["tapt"] = time.time() - start
    logger.info("TAPT dev perplexity %.1f -> %.1f", tapt_results.get("eval_before_perplexity", float("nan")),
                tapt_results["eval_perplexity"])

    runs: dict[str, dict[int, dict]] = {"base": {}, "tapt": {}}
    for seed in args.seeds:
        for arm, model in (("base", args.model_name_or_path), ("tapt", str(tapt_dir))):
            run_dir = out / f"{arm}-finetune" / f"seed{seed}"
            results = finished(run_dir)
            if results is None:
                logger.info("(%s) fine-tune %s, seed %d -> %s", "a" if arm == "base" else "c", model, seed, run_dir)
                start = time.time()
                results = fine_tune(args, files, model, seed, run_dir)
                timings[f"{arm}-finetune-seed{seed}"] = time.time() - start
            runs[arm][seed] = results
            logger.info("%s seed %d: dev macro-F1 %.4f, test macro-F1 %.4f", arm, seed, results["eval_macro_f1"],
                        results["test_macro_f1"])

    table, summary = result_table(runs, args.seeds)
    title = (f"TAPT on {Path(args.task_dir).name}: {args.model_name_or_path}, {len(args.seeds)} seeds "
             f"({', '.join(map(str, args.seeds))}), mean ± std in percent")
    markdown = f"{title}\n\n{table}\n"
    print("\n" + markdown)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    report = {
        "task": Path(args.task_dir).name, "settings": asdict(args), "summary": summary,
        "tapt": {k: tapt_results[k] for k in ("eval_before_perplexity", "eval_perplexity", "train_runtime")
                 if k in tapt_results},
        "runs": {arm: {str(seed): runs[arm][seed] for seed in args.seeds} for arm in runs},
        "seconds": timings,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    run_cli(main, "tapt_experiment.py")
