"""Training-curve pictures: train loss, eval loss and eval perplexity against steps, for one run or several; with
run_mlm.py --probe_task a third panel, the task probe's dev macro-F1 and accuracy.

Drawn with matplotlib's Agg canvas directly (no pyplot), so it works headless and never changes the backend of
a notebook that imports it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_bytes_atomically

logger = logging.getLogger(__name__)

CURVES_FILE = "training_curves.png"
# eval_loss and eval_<set>_loss, with eval_before_... (the score before any training, at step 0) from run_mlm.py;
# not NSP's eval_mlm_loss, a part of the loss.
EVAL_LOSS = re.compile(r"^eval(?:_before)?(?:_(?P<set>.+?))?_loss$")
# The task probe's dev scores (mlm_pretraining/probe.py), before training and at each evaluation.
PROBE_KEY = re.compile(r"^eval(?:_before)?_(?P<metric>probe_macro_f1|probe_accuracy)$")
PROBE_SERIES = (("probe_macro_f1", "macro-F1", "-"), ("probe_accuracy", "accuracy", ":"))


def curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of 'train_loss', 'eval_loss' and 'eval_perplexity' from a Trainer's log history, and
    'eval_loss:<set>' / 'eval_perplexity:<set>' for each named evaluation set, and 'probe_macro_f1' /
    'probe_accuracy' when the run probed a task.

    Evaluations under ``eval_before_*`` keys count too, so the before-training score appears at step 0; of two
    evaluations at one step the later is kept. Perplexity is exp(eval loss).
    """
    train, evals, probe = [], {}, {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry and _finite(entry["loss"]):
            train.append((step, float(entry["loss"])))
        for key, value in entry.items():
            match = EVAL_LOSS.match(key)
            name = match and (match["set"] or "")
            if match and not (name == "mlm" or name.endswith("_mlm")) and _finite(value):
                evals.setdefault(name, {})[step] = float(value)
            probe_match = PROBE_KEY.match(key)
            if probe_match and _finite(value):
                probe.setdefault(probe_match["metric"], {})[step] = float(value)
    points: dict[str, list[tuple[int, float]]] = {"train_loss": train, "eval_loss": [], "eval_perplexity": []}
    for name, by_step in evals.items():
        suffix = f":{name}" if name else ""
        points[f"eval_loss{suffix}"] = sorted(by_step.items())
        points[f"eval_perplexity{suffix}"] = [(step, _exp(loss)) for step, loss in sorted(by_step.items())]
    points.update({metric: sorted(by_step.items()) for metric, by_step in probe.items()})
    return points


def eval_series(points: dict) -> list[str]:
    """The evaluation sets in ``curves()`` output: '' for the unnamed one, else the set names."""
    return [key.partition(":")[2] for key in points if key.startswith("eval_loss") and points[key]]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _exp(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def plot_runs(runs: dict[str, list[dict]], path: str | Path, title: str | None = None) -> Path:
    """Draw the curves of one or several runs (name → log history) side by side and save a PNG at ``path``."""
    probed = any(curves(history).get("probe_macro_f1") for history in runs.values())
    figure = Figure(figsize=(18 if probed else 12, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 3 if probed else 2)
    loss_axes, ppl_axes = panels[:2]
    colors = [f"C{i}" for i in range(10)]
    several = len(runs) > 1
    for i, (name, history) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        points = curves(history)
        prefix = f"{name}: " if several else ""
        if points["train_loss"]:
            steps, values = zip(*points["train_loss"])
            loss_axes.plot(steps, values, color=color, linewidth=1.2, alpha=0.8, label=f"{prefix}train loss")
        for j, set_name in enumerate(eval_series(points)):
            suffix, label = (f":{set_name}", f" ({set_name})") if set_name else ("", "")
            style = dict(color=color, linestyle=("--", ":", "-.", (0, (5, 1)))[j % 4], marker="osD^v"[j % 5],
                         markersize=4)
            steps, values = zip(*points[f"eval_loss{suffix}"])
            loss_axes.plot(steps, values, label=f"{prefix}eval loss{label}", **style)
            steps, values = zip(*points[f"eval_perplexity{suffix}"])
            ppl_axes.plot(steps, values, label=(f"{name}{label}" if several else f"eval perplexity{label}"), **style)
            for step, value, side in ((steps[0], values[0], "left"), (steps[-1], values[-1], "right")):
                ppl_axes.annotate(f"{value:,.0f}" if value >= 100 else f"{value:.2f}", (step, value), fontsize=8,
                                  textcoords="offset points", xytext=(4 if side == "left" else -4, 6), ha=side,
                                  color=color)
        for metric, label, linestyle in PROBE_SERIES if probed else ():
            if points.get(metric):
                steps, values = zip(*points[metric])
                panels[2].plot(steps, values, color=color, linestyle=linestyle, marker="o", markersize=4,
                               label=f"{prefix}{label}")
    loss_axes.set(title="Loss", xlabel="optimizer step", ylabel="cross-entropy loss (nats per masked token)")
    ppl_axes.set(title="Eval perplexity (exp of eval loss)", xlabel="optimizer step", ylabel="perplexity")
    if probed:
        panels[2].set(title="Task probe: dev scores (--probe_task)", xlabel="optimizer step", ylabel="score")
    values = [v for h in runs.values() for key, series in curves(h).items() if key.startswith("eval_perplexity")
              for _, v in series if math.isfinite(v)]
    if values and max(values) / max(min(values), 1e-12) > 20:
        ppl_axes.set_yscale("log")  # a fresh head starts in the thousands; the end is what matters
    for axes in panels:
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=axes.transAxes)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(figure, path)


def save_png(figure: Figure, path: str | Path) -> Path:
    """Save ``figure`` as a PNG at ``path``, replacing it whole: a reader (a user's image viewer, a rerun) never
    meets half a file, even if training is killed while it is drawn."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes_atomically(Path(path), buffer.getvalue())


def read_log_history(run_dir: str | Path) -> list[dict]:
    """The log history of the run in ``run_dir``: its trainer_state.json, else its last checkpoint's."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"'{run_dir}' is not a folder; give run output folders (--output_dir of run_mlm.py).")
    state = folder / "trainer_state.json"
    if not state.is_file():
        last = get_last_checkpoint(str(folder))
        state = Path(last) / "trainer_state.json" if last else state
    if not state.is_file():
        raise InputError(f"'{run_dir}' holds no trainer_state.json (nor a checkpoint with one): is it a run's "
                         "--output_dir, and has the run saved yet?")
    return json.loads(state.read_text(encoding="utf-8")).get("log_history", [])


class TrainingCurveCallback(TrainerCallback):
    """Redraws ``output_dir/training_curves.png`` after each evaluation and at the end of training (main process
    only), from the Trainer's own log history.

    ``Trainer.train()`` starts a fresh log history, which would drop an evaluation made before training (run_mlm's
    eval_before, the curve's starting point); this callback keeps such entries and puts them back at the start, so
    they are in the picture and in trainer_state.json.
    """

    def __init__(self, filename: str = CURVES_FILE):
        self.filename = filename
        self.before_training: list[dict] = []
        self.training = False

    def draw(self, args, state) -> None:
        if not state.is_world_process_zero or not args.output_dir:
            return
        name = Path(args.output_dir).name
        try:
            plot_runs({name: state.log_history}, Path(args.output_dir) / self.filename,
                      title=f"{name}: masked-LM training")
        except Exception as err:  # a picture is never worth a failed training run
            logger.warning("Could not draw the training curves: %s", err)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.training and logs and any(EVAL_LOSS.match(key) or PROBE_KEY.match(key) for key in logs) \
                and state.log_history:
            self.before_training.append(state.log_history[-1])

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if self.before_training and not any(entry in state.log_history for entry in self.before_training):
            state.log_history[:0] = self.before_training

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self.draw(args, state)
