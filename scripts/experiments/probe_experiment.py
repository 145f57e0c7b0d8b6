#!/usr/bin/env python
"""Does the task probe predict fine-tuning? One TAPT run probed as it goes, its checkpoints fine-tuned.

For one task folder (train/dev/test files with text and label columns):
  (a) one masked-LM run on the task's training text (run_mlm.py, the settings of tapt_experiment.py's TAPT run) with
      --probe_task on the same folder (with --max_train_samples / --max_eval_samples: on the rows the fine-tunes
      train and select on): before training and every --probe_every_epochs it evaluates, probes (a logistic
      regression on the frozen encoder's embeddings of the train texts, scored on dev) and saves a checkpoint;
  (b) the base model and the checkpoints at --checkpoint_epochs fine-tuned once per seed with
      run_classification.py (the settings and seeds of tapt_experiment.py's fine-tunes), as is the checkpoint the
      probe picks (the highest probe dev macro-F1 among the saved checkpoints: what --metric_for_best_model
      probe_macro_f1 --load_best_model_at_end keeps) if it is not among them.
Reports, per point: the probe's dev macro-F1, the task dev perplexity and the fine-tuned scores (mean ± std over
seeds); the Spearman rank correlation between the probe and the fine-tuned test macro-F1 over the fine-tuned points,
with its 95 % interval (Fisher z, Bonett-Wright standard error, so n >= 4 points); and the paired differences by seed,
with their Student-t intervals, of the probe's pick against the last checkpoint and against the base model. Writes
output_dir/results.md, results.json and results.png. Every run is reused once finished (tapt_experiment.py's records),
so a stopped experiment continues where it stood; the base arm's fine-tunes are tapt_experiment.py's (--base_runs_dir
shares them).

    python scripts/experiments/probe_experiment.py --task_dir ../shared/data/citation_intent \
        --output_dir out/probe-citation_intent --seeds 1 2 3 --workers 2
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlm_lab.intervals import CONFIDENCE, excludes_zero, paired_interval
from mlm_lab.tapt_runs import (
    TaptArguments,
    fine_tune,
    fine_tune_flags,
    fine_tuning_subsets,
    finished,
    pretrain_flags,
    run_script,
    tapt_train_file,
    write_jsonl,
)
from safetensors.torch import load_file, save_file
from scipy import stats
from transformers.utils import SAFE_WEIGHTS_NAME

from arguments import parse_args
from mlm_pretraining.checkpoints import last_complete_checkpoint
from mlm_pretraining.data.labelled import task_files
from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.logs import get_logger
from mlm_pretraining.reporting.plotting import save_png

logger = get_logger("probe_experiment")
# Fine-tuned scores (results key, title), as tapt_experiment.py reports them.
SCORES = (("eval_macro_f1", "dev macro-F1"), ("test_macro_f1", "test macro-F1"), ("test_micro_f1", "test accuracy"))
PROBE_KEY = "probe_macro_f1"
# What a checkpoint folder holds that a model folder does not: the Trainer's state for resuming.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin",
                  "scaler.pt")


@dataclass
class ProbeExperimentArguments:
    """Where the TAPT run is probed and which checkpoints are fine-tuned."""

    checkpoint_epochs: list[float] = field(
        default_factory=lambda: [5.0, 10.0, 20.0, 40.0],
        metadata={"help": "TAPT epochs whose checkpoints are fine-tuned (the base model, epoch 0, always is); each a "
                  "multiple of --probe_every_epochs, the last at most --tapt_epochs."})
    probe_every_epochs: float = field(
        default=5.0, metadata={"help": "Evaluate, probe and save a checkpoint every this many TAPT epochs."})
    probe_max_train_samples: int | None = field(
        default=None, metadata={"help": "run_mlm.py's --probe_max_train_samples (default: run_mlm.py's)."})
    probe_max_eval_samples: int | None = field(
        default=None, metadata={"help": "run_mlm.py's --probe_max_eval_samples (default: run_mlm.py's)."})
    stop_patience: int = field(
        default=2, metadata={"help": "The stop rule tried on the probe: stop once the probe has not beaten its best for "
                             "this many evaluations and keep the best so far (the base model when no checkpoint beat "
                             "it); its kept point is fine-tuned too."})
    workers: int = field(
        default=1, metadata={"help": "Runs side by side (the TAPT run beside the base model's fine-tunes, then the "
                             "checkpoints' fine-tunes); with more than 1 each run gets one torch thread "
                             "(OMP_NUM_THREADS=1) unless OMP_NUM_THREADS is set."})

    def check(self, tapt: TaptArguments) -> None:
        if self.probe_every_epochs <= 0 or self.probe_every_epochs > tapt.tapt_epochs:
            raise InputError(f"--probe_every_epochs must be positive and at most --tapt_epochs "
                             f"({tapt.tapt_epochs:g}), got {self.probe_every_epochs:g}.")
        if tapt.tapt_max_steps > 0:
            raise InputError("--tapt_max_steps: this experiment places its checkpoints by epoch; give --tapt_epochs.")
        for epoch in self.checkpoint_epochs:
            multiple = epoch / self.probe_every_epochs
            if epoch <= 0 or epoch > tapt.tapt_epochs or abs(multiple - round(multiple)) > 1e-9:
                raise InputError(f"--checkpoint_epochs: {epoch:g} is not a multiple of --probe_every_epochs "
                                 f"({self.probe_every_epochs:g}) in (0, --tapt_epochs {tapt.tapt_epochs:g}].")
        if self.stop_patience < 1:
            raise InputError(f"--stop_patience must be at least 1, got {self.stop_patience}.")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}.")
        if len(tapt.seeds) < 2:
            raise InputError("--seeds: give at least 2 seeds (paired intervals need them).")


def with_flags(flags: list[str], **values: list[str]) -> list[str]:
    """``flags`` (a command line) with each ``--name``'s values replaced by ``values[name]`` (added if absent)."""
    flags = list(flags)
    for name, value in values.items():
        flag = f"--{name}"
        if flag in flags:
            start = end = flags.index(flag)
            end += 1
            while end < len(flags) and not flags[end].startswith("--"):
                end += 1
            flags[start:end] = [flag, *value]
        else:
            flags += [flag, *value]
    return flags


def probe_data_flags(args: TaptArguments, files: dict[str, str], out: Path) -> dict[str, list[str]]:
    """The probe's labelled data: the task folder, or with --max_train_samples / --max_eval_samples the rows the
    fine-tunes train and select on (written to ``out``), so the probe knows what a user with those rows knows."""
    if args.max_train_samples is None and args.max_eval_samples is None:
        return {"probe_task": [args.task_dir], "probe_text_column_name": [args.text_column_name],
                "probe_label_column_name": [args.label_column_name]}
    subsets = fine_tuning_subsets(args, files)
    return {f"probe_{split}_file": [write_jsonl(out / f"probe_{split}.jsonl", subsets[split])]
            for split in ("train", "validation")} | {"probe_text_column_name": ["text"],
                                                     "probe_label_column_name": ["label"]}


def probed_pretrain_flags(args: TaptArguments, lab: ProbeExperimentArguments, files: dict[str, str],
                          run_dir: Path, train_file: str, probe_data: dict[str, list[str]]) -> list[str]:
    """tapt_experiment.py's TAPT flags, evaluating, probing (on ``probe_data``: :func:`probe_data_flags`) and saving
    every --probe_every_epochs (a share of the run, which run_mlm.py turns into steps), every checkpoint kept."""
    share = f"{lab.probe_every_epochs / args.tapt_epochs:.6g}"
    flags = with_flags(pretrain_flags(args, files, run_dir, train_file),
                       eval_strategy=["steps"], eval_steps=[share], save_strategy=["steps"], save_steps=[share],
                       save_total_limit=["-1"], **probe_data)
    for name in ("probe_max_train_samples", "probe_max_eval_samples"):
        if getattr(lab, name) is not None:
            flags = with_flags(flags, **{name: [str(getattr(lab, name))]})
    return flags


def probe_curve(tapt_dir: Path) -> list[dict]:
    """The probe's scores through the TAPT run, [{'step', 'epoch', 'probe_macro_f1', 'task_perplexity'}], from its
    trainer_state.json (step 0: the before-training evaluation, from all_results.json): at the steps it saved a
    checkpoint, and its last. The evaluation when the head warm-up ends is left out: it has no checkpoint, and its
    encoder is the base model's (frozen during the warm-up), probed at step 0."""
    state = json.loads((tapt_dir / "trainer_state.json").read_text())
    before = json.loads((tapt_dir / "all_results.json").read_text())
    curve = [{"step": 0, "epoch": 0.0, PROBE_KEY: before[f"eval_before_{PROBE_KEY}"],
              "task_perplexity": before.get("eval_before_task_perplexity")}]
    perplexity = {entry["step"]: entry["eval_task_perplexity"] for entry in state["log_history"]
                  if "eval_task_perplexity" in entry}
    saved = {int(path.name.removeprefix("checkpoint-")) for path in tapt_dir.glob("checkpoint-*")} | {
        state["global_step"]}
    for entry in state["log_history"]:  # the last step's is logged twice (periodic and final evaluation)
        if f"eval_{PROBE_KEY}" in entry and entry["step"] > curve[-1]["step"] and entry["step"] in saved:
            curve.append({"step": entry["step"], "epoch": entry["epoch"], PROBE_KEY: entry[f"eval_{PROBE_KEY}"],
                          "task_perplexity": perplexity.get(entry["step"])})
    return curve


def stop_rule(curve: list[dict], patience: int) -> tuple[dict, dict]:
    """Early stopping on the probe over ``curve`` (before training first): (the point where the run would stop, the
    point it keeps). It stops once the probe has not beaten its best for ``patience`` evaluations in a row and keeps
    the best so far, which is the base model (step 0) when no checkpoint beat it; a run that never stops keeps its
    best."""
    best, waited = curve[0], 0
    for point in curve[1:]:
        if point[PROBE_KEY] > best[PROBE_KEY]:
            best, waited = point, 0
        else:
            waited += 1
            if waited >= patience:
                return point, best
    return curve[-1], best


def checkpoint_at(tapt_dir: Path, step: int) -> Path:
    """The TAPT run's checkpoint of ``step``; an InputError naming the folder when it is missing."""
    path = tapt_dir / f"checkpoint-{step}"
    if not (path / SAFE_WEIGHTS_NAME).is_file():
        raise InputError(f"{path} is missing: the TAPT run keeps every checkpoint (--save_total_limit -1); was it "
                         f"removed? Delete {tapt_dir} to rerun it.")
    return path


def export_checkpoint(checkpoint: Path, final: Path, folder: Path) -> Path:
    """A model folder of ``checkpoint`` that fine-tunes as the final TAPT model does: its weights plus those only the
    final folder holds (the base model's pooler, which run_mlm.py keeps in its output, not in checkpoints: a classifier
    would otherwise start from a random pooler at every checkpoint but the last). Written whole, then renamed."""
    weights_file = folder / SAFE_WEIGHTS_NAME
    if weights_file.is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoint, partial, ignore=shutil.ignore_patterns(*TRAINING_STATE))
    weights = load_file(str(checkpoint / SAFE_WEIGHTS_NAME))
    kept = {key: tensor for key, tensor in load_file(str(final / SAFE_WEIGHTS_NAME)).items() if key not in weights}
    save_file({**weights, **kept}, str(partial / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def rank_correlation(probe: list[float], fine_tuned: list[float], confidence: float = CONFIDENCE) -> dict:
    """Spearman's rho of two score lists and its interval: Fisher's z with the Bonett-Wright (2000) standard error
    sqrt((1 + rho^2 / 2) / (n - 3)), for n >= 4 (NaN below)."""
    n = len(probe)
    constant = len(set(probe)) < 2 or len(set(fine_tuned)) < 2  # no ranking to correlate
    rho = math.nan if n < 2 or constant else float(stats.spearmanr(probe, fine_tuned).statistic)
    if n < 4 or math.isnan(rho):
        return {"rho": rho, "low": math.nan, "high": math.nan, "n": n}
    z = math.atanh(max(min(rho, 0.9999), -0.9999))
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    return {"rho": rho, "low": math.tanh(z - half), "high": math.tanh(z + half), "n": n}


def rho_interval(correlation: dict) -> str:
    """A rank correlation's interval as text: '[low, high]', or why there is none (fewer than 4 points, or a constant
    score), rather than '[nan, nan]'."""
    if math.isnan(correlation["low"]):
        return f"no interval ({correlation['n']} points)" if correlation["n"] < 4 else "no interval"
    return f"[{correlation['low']:+.2f}, {correlation['high']:+.2f}]"


def interval_cell(interval: dict) -> str:
    if math.isnan(interval["half_width"]):
        return f"{interval['mean']:+.2f}"
    star = "*" if excludes_zero(interval) else ""
    return f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]{star}"


def summarise(points: list[dict], runs: dict[float, dict[int, dict]], seeds: list[int], rules: dict[str, float],
              last: float) -> tuple[str, dict]:
    """The markdown tables and the numbers behind them (scores in percent). ``rules``: {name: the epoch it keeps},
    each compared with the last checkpoint and with the base model."""
    rows = ["| TAPT epochs | step | probe dev macro-F1 | task dev perplexity | "
            + " | ".join(f"fine-tuned {title}" for _, title in SCORES) + " |", "|---|---|---|---|" + "---|" * 3]
    summary: dict = {"points": []}
    for point in points:
        fine_tuned = runs.get(point["epoch"])
        cells = []
        scores = {}
        for key, _ in SCORES:
            if fine_tuned is None:
                cells.append("–")
                continue
            values = [100 * fine_tuned[seed][key] for seed in seeds]
            scores[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values)}
            cells.append(f"{scores[key]['mean']:.2f} ± {scores[key]['std']:.2f}")
        marks = "".join(f" ({name})" for name, epoch in rules.items() if point["epoch"] == epoch)
        perplexity = f"{point['task_perplexity']:,.1f}" if point.get("task_perplexity") else "–"
        rows.append(f"| {point['epoch']:g}{marks} | {point['step']} | {100 * point[PROBE_KEY]:.2f} | {perplexity} | "
                    + " | ".join(cells) + " |")
        summary["points"].append({**point, "fine_tuned": scores or None})
    tuned = [p for p in summary["points"] if p["fine_tuned"]]
    summary["rank_correlation"] = {
        key: rank_correlation([p[PROBE_KEY] for p in tuned], [p["fine_tuned"][key]["mean"] for p in tuned])
        for key, _ in SCORES}
    correlation_rows = ["| probe dev macro-F1 against | Spearman's rho | 95% interval | points |", "|---|---|---|---|"]
    for key, title in SCORES:
        c = summary["rank_correlation"][key]
        correlation_rows.append(f"| fine-tuned {title} (mean over seeds) | {c['rho']:+.2f} | "
                                f"{rho_interval(c)} | {c['n']} |")
    comparisons = [(f"{name} − {other}", epoch, against) for name, epoch in rules.items()
                   for other, against in (("last checkpoint", last), ("base model", 0.0))]
    comparisons.append(("last checkpoint − base model", last, 0.0))
    pair_rows = ["| paired by seed, percentage points | " + " | ".join(title for _, title in SCORES) + " |",
                 "|---|" + "---|" * len(SCORES)]
    summary["paired"] = {}
    for label, a, b in comparisons:
        if a == b:  # the rule kept that very point: no difference to estimate
            summary["paired"][label] = None
            pair_rows.append(f"| {label} (epoch {a:g} − {b:g}) | " + " | ".join(["the same point"] * len(SCORES))
                             + " |")
            continue
        cells = []
        for key, _ in SCORES:
            interval = paired_interval([100 * (runs[a][s][key] - runs[b][s][key]) for s in seeds])
            summary["paired"].setdefault(label, {})[key] = interval
            cells.append(interval_cell(interval))
        pair_rows.append(f"| {label} (epoch {a:g} − {b:g}) | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n" + "\n".join(correlation_rows) + "\n\n" + "\n".join(pair_rows), summary


def plot(summary: dict, path: Path, title: str) -> Path:
    """The probe through the run beside the fine-tuned test macro-F1 at the fine-tuned points; and one against the
    other."""
    figure = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    curve_axes, scatter_axes = figure.subplots(1, 2)
    points = summary["points"]
    curve_axes.plot([p["epoch"] for p in points], [100 * p[PROBE_KEY] for p in points], "o-", color="C0",
                    label="probe dev macro-F1")
    tuned = [p for p in points if p["fine_tuned"]]
    means = [p["fine_tuned"]["test_macro_f1"]["mean"] for p in tuned]
    stds = [p["fine_tuned"]["test_macro_f1"]["std"] for p in tuned]
    curve_axes.errorbar([p["epoch"] for p in tuned], means, yerr=stds, fmt="s--", color="C1", capsize=3,
                        label="fine-tuned test macro-F1 (mean ± std)")
    curve_axes.set(xlabel="TAPT epochs", ylabel="percent", title="Through the TAPT run")
    curve_axes.legend(fontsize=8)
    scatter_axes.errorbar([100 * p[PROBE_KEY] for p in tuned], means, yerr=stds, fmt="o", color="C1", capsize=3)
    for p, mean in zip(tuned, means):
        scatter_axes.annotate(f"{p['epoch']:g}", (100 * p[PROBE_KEY], mean), textcoords="offset points",
                              xytext=(5, 3), fontsize=8)
    rho = summary["rank_correlation"]["test_macro_f1"]
    scatter_axes.set(xlabel="probe dev macro-F1", ylabel="fine-tuned test macro-F1",
                     title=f"Spearman rho {rho['rho']:+.2f} {rho_interval(rho)}")
    for axes in (curve_axes, scatter_axes):
        axes.grid(True, alpha=0.3)
    figure.suptitle(title)
    return save_png(figure, path)


def main(argv: list[str] | None = None) -> dict:
    """Run the probed TAPT run and the fine-tunes; print and save the tables and the chart; return the numbers."""
    args, lab = parse_args(argv, groups=(TaptArguments, ProbeExperimentArguments))
    lab.check(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING, handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(logging.INFO)
    if lab.workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # side by side, each run on one core (OpenMP threads spin)
    echo = lab.workers == 1
    files = task_files(args.task_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_out = Path(args.base_runs_dir) if args.base_runs_dir else out
    tapt_dir = out / "tapt"

    def run_tapt() -> dict:
        flags = probed_pretrain_flags(args, lab, files, tapt_dir, tapt_train_file(args, files, out),
                                      probe_data_flags(args, files, out))
        record = finished(tapt_dir, flags, "eval_task_perplexity")
        if record is None:
            checkpoint = last_complete_checkpoint(str(tapt_dir)) if tapt_dir.is_dir() else None
            logger.info("TAPT with the probe -> %s%s", tapt_dir,
                        f", resuming from {Path(checkpoint).name}" if checkpoint else "")
            record = run_script("run_mlm.py", flags, tapt_dir, echo)
        return record

    def run_fine_tune(epoch: float, model: str, seed: int) -> tuple[float, int, dict]:
        run_dir = (base_out / "base-finetune" if epoch == 0 else out / "finetune" / f"epoch{epoch:g}") / f"seed{seed}"
        flags = fine_tune_flags(args, files, model, seed, run_dir)
        record = finished(run_dir, flags, "test_macro_f1")
        if record is None:
            logger.info("fine-tune %s (TAPT epoch %g), seed %d -> %s", model, epoch, seed, run_dir)
            record = fine_tune(args, flags, run_dir, echo)
        logger.info("epoch %g seed %d: dev macro-F1 %.4f, test macro-F1 %.4f", epoch, seed,
                    record["result"]["eval_macro_f1"], record["result"]["test_macro_f1"])
        return epoch, seed, record

    fine_tuned: dict[float, dict[int, dict]] = {}
    minutes: dict[str, float | None] = {}

    def collect(jobs) -> None:
        for job in jobs:
            epoch, seed, record = job.result()
            fine_tuned.setdefault(epoch, {})[seed] = record["result"]
            minutes[f"epoch {epoch:g} seed {seed}"] = None if record["seconds"] is None else record["seconds"] / 60

    with ThreadPoolExecutor(max_workers=lab.workers) as pool:
        tapt_job = pool.submit(run_tapt)  # the base model's fine-tunes need no TAPT: they go beside it
        base_jobs = [pool.submit(run_fine_tune, 0.0, args.model_name_or_path, seed) for seed in args.seeds]
        tapt_record = tapt_job.result()
        minutes["TAPT"] = None if tapt_record["seconds"] is None else tapt_record["seconds"] / 60
        curve = probe_curve(tapt_dir)
        saved = [p for p in curve if p["step"] > 0]
        for point in saved:
            point["epoch"] = round(point["epoch"] / lab.probe_every_epochs) * lab.probe_every_epochs
        # The probe's pick among the saved checkpoints (the first of equal scores, as the Trainer keeps the first), and
        # where the stop rule would stop and what it keeps.
        picked = max(saved, key=lambda p: p[PROBE_KEY])
        stopped, kept = stop_rule(curve, lab.stop_patience)
        rules = {"probe's pick": picked["epoch"], f"stop rule (patience {lab.stop_patience})": kept["epoch"]}
        models = {}
        final_step = saved[-1]["step"]
        for point in saved:
            epoch = point["epoch"]
            wanted = any(abs(epoch - e) < 1e-6 for e in lab.checkpoint_epochs) or point is picked \
                or point is kept or point["step"] == final_step
            if wanted:
                models[epoch] = str(tapt_dir) if point["step"] == final_step else str(export_checkpoint(
                    checkpoint_at(tapt_dir, point["step"]), tapt_dir, out / "checkpoints" / f"epoch{epoch:g}"))
        last_epoch = saved[-1]["epoch"]
        logger.info("Probe dev macro-F1 through TAPT: %s; its pick: epoch %g; the stop rule stops at %g, keeps %g",
                    ", ".join(f"{p['epoch']:g}: {p[PROBE_KEY]:.4f}" for p in curve), picked["epoch"],
                    stopped["epoch"], kept["epoch"])
        jobs = [pool.submit(run_fine_tune, epoch, model, seed) for epoch, model in models.items()
                for seed in args.seeds]
        collect(base_jobs)
        collect(jobs)

    table, summary = summarise(curve, fine_tuned, args.seeds, rules, last_epoch)
    title = (f"The probe against fine-tuning on {Path(args.task_dir).name}: {Path(args.model_name_or_path).name}, "
             f"seeds {', '.join(map(str, args.seeds))}")
    settings = (f"TAPT: {args.tapt_epochs:g} epochs at {args.tapt_learning_rate}, mask rate {args.mlm_probability}, "
                f"head warm-up {args.head_warmup_steps}; probe and checkpoint every {lab.probe_every_epochs:g} epochs; "
                f"fine-tuned: the base model (epoch 0) and epochs "
                f"{', '.join(f'{e:g}' for e in sorted(models))}.")
    markdown = (f"{title}\n\n{settings}\n\nScores in percent; fine-tuned: mean ± std over seeds; paired: mean of "
                f"per-seed differences [{CONFIDENCE:.0%} Student-t interval], * where it excludes 0.\n\n{table}\n\n"
                f"Minutes: TAPT {minutes['TAPT'] or float('nan'):.1f}; fine-tunes "
                f"{statistics.fmean(m for k, m in minutes.items() if k != 'TAPT' and m is not None):.1f} each.\n")
    print("\n" + markdown)
    write_text_atomically(out / "results.md", markdown)
    chart = plot(summary, out / "results.png", title)
    report = {"task": Path(args.task_dir).name, "settings": {**asdict(args), **asdict(lab)}, "summary": summary,
              "picked_epoch": picked["epoch"], "last_epoch": last_epoch, "rules": rules,
              "stop_rule": {"patience": lab.stop_patience, "stops_at": stopped["epoch"], "keeps": kept["epoch"]},
              "runs": {f"{epoch:g}": {str(s): r for s, r in seeds.items()} for epoch, seeds in fine_tuned.items()},
              "minutes": minutes, "chart": str(chart)}
    write_text_atomically(out / "results.json", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main, "probe_experiment.py")
