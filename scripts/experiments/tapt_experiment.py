#!/usr/bin/env python
"""Task-adaptive pretraining (TAPT, Gururangan et al. 2020), measured: does masked-LM on a task's own training text
improve fine-tuning on that task, by more than the noise between fine-tuning seeds?

For one task folder (train/dev/test files with text and label columns):
  (a) fine-tune the base model, once per seed;
  (b) continue masked-LM pretraining of the base model on the task's training text (with --max_train_samples, the
      text of the rows fine-tuned on) with run_mlm.py, once (a new MLM head is warmed up first, --head_warmup_steps
      auto), scoring masked-LM perplexity on the task's dev text and on general text (WikiText-2 test: what TAPT
      makes the model forget) before and after;
  (c) fine-tune that checkpoint, once per seed, with exactly the settings and seeds of (a).
Reports, per metric (dev macro-F1, test macro-F1, test micro-F1 = accuracy), each arm's mean ± std over seeds and
the paired difference TAPT − base (same seed) with its 95 % Student-t confidence interval; the perplexities; the
minutes each arm cost. Writes output_dir/results.md, results.json and results.png. Finished runs are reused and a
stopped TAPT run resumes from its last checkpoint, so a stopped experiment continues where it stood (each run's
output is in its folder's run.log).

    python scripts/experiments/tapt_experiment.py --task_dir ../shared/data/citation_intent --output_dir out/tapt-ci
    # a lever (here the head warm-up) in its own folder, the base arm's runs taken from the first experiment:
    python scripts/experiments/tapt_experiment.py --task_dir ../shared/data/citation_intent --output_dir out/tapt-ci-warmup300 \
        --head_warmup_steps 300 --base_runs_dir out/tapt-ci
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlm_lab.intervals import CONFIDENCE, excludes_zero, paired_interval
from mlm_lab.tapt_runs import (
    ARMS,
    TaptArguments,
    fine_tune,
    fine_tune_flags,
    finished,
    pretrain_flags,
    run_script,
    tapt_train_file,
)

from arguments import parse_args
from mlm_pretraining.checkpoints import last_complete_checkpoint
from mlm_pretraining.data.labelled import task_files
from mlm_pretraining.errors import run_cli
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.logs import get_logger
from mlm_pretraining.reporting.plotting import save_png

logger = get_logger("tapt_experiment")
# (results key, title): single-label micro-F1 is accuracy.
COLUMNS = (("eval_macro_f1", "dev macro-F1"), ("test_macro_f1", "test macro-F1"),
           ("test_micro_f1", "test micro-F1 (= accuracy)"))


def result_table(runs: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[str, dict]:
    """Markdown table, in percent: each arm's mean ± std over seeds, and the paired difference TAPT − base with its
    95 % confidence interval (marked * when the interval excludes 0)."""
    summary: dict[str, dict] = {"base": {}, "tapt": {}, "difference": {}}
    rows = ["| | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for arm, label in (("base", "base model"), ("tapt", "TAPT, then fine-tune")):
        cells = []
        for key, _ in COLUMNS:
            values = [100 * runs[arm][s][key] for s in seeds]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[arm][key] = {"mean": statistics.fmean(values), "std": std}
            cells.append(f"{summary[arm][key]['mean']:.2f} ± {std:.2f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for key, _ in COLUMNS:
        interval = paired_interval([100 * (runs["tapt"][s][key] - runs["base"][s][key]) for s in seeds])
        summary["difference"][key] = interval
        if math.isnan(interval["half_width"]):
            cells.append(f"{interval['mean']:+.2f} (one seed: no interval)")
        else:
            star = "*" if excludes_zero(interval) else ""
            cells.append(f"{interval['mean']:+.2f} ± {interval['half_width']:.2f}{star} "
                         f"[{interval['low']:+.2f}, {interval['high']:+.2f}]")
    rows.append(f"| TAPT − base, paired by seed, {CONFIDENCE:.0%} CI | " + " | ".join(cells) + " |")
    return "\n".join(rows), summary


def warmup_evaluation(run_dir: Path) -> dict[str, float]:
    """The evaluation run_mlm.py logs when the head warm-up ends (the base encoder with a fitted head), from the
    run's trainer_state.json; {} when there was none (a checkpoint with a trained head: no warm-up)."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return {}
    state = json.loads(path.read_text())
    # The only evaluation between step 0 (before) and the last step (after): pretrain_flags sets --eval_strategy no.
    inside = [entry for entry in state["log_history"] if any(k.startswith("eval_") for k in entry)
              and 0 < entry.get("step", 0) < state["global_step"]]
    # Each named set is logged as its own entry.
    return {k: v for entry in inside if entry["step"] == inside[0]["step"] for k, v in entry.items()} if inside else {}


def perplexity_table(tapt_results: dict, warmed_up: dict | None = None) -> tuple[str, dict]:
    """Masked-LM perplexity of each evaluation set (task: adaptation; general: forgetting) before TAPT, after the
    head warm-up (the base encoder with a fitted head: the fair comparison when the base had no head) and after."""
    found = {}
    for name in ("task", "general"):
        after = tapt_results.get(f"eval_{name}_perplexity")
        if after is not None:
            found[name] = {"before": tapt_results.get(f"eval_before_{name}_perplexity"),
                           "after_head_warmup": (warmed_up or {}).get(f"eval_{name}_perplexity"), "after": after}
    rows = ["| masked-LM perplexity | before TAPT | after head warm-up (base encoder) | after TAPT |",
            "|---|---|---|---|"]
    titles = {"task": "task dev text", "general": "general text (forgetting)"}
    for name, values in found.items():
        cells = [f"{values[k]:.2f}" if values[k] is not None else "–" for k in ("before", "after_head_warmup", "after")]
        rows.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows), found


def cost_table(minutes: dict) -> str:
    """Minutes per arm: TAPT once, fine-tuning per seed, and the arm's total."""
    rows = ["| minutes | TAPT | fine-tune per seed (mean) | arm total |", "|---|---|---|---|"]
    for arm, label in (("base", "base model"), ("tapt", "TAPT, then fine-tune")):
        cost = minutes[arm]
        per_seed = [m for m in cost["fine_tune"].values() if m is not None]
        cells = [f"{cost['tapt']:.1f}" if cost.get("tapt") is not None else "–",
                 f"{statistics.fmean(per_seed):.1f}" if per_seed else "?",
                 f"{cost['total']:.1f}" if cost["total"] is not None else "?"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_results(summary: dict, path: Path, title: str) -> Path:
    """Bars of both arms' means per metric, and the paired differences with their confidence intervals."""
    figure = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    arms_axes, diff_axes = figure.subplots(1, 2, width_ratios=[3, 2])
    positions = range(len(COLUMNS))
    for offset, arm, label in ((-0.2, "base", "base model"), (0.2, "tapt", "TAPT, then fine-tune")):
        means = [summary[arm][key]["mean"] for key, _ in COLUMNS]
        stds = [summary[arm][key]["std"] for key, _ in COLUMNS]
        bars = arms_axes.bar([p + offset for p in positions], means, width=0.4, yerr=stds, capsize=3, label=label)
        arms_axes.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    arms_axes.set(title="Mean over seeds (± std)", ylabel="percent", xticks=list(positions),
                  xticklabels=[title for _, title in COLUMNS])
    arms_axes.legend(fontsize=8, loc="lower right")
    differences = [summary["difference"][key] for key, _ in COLUMNS]
    halves = [0 if math.isnan(d["half_width"]) else d["half_width"] for d in differences]
    diff_axes.bar(list(positions), [d["mean"] for d in differences], yerr=halves, capsize=5, color="C2")
    diff_axes.axhline(0, color="black", linewidth=0.8)
    diff_axes.set(title=f"TAPT − base, paired by seed ({CONFIDENCE:.0%} CI)", ylabel="percentage points",
                  xticks=list(positions), xticklabels=[title.split(" (")[0] for _, title in COLUMNS])
    for axes in (arms_axes, diff_axes):
        axes.grid(True, axis="y", alpha=0.3)
        axes.tick_params(axis="x", labelsize=8)
    figure.suptitle(title)
    return save_png(figure, path)


def main(argv: list[str] | None = None) -> dict:
    """Run (a), (b), (c) over the seeds; print and save the tables and the chart; return everything measured."""
    (args,) = parse_args(argv, groups=(TaptArguments,))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING, handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO)
    files = task_files(args.task_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    launched: list[str] = []

    base_out = Path(args.base_runs_dir) if args.base_runs_dir else out  # where the base arm's runs live
    tapt_dir = out / "tapt"
    if "tapt" in args.arms:  # the base arm alone needs no TAPT run: it can fine-tune meanwhile
        flags = pretrain_flags(args, files, tapt_dir, tapt_train_file(args, files, out))
        tapt_record = finished(tapt_dir, flags, "eval_task_perplexity")
        if tapt_record is None:
            checkpoint = last_complete_checkpoint(str(tapt_dir)) if tapt_dir.is_dir() else None
            logger.info("(b) masked-LM on %s's training text -> %s%s", Path(args.task_dir).name, tapt_dir,
                        f", resuming the stopped run from {Path(checkpoint).name}" if checkpoint else "")
            tapt_record = run_script("run_mlm.py", flags, tapt_dir)
            launched.append("tapt")
        tapt_results = tapt_record["result"]
        perplexity, perplexities = perplexity_table(tapt_results, warmup_evaluation(tapt_dir))
        for name, values in perplexities.items():
            logger.info("TAPT %s perplexity: %s before, %s after head warm-up, %.2f after", name,
                        *(f"{values[k]:.2f}" if values[k] is not None else "–" for k in ("before", "after_head_warmup")),
                        values["after"])

    arm_runs: dict[str, dict[int, dict]] = {"base": {}, "tapt": {}}
    fine_tune_minutes: dict[str, dict[str, float | None]] = {"base": {}, "tapt": {}}
    for seed in args.seeds:
        for arm, model in (("base", args.model_name_or_path), ("tapt", str(tapt_dir))):
            if arm not in args.arms:
                continue
            run_dir = (base_out if arm == "base" else out) / f"{arm}-finetune" / f"seed{seed}"
            flags = fine_tune_flags(args, files, model, seed, run_dir)
            record = finished(run_dir, flags, "test_macro_f1")
            if record is None:
                logger.info("(%s) fine-tune %s, seed %d -> %s", "a" if arm == "base" else "c", model, seed, run_dir)
                record = fine_tune(args, flags, run_dir)
                launched.append(f"{arm}-finetune-seed{seed}")
            results = arm_runs[arm][seed] = record["result"]
            seconds = record["seconds"]
            fine_tune_minutes[arm][str(seed)] = None if seconds is None else seconds / 60
            logger.info("%s seed %d: dev macro-F1 %.4f, test macro-F1 %.4f", arm, seed, results["eval_macro_f1"],
                        results["test_macro_f1"])

    if set(args.arms) != set(ARMS):  # a share of the experiment: the table waits for a run with both arms
        logger.info("Finished the %s arm's runs; rerun with both arms for the table (finished runs are reused).",
                    " and ".join(args.arms))
        return {"runs": {arm: {str(s): r for s, r in arm_runs[arm].items()} for arm in args.arms}, "launched": launched}
    tapt_seconds = tapt_record["seconds"]
    minutes = {}
    for arm in ("base", "tapt"):
        parts = list(fine_tune_minutes[arm].values()) + ([None if tapt_seconds is None else tapt_seconds / 60]
                                                         if arm == "tapt" else [])
        minutes[arm] = {"tapt": tapt_seconds / 60 if arm == "tapt" and tapt_seconds is not None else None,
                        "fine_tune": fine_tune_minutes[arm],
                        "total": None if None in parts else sum(parts)}
    tokens = round(tapt_results.get("train_samples", 0) * args.tapt_max_seq_length * tapt_results.get("epoch", 0))

    table, summary = result_table(arm_runs, args.seeds)
    title = (f"TAPT on {Path(args.task_dir).name}: {Path(args.model_name_or_path).name}, {len(args.seeds)} "
             f"seed{'s' if len(args.seeds) > 1 else ''} ({', '.join(map(str, args.seeds))})")
    text = (f"the fine-tuning subset's text ({args.max_train_samples:,} rows)" if args.tapt_on_subset else
            "the task's training text")
    settings = (f"TAPT: {tapt_results.get('epoch', 0):.1f} epochs of {text} (about {tokens:,} "
                f"tokens in {args.tapt_max_seq_length}-token blocks), learning rate {args.tapt_learning_rate}, mask "
                f"rate {args.mlm_probability}, head warm-up {args.head_warmup_steps}"
                + (f", mixed with {', '.join(args.mix_train_file)}" if args.mix_train_file else "") + ".")
    markdown = (f"{title}\n\n{settings}\n\nFine-tuning scores in percent: mean ± std over seeds; the difference is "
                f"the mean of per-seed differences ± the half-width of its {CONFIDENCE:.0%} Student-t interval "
                f"[low, high], * where it excludes 0.\n\n{table}\n\n{perplexity}\n\n{cost_table(minutes)}\n")
    print("\n" + markdown)
    write_text_atomically(out / "results.md", markdown)
    chart = plot_results(summary, out / "results.png", title)
    report = {
        "task": Path(args.task_dir).name, "settings": asdict(args), "summary": summary,
        "tapt": {"perplexity": perplexities, "tokens": tokens,
                 **{k: tapt_results[k] for k in ("train_runtime", "epoch", "train_samples") if k in tapt_results}},
        "runs": {arm: {str(seed): arm_runs[arm][seed] for seed in args.seeds} for arm in arm_runs},
        "minutes": minutes, "launched": launched, "chart": str(chart),
    }
    write_text_atomically(out / "results.json", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main, "tapt_experiment.py")
