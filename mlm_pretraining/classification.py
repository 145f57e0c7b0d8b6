"""Downstream sequence classification: its arguments, reading labelled files, label ids, and F1 metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict
from sklearn.metrics import accuracy_score, f1_score
from transformers import TrainingArguments

from mlm_pretraining.errors import InputError, as_list
from mlm_pretraining.text import (
    load_split,
    resolve_data_files,
    select_text,
    text_column,
)

logger = logging.getLogger(__name__)

# Held-out dev sets and --max_*_samples subsets are drawn with this seed, so every --seed sees the same data.
SPLIT_SEED = 0


@dataclass
class ClassificationDataArguments:
    """Which labelled files to train, select and test on, and which columns hold text and label."""

    train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Labelled training data: .csv/.tsv/.json/.jsonl files, folders or globs, one example a "
                  "row with a text and a label column."},
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Dev data for model selection (the epoch with the best "
                                "--metric_for_best_model is kept), in the same forms as --train_file."}
    )
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Test data, scored once with the selected model (optional)."}
    )
    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the text. Default: 'text', or the only string column besides the label."},
    )
    label_column_name: str = field(
        default="label", metadata={"help": "Column holding the label (strings or integers)."}
    )
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Without --validation_file, hold out this percentage of the training rows (a fixed "
                  "random draw, the same for every --seed) as the dev set."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate texts to this many tokens, special tokens included. Default: the model's limit, "
                  "at most 512. Batches are padded only to their longest text."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a fixed random subset of N training rows (for quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Select on a fixed random subset of N dev rows (for quick runs)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Test on a fixed random subset of N test rows (for quick runs)."}
    )

    def __post_init__(self):
        self.train_file = as_list(self.train_file)
        self.validation_file = as_list(self.validation_file)
        self.test_file = as_list(self.test_file)
        if not self.train_file:
            raise InputError("--train_file is required: the labelled training data.")
        if not self.label_column_name:
            raise InputError("--label_column_name must name a column.")
        if not self.validation_file and not 0 < self.validation_split_percentage < 100:
            raise InputError(
                "Model selection needs a dev set: give --validation_file, or a --validation_split_percentage in "
                f"(0, 100) to hold out part of the training data (got {self.validation_split_percentage})."
            )
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise InputError(f"--max_seq_length must be at least 8, got {self.max_seq_length}.")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value}.")


@dataclass
class ClassificationTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for fine-tuning: evaluate every epoch, keep the best on dev."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the fine-tuned model, its tokenizer and the results JSON are written."}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of AdamW."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    warmup_steps: float = field(
        default=0.06, metadata={"help": "Warm-up: a number of steps, or below 1 a fraction of all steps."}
    )
    eval_strategy: str = field(
        default="epoch", metadata={"help": "When to score the dev set: 'epoch', 'steps' (every --eval_steps)."}
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to checkpoint; must match --eval_strategy for model selection."}
    )
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Keep the checkpoint that scored best on dev (by --metric_for_best_model)."}
    )
    metric_for_best_model: str | None = field(
        default="macro_f1", metadata={"help": "Dev metric that selects the model: macro_f1, micro_f1, accuracy, loss."}
    )
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept on disk (the best one is always kept)."}
    )
    save_only_model: bool = field(
        default=True, metadata={"help": "Checkpoints hold the weights only (no optimizer state): smaller and faster; "
                                "enough for model selection, not for resuming."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Loggers to report to, e.g. 'tensorboard'; none by default."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder for the fine-tuned model and its results.")
        super().__post_init__()


def load_labelled_datasets(args: ClassificationDataArguments, cache_dir: str | None = None) -> DatasetDict:
    """Read train/validation/test files into a DatasetDict with 'text' and 'label' (still raw labels) columns.

    Each split may be its own file type (.csv/.tsv or .json/.jsonl). Without --validation_file, the dev set is a
    fixed random --validation_split_percentage of the training rows.
    """
    raw = {}
    for split, flag, patterns in (("train", "--train_file", args.train_file),
                                  ("validation", "--validation_file", args.validation_file),
                                  ("test", "--test_file", args.test_file)):
        if patterns:
            files = resolve_data_files(patterns, flag)
            raw[split] = _select_columns(load_split(files, flag, cache_dir=cache_dir, allow_text=False), args,
                                         f"{flag} ({', '.join(files[:3])})")
    raw = DatasetDict(raw)
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=SPLIT_SEED)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
        logger.info("No --validation_file: holding out %d of the training rows as the dev set.", len(raw["validation"]))
    return raw


def take_subsets(raw: DatasetDict, args: ClassificationDataArguments) -> DatasetDict:
    """Fixed random subsets of --max_train_samples / --max_eval_samples / --max_test_samples rows.

    Applied after :func:`label_list`, so the label set is the whole training data's even when a subset misses a
    rare label.
    """
    raw = DatasetDict(raw)
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples),
                         ("test", args.max_test_samples)):
        if split in raw and limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=SPLIT_SEED).select(range(limit))
    return raw


def _select_columns(ds: Dataset, args: ClassificationDataArguments, where: str) -> Dataset:
    """Keep the text and label columns, named 'text' and 'label'; drop rows with a blank text."""
    label = args.label_column_name
    if label not in ds.column_names:
        raise InputError(f"{where} has no label column '{label}'; choose one with --label_column_name. "
                         f"Columns: {', '.join(ds.column_names)}.")
    n = len(ds)
    ds = select_text(ds, text_column(ds, args.text_column_name, where, exclude=(label,)), where, keep=(label,))
    if label != "label":
        ds = ds.rename_column(label, "label")
    if len(ds) < n:
        logger.warning("Dropped %d rows of %s with a blank text.", n - len(ds), where)
    missing = sum(value is None for value in ds["label"])
    if missing:
        raise InputError(f"{where} has {missing} row(s) without a label in column '{label}'.")
    return ds


def label_list(train: Dataset) -> list:
    """The sorted distinct training labels; label id i is the i-th (numbers sort numerically, strings by name)."""
    labels = sorted(set(train["label"]))
    if len(labels) < 2:
        raise InputError(f"The training data has {len(labels)} distinct label(s); classification needs at least 2.")
    return labels


def label_maps(labels: list) -> tuple[dict[int, str], dict[str, int]]:
    """``id2label`` and ``label2id`` for the model config (names are strings, as configs store them)."""
    id2label = {i: str(label) for i, label in enumerate(labels)}
    return id2label, {name: i for i, name in id2label.items()}


def encode_labels(raw: DatasetDict, labels: list) -> DatasetDict:
    """Replace raw labels by their ids; a dev or test label never seen in training is an error."""
    ids = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        unseen = sorted({str(v) for v in ds["label"] if v not in ids})
        if unseen:
            raise InputError(f"The {split} data has label(s) not in the training data: {', '.join(unseen[:10])}. "
                             f"Training labels: {', '.join(map(str, labels))}.")
    return DatasetDict({split: ds.map(lambda batch: {"label": [ids[v] for v in batch["label"]]}, batched=True,
                                      desc=f"Encoding {split} labels")
                        for split, ds in raw.items()})


def classification_metrics(predictions, labels) -> dict[str, float]:
    """Accuracy, macro-F1 (unweighted mean over the classes present in labels or predictions) and micro-F1.

    For single-label classification micro-F1 equals accuracy; both are reported because papers use either name.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
    }


def compute_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for the Trainer: argmax of the logits, then :func:`classification_metrics`."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return classification_metrics(np.argmax(logits, axis=-1), eval_pred.label_ids)
