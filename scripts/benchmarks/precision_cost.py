#!/usr/bin/env python
"""What bf16 mixed precision costs in quality: the same run_mlm.py run in fp32 and in bf16, seed by seed.

Each seed's two runs share everything but the precision (model, data, steps, masks, seed); the report gives each
precision's evaluation loss, perplexity and masked-token accuracy after training (mean ± std over seeds) and the
paired difference bf16 − fp32 with its 95 % Student-t interval. Each run evaluates as it trains (the bf16 run under
autocast, its weights in fp32), so the difference is what a user of --bf16 sees. Speed is not the question here:
on a CPU without native bf16 the bf16 runs are emulated and several times slower, but their numbers are bf16's.
Finished runs are reused (a stopped comparison continues); each run's output is in its folder's run.log.

    python scripts/benchmarks/precision_cost.py --output_dir out/precision-cost --seeds 1 2 3
    python scripts/benchmarks/precision_cost.py --output_dir out/precision-cost --config my_run.yaml --max_steps 500

Flags after --config's file reach run_mlm.py unchanged (e.g. --max_steps); --output_dir, --seed and the precision
are set per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mlm_lab import runs
from mlm_lab.intervals import CONFIDENCE, excludes_zero, paired_interval
from mlm_lab.paths import REPO

from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.files import write_text_atomically

PRECISIONS = {"fp32": [], "bf16": ["--bf16", "True"]}
# (results key, title, scale, decimals): what the table reports of each run's all_results.json.
SCORES = (("eval_loss", "eval loss", 1.0, 4), ("eval_perplexity", "perplexity", 1.0, 2),
          ("eval_accuracy", "masked-token accuracy (%)", 100.0, 2))


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    # No abbreviations: the flags this script does not know go to run_mlm.py whole (--seed is not --seeds).
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder for every run and the report.")
    parser.add_argument("--config", default=str(REPO / "examples" / "quickstart.yaml"),
                        help="run_mlm.py's configuration (default: examples/quickstart.yaml, the quickstart run).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="Seeds, each run in both precisions (pairs for the paired difference).")
    args, passed_on = parser.parse_known_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
        parser.error(f"--seeds: give at least 2 distinct seeds, got {args.seeds}.")
    if not Path(args.config).is_file():
        raise InputError(f"--config: no such file '{args.config}'.")
    for flag in ("--output_dir", "--seed", "--bf16", "--fp16"):
        if flag in passed_on:
            raise InputError(f"{flag} is set per run by precision_cost.py; leave it out.")
    return args, passed_on


def run(config: str, passed_on: list[str], precision: str, seed: int, folder: Path) -> dict:
    """One run_mlm.py run (reused once finished): its all_results.json and wall-clock seconds."""
    flags = [str(Path(config).resolve()), *passed_on, "--output_dir", str(folder), "--seed", str(seed),
             "--report_to", "none", *PRECISIONS[precision]]
    record = runs.finished(folder, flags)
    if record is None:
        print(f"{precision}, seed {seed} -> {folder}", flush=True)
        record = runs.run_entry_point("run_mlm.py", flags, folder, flags, cwd=REPO)  # the config's paths: from REPO
    return {**record["result"], "seconds": record["seconds"]}


def report(results: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[str, dict]:
    """Markdown: each precision's scores (mean ± std), and bf16 − fp32 paired by seed with its interval."""
    rows = ["| | " + " | ".join(title for _, title, _, _ in SCORES) + " | minutes per run |",
            "|---|" + "---|" * (len(SCORES) + 1)]
    summary: dict = {}
    for precision in PRECISIONS:
        cells = []
        for key, _, scale, decimals in SCORES:
            values = [scale * results[precision][s][key] for s in seeds]
            summary.setdefault(precision, {})[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values)}
            cells.append(f"{statistics.fmean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}")
        minutes = [results[precision][s]["seconds"] / 60 for s in seeds if results[precision][s]["seconds"]]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "?")
        rows.append(f"| {precision} | " + " | ".join(cells) + " |")
    cells = []
    for key, _, scale, d in SCORES:
        interval = paired_interval([scale * (results["bf16"][s][key] - results["fp32"][s][key]) for s in seeds])
        summary.setdefault("difference", {})[key] = interval
        cells.append(f"{interval['mean']:+.{d}f} [{interval['low']:+.{d}f}, {interval['high']:+.{d}f}]"
                     + ("*" if excludes_zero(interval) else ""))
    rows.append(f"| bf16 − fp32, paired by seed, {CONFIDENCE:.0%} CI | " + " | ".join(cells) + " | |")
    per_seed = ", ".join(f"seed {s}: {results['fp32'][s]['eval_loss']:.4f} → {results['bf16'][s]['eval_loss']:.4f}"
                         for s in seeds)
    return "\n".join(rows) + f"\n\nEval loss per seed, fp32 → bf16: {per_seed}.\n", summary


def main(argv=None) -> dict:
    args, passed_on = parse_args(argv)
    out = Path(args.output_dir)
    results: dict[str, dict[int, dict]] = {precision: {} for precision in PRECISIONS}
    for seed in args.seeds:  # alternating, so that a machine's drift falls on both precisions alike
        for precision in PRECISIONS:
            results[precision][seed] = run(args.config, passed_on, precision, seed, out / f"{precision}-seed{seed}")
    table, summary = report(results, args.seeds)
    markdown = (f"bf16 against fp32: {Path(args.config).name} {' '.join(passed_on)}, seeds "
                f"{', '.join(map(str, args.seeds))}; * where the interval excludes 0.\n\n{table}")
    print("\n" + markdown)
    write_text_atomically(out / "results.md", markdown)
    write_text_atomically(out / "results.json", json.dumps({"summary": summary, "runs": {
        p: {str(s): r for s, r in by_seed.items()} for p, by_seed in results.items()}}, indent=2))
    return summary


if __name__ == "__main__":
    run_cli(main, "precision_cost.py")
