#!/usr/bin/env python
"""Draw the training curves of one or several run_mlm.py runs into one PNG, for comparison.

    python scripts/plot_curves.py --run_dirs out/base out/wwm --names token-masking whole-word --output compare.png

Reads each folder's trainer_state.json (or its last checkpoint's, for a run still going).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arguments import parse_args
from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.reporting.plotting import plot_runs, read_log_history


@dataclass
class PlotArguments:
    """Which runs to draw, under which names, into which file."""

    run_dirs: list[str] = field(
        default_factory=list, metadata={"help": "Output folders of run_mlm.py runs (their --output_dir)."}
    )
    names: list[str] | None = field(
        default=None, metadata={"help": "Legend name of each run, in order. Default: the folder names."}
    )
    output: str = field(default="training_curves.png", metadata={"help": "The PNG to write."})
    title: str | None = field(default=None, metadata={"help": "Title above the plots."})

    def __post_init__(self):
        if not self.run_dirs:
            raise InputError("--run_dirs is required: one or more run output folders.")
        if self.names is not None and len(self.names) != len(self.run_dirs):
            raise InputError(f"--names gives {len(self.names)} name(s) for {len(self.run_dirs)} --run_dirs; "
                             "give one name per run.")
        if not self.output.lower().endswith(".png"):
            raise InputError(f"--output must be a .png file, got '{self.output}'.")


def main(argv: list[str] | None = None) -> Path:
    """Draw the runs and return the PNG's path."""
    (args,) = parse_args(argv, groups=(PlotArguments,))
    names = args.names or [Path(d).resolve().name for d in args.run_dirs]
    runs = {}
    for name, folder in zip(names, args.run_dirs):
        runs[name if name not in runs else f"{name} ({folder})"] = read_log_history(folder)
    path = plot_runs(runs, args.output, title=args.title)
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main, "plot_curves.py")
