#!/usr/bin/env python
"""TAPT levers side by side: several tapt_experiment.py folders of one task (the first the reference, usually the
default settings), one row each; a folder's results.json, or a copy of it (docs/tapt_*.json), stands for the folder.

    python scripts/experiments/compare_levers.py --experiments out/tapt-ci out/tapt-ci-epochs40 out/tapt-ci-mask20 \
        --output out/levers.md

Each row names the TAPT settings that differ from the reference's (the lever), then, in percentage points:
  - TAPT − base, paired by seed over that folder's seeds, with its 95 % Student-t interval (what the folder's own
    results.md reports);
  - lever − reference, the TAPT arms paired by seed over the seeds both folders ran: does the lever beat the
    default TAPT, beyond seed noise?
and the masked-LM perplexity after TAPT on the task's dev text and on general text (forgetting), and TAPT's minutes.
Folders of different tasks or fine-tuning settings are refused: their fine-tunes would not pair.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlm_lab.intervals import CONFIDENCE, excludes_zero, paired_interval

from arguments import parse_args
from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.files import write_text_atomically

# Settings that change the TAPT run (a lever) and settings that change the fine-tuning (must match for pairing).
TAPT_SETTINGS = ("tapt_text", "tapt_epochs", "tapt_max_steps", "tapt_learning_rate", "tapt_batch_size",
                 "tapt_max_seq_length", "mlm_probability", "head_warmup_steps", "tapt_seed", "mix_train_file",
                 "mix_share")
FINE_TUNE_SETTINGS = ("task_dir", "model_name_or_path", "text_column_name", "label_column_name", "learning_rate",
                      "num_train_epochs", "max_steps", "per_device_train_batch_size", "max_seq_length",
                      "max_train_samples", "max_eval_samples", "max_test_samples", "bf16")
# Settings newer than some results.json files: a file without one ran with this (the then only) behaviour.
ADDED_LATER = {"tapt_text": "fine_tune", "bf16": False}
METRICS = (("eval_macro_f1", "dev macro-F1"), ("test_macro_f1", "test macro-F1"), ("test_micro_f1", "test accuracy"))


@dataclass
class LeverArguments:
    """The experiment folders to set side by side."""

    experiments: list[str] = field(default_factory=list, metadata={
        "help": "tapt_experiment.py --output_dir folders of one task, each with its results.json (or that file "
                "itself, e.g. a copy in docs/); the first is the reference the others are compared with."})
    output: str | None = field(default=None, metadata={"help": "Also write the table to this markdown file."})

    def __post_init__(self):
        if len(self.experiments) < 1:
            raise InputError("Give at least one tapt_experiment.py folder (the reference first).")


def load_experiment(place: str) -> dict:
    """A finished experiment's results.json: ``place`` is its folder, or the file itself (a copy kept in docs/ outlives
    the folder: its runs can be compared with later levers); else an error naming it."""
    path = Path(place) if Path(place).is_file() else Path(place) / "results.json"
    if not path.is_file():
        raise InputError(f"{place} has no results.json: run (or finish) scripts/experiments/tapt_experiment.py with "
                         f"--output_dir {place} first, or give a copy of its results.json.")
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or not {"settings", "runs"} <= report.keys():
        raise InputError(f"{path} is not a tapt_experiment.py results.json (no settings and runs).")
    return report


def setting(settings: dict, key: str):
    """An experiment's setting ``key``, or the behaviour it ran with when its results.json predates the setting."""
    return settings.get(key, ADDED_LATER.get(key))


def shown(value) -> str:
    """A setting's value as a row shows it: an absolute path (runs record files resolved) relative to the working
    directory, as a user would type it there (../shared/data/..., not one machine's /work/...)."""
    if isinstance(value, list):
        return " ".join(shown(item) for item in value)
    return os.path.relpath(value) if isinstance(value, str) and os.path.isabs(value) else str(value)


def lever_name(settings: dict, reference: dict) -> str:
    """The TAPT settings where ``settings`` differ from ``reference``, as flags; '(same TAPT settings)' if none."""
    changed = [f"--{key} {shown(setting(settings, key))}"
               for key in TAPT_SETTINGS if setting(settings, key) != setting(reference, key)]
    return " ".join(changed) if changed else "(same TAPT settings)"


def experiment_name(place: str) -> str:
    """How a row names an experiment: its folder's name, or a results file's name without its suffix."""
    path = Path(place)
    return path.stem if path.is_file() else path.name


def interval_cell(differences: list[float]) -> str:
    interval = paired_interval(differences)
    if math.isnan(interval["half_width"]):
        return f"{interval['mean']:+.2f} (n=1)"
    star = "*" if excludes_zero(interval) else ""
    return f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]{star} (n={interval['n']})"


def paired(runs_a: dict, runs_b: dict, key: str) -> list[float]:
    """Per-seed differences a − b in percentage points over the seeds both hold, in seed order."""
    return [100 * (runs_a[s][key] - runs_b[s][key]) for s in sorted(set(runs_a) & set(runs_b), key=int)]


def lever_table(experiments: list[tuple[str, dict]]) -> str:
    """One markdown row per experiment; the first is the reference."""
    _, reference = experiments[0]
    for folder, report in experiments[1:]:
        different = [key for key in FINE_TUNE_SETTINGS
                     if setting(report["settings"], key) != setting(reference["settings"], key)
                     and not (key == "task_dir" and Path(report["settings"][key]).name
                              == Path(reference["settings"][key]).name)]
        if different:
            raise InputError(f"{folder} fine-tunes differently from {experiments[0][0]} "
                             f"({', '.join('--' + key for key in different)}): its TAPT arm cannot be paired with "
                             "the reference's. Compare experiments of one task and one fine-tuning setting.")
    header = (["lever (TAPT settings that differ)", "seeds"]
              + [f"TAPT − base: {title}" for _, title in METRICS]
              + [f"lever − reference TAPT: {title}" for _, title in METRICS]
              + ["task dev perplexity", "general perplexity", "TAPT minutes"])
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (folder, report) in enumerate(experiments):
        runs = report["runs"]
        cells = ["reference: " + experiment_name(folder) if index == 0 else lever_name(report["settings"],
                                                                                  reference["settings"]),
                 ", ".join(sorted(runs["tapt"], key=int))]
        cells += [interval_cell(paired(runs["tapt"], runs["base"], key)) for key, _ in METRICS]
        cells += (["–"] * len(METRICS) if index == 0 else
                  [interval_cell(paired(runs["tapt"], reference["runs"]["tapt"], key)) for key, _ in METRICS])
        perplexity = report.get("tapt", {}).get("perplexity", {})
        cells += [f"{perplexity[name]['after']:,.1f}" if name in perplexity else "–" for name in ("task", "general")]
        minutes = report.get("minutes", {}).get("tapt", {}).get("tapt")
        cells.append(f"{minutes:.1f}" if minutes is not None else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    (args,) = parse_args(argv, groups=(LeverArguments,))
    experiments = [(folder, load_experiment(folder)) for folder in args.experiments]
    markdown = (f"TAPT levers on {experiments[0][1]['task']}: differences in percentage points, mean of per-seed "
                f"differences [{CONFIDENCE:.0%} Student-t interval], * where it excludes 0.\n\n"
                + lever_table(experiments) + "\n")
    print(markdown)
    if args.output:
        write_text_atomically(Path(args.output), markdown)
    return markdown


if __name__ == "__main__":
    run_cli(main, "compare_levers.py")
