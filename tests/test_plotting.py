"""Training-curve pictures: the points read from a log history, the PNG a run_mlm.py run writes, plot_curves.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from mlm_pretraining.errors import InputError
from mlm_pretraining.reporting.plotting import curves, plot_runs, read_log_history
from run_mlm import main as run_mlm
from scripts.plot_curves import main as plot_curves

HISTORY = [
    {"eval_before_loss": 6.0, "eval_before_accuracy": 0.01, "step": 0},
    {"loss": 5.5, "grad_norm": 3.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 2},
    {"loss": 4.5, "epoch": 1.0, "step": 4},
    {"eval_loss": 4.0, "eval_accuracy": 0.2, "epoch": 1.0, "step": 4},
    {"train_loss": 5.0, "train_runtime": 1.0, "epoch": 1.0, "step": 4},  # the run's summary, not a point
    {"eval_loss": 3.9, "epoch": 1.0, "step": 4},  # a second evaluation at the same step: the later one counts
]


def test_curves_take_train_loss_eval_loss_and_perplexity_with_the_before_point_at_step_0():
    points = curves(HISTORY)
    assert points["train_loss"] == [(2, 5.5), (4, 4.5)]
    assert points["eval_loss"] == [(0, 6.0), (4, 3.9)]
    assert points["eval_perplexity"] == [(0, pytest.approx(math.exp(6.0))), (4, pytest.approx(math.exp(3.9)))]


def test_curves_take_the_task_probe_with_its_before_point():
    probed = HISTORY + [{"eval_before_probe_macro_f1": 0.4, "eval_before_probe_accuracy": 0.5, "step": 0},
                        {"eval_probe_macro_f1": 0.6, "eval_probe_accuracy": 0.7, "eval_probe_seconds": 1.0, "step": 4}]
    points = curves(probed)
    assert points["probe_macro_f1"] == [(0, 0.4), (4, 0.6)] and points["probe_accuracy"] == [(0, 0.5), (4, 0.7)]
    assert points["eval_loss"] == curves(HISTORY)["eval_loss"] and "probe_macro_f1" not in curves(HISTORY)


def assert_png(path, min_width=800):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width
        # Something was drawn: far more than the two or three colours of empty axes.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_plot_runs_writes_a_png(tmp_path):
    path = plot_runs({"a": HISTORY, "b": HISTORY[:3]}, tmp_path / "sub" / "curves.png")
    assert_png(path)


def test_a_redrawn_png_replaces_the_old_one_whole(tmp_path, monkeypatch):
    """Drawn beside it, then renamed over it: a run killed while drawing leaves the older drawing, not half a PNG."""
    renamed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (renamed.append(Path(target).name),
                                                               replace(source, target)))
    path = tmp_path / "training_curves.png"
    path.write_bytes(b"an older drawing")
    plot_runs({"run": HISTORY}, path)
    assert renamed == ["training_curves.png"]
    assert path.read_bytes().startswith(b"\x89PNG") and Image.open(path).size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]  # no temporary left beside it


def test_run_mlm_writes_training_curves_and_plot_curves_compares_runs(tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "run"
    run_mlm(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--output_dir", str(out),
             "--max_seq_length", "32", "--max_steps", "4", "--per_device_train_batch_size", "4",
             "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", "4",
             "--validation_split_percentage", "10", "--report_to", "none", "--save_strategy", "no",
             "--use_cpu", "true"])
    assert_png(out / "training_curves.png")
    points = curves(read_log_history(out))
    assert [step for step, _ in points["train_loss"]] == [1, 2, 3, 4]
    # before training, two periodic evaluations, and the final one (same step as the last periodic one)
    assert [step for step, _ in points["eval_loss"]] == [0, 2, 4]
    results = json.loads((out / "all_results.json").read_text())
    assert points["eval_loss"][-1][1] == pytest.approx(results["eval_loss"])
    assert points["eval_loss"][0][1] == pytest.approx(results["eval_before_loss"])

    comparison = tmp_path / "compare.png"
    plot_curves(["--run_dirs", str(out), str(out), "--names", "first", "second", "--output", str(comparison)])
    assert_png(comparison)


def test_plot_curves_reports_bad_folders(tmp_path):
    with pytest.raises(InputError, match="holds no trainer_state.json"):
        plot_curves(["--run_dirs", str(tmp_path), "--output", str(tmp_path / "x.png")])
    with pytest.raises(InputError, match="--names gives 1 name"):
        plot_curves(["--run_dirs", str(tmp_path), str(tmp_path), "--names", "one", "--output", str(tmp_path / "x.png")])
