"""Labelled text (a text and a label column) for fine-tuning and for the task probe: a task folder's files found by
name, one split read and checked, the label set.

Used by classification.py (scripts/run_classification.py), probe.py (run_mlm.py --probe_task) and the TAPT
experiment, so a task folder means the same files, and a bad one fails with the same message, everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset

from mlm_pretraining.data.text import (
    BUILDERS,
    load_split,
    resolve_data_files,
    select_text,
    text_column,
)
from mlm_pretraining.errors import InputError

logger = logging.getLogger(__name__)

# A task folder's splits, by file stem: train.jsonl, dev.jsonl (or validation/valid), test.jsonl; any labelled type.
TASK_SPLIT_NAMES = {"train": ("train",), "validation": ("dev", "validation", "valid"), "test": ("test",)}


def task_files(task_dir: str, flag: str = "--task_dir",
               splits: tuple[str, ...] = ("train", "validation", "test")) -> dict[str, str]:
    """The task's ``splits`` files in ``task_dir``, found by name (train.jsonl, dev.jsonl, test.jsonl, ...), as
    absolute paths (the flags of a run do not depend on the working directory)."""
    if not Path(task_dir).is_dir():
        raise InputError(f"{flag} {task_dir}: no such folder (a folder with train and dev files is expected).")
    found = {}
    for split in splits:
        stems = TASK_SPLIT_NAMES[split]
        matches = [p for p in sorted(Path(task_dir).iterdir()) if p.stem in stems and p.suffix.lower() in BUILDERS]
        if not matches:
            raise InputError(f"{flag} {task_dir}: no {split} file (named {' or '.join(stems)} with a "
                             ".jsonl/.json/.csv extension).")
        found[split] = str(matches[0].resolve())
    return found


def read_labelled(patterns: list[str], flag: str, *, text_column_name: str | None, label_column_name: str,
                  label_flag: str = "--label_column_name", text_flag: str = "--text_column_name",
                  cache_dir: str | None = None) -> Dataset:
    """The files ``patterns`` given to ``flag`` as one split with a 'text' and a 'label' (raw) column; rows with a
    blank text dropped; a missing column or label fails naming the files and the flag that chooses the column."""
    files = resolve_data_files(patterns, flag)
    where = f"{flag} ({', '.join(files[:3])})"
    ds = load_split(files, flag, cache_dir=cache_dir, allow_text=False)
    label = label_column_name
    if label not in ds.column_names:
        raise InputError(f"{where} has no label column '{label}'; choose one with {label_flag}. "
                         f"Columns: {', '.join(ds.column_names)}.")
    n = len(ds)
    ds = select_text(ds, text_column(ds, text_column_name, where, exclude=(label,), flag=text_flag), where,
                     keep=(label,))
    if label != "label":
        ds = ds.rename_column(label, "label")
    if len(ds) < n:
        logger.warning("Dropped %d rows of %s with a blank text.", n - len(ds), where)
    missing = sum(value is None for value in ds["label"])
    if missing:
        raise InputError(f"{where} has {missing} row(s) without a label in column '{label}'.")
    return ds


def label_list(train: Dataset, where: str = "The training data") -> list:
    """The sorted distinct training labels; label id i is the i-th (numbers sort numerically, strings by name)."""
    labels = sorted(set(train["label"]))
    if len(labels) < 2:
        raise InputError(f"{where} has {len(labels)} distinct label(s); classification needs at least 2.")
    return labels
