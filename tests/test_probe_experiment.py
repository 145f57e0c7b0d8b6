"""scripts/experiments/probe_experiment.py: the rank correlation and its interval, the checkpoint export, and the
experiment end to end on a tiny model and task (the probe through the run, the fine-tuned points, the pick, reuse)."""

from __future__ import annotations

import json
import math

import pytest
from mlm_lab import runs, tapt_runs
from safetensors.torch import load_file, save_file

from arguments import parse_args
from mlm_pretraining.data.labelled import task_files
from mlm_pretraining.errors import InputError
from scripts.experiments.probe_experiment import (
    PROBE_KEY,
    export_checkpoint,
    main,
    probe_data_flags,
    rank_correlation,
    rho_interval,
    stop_rule,
    summarise,
    with_flags,
)


def test_rank_correlation_and_its_interval():
    perfect = rank_correlation([0.1, 0.2, 0.3, 0.4, 0.5], [10, 20, 30, 40, 50])
    assert perfect["rho"] == pytest.approx(1.0) and perfect["high"] == pytest.approx(1.0, abs=1e-3)
    mixed = rank_correlation([0.1, 0.2, 0.3, 0.4, 0.5], [10, 30, 20, 50, 40])
    assert mixed["rho"] == pytest.approx(0.8)
    # Fisher z with the Bonett-Wright standard error sqrt((1 + 0.8^2 / 2) / 2) = 0.8124, times 1.96.
    half = 1.959964 * math.sqrt((1 + 0.64 / 2) / 2)
    assert mixed["low"] == pytest.approx(math.tanh(math.atanh(0.8) - half), abs=1e-6)
    assert mixed["high"] == pytest.approx(math.tanh(math.atanh(0.8) + half), abs=1e-6)
    assert mixed["low"] < 0 < mixed["high"] < 1  # five points: wide
    three = rank_correlation([0.1, 0.2, 0.3], [1, 2, 3])
    assert math.isnan(three["low"])  # three points: no interval
    assert rho_interval(three) == "no interval (3 points)"  # said so, not '[+nan, +nan]'
    assert rho_interval(perfect) == f"[{perfect['low']:+.2f}, {perfect['high']:+.2f}]"


def test_the_stop_rule_stops_after_patience_evaluations_without_a_better_probe():
    curve = [{"epoch": e, PROBE_KEY: f} for e, f in ((0, 0.50), (5, 0.55), (10, 0.54), (15, 0.56), (20, 0.55),
                                                     (25, 0.555), (30, 0.60))]
    stopped, kept = stop_rule(curve, patience=2)
    assert (stopped["epoch"], kept["epoch"]) == (25, 15)  # 20 and 25 did not beat 15's 0.56
    assert [p["epoch"] for p in stop_rule(curve, patience=3)] == [30, 30]  # never stopped: the best, the last
    never = [{"epoch": e, PROBE_KEY: f} for e, f in ((0, 0.6), (5, 0.5), (10, 0.55))]
    assert [p["epoch"] for p in stop_rule(never, patience=2)] == [10, 0]  # no checkpoint beat the base: keep it


def test_a_rule_keeping_the_point_it_is_compared_with_shows_no_difference_rather_than_a_zero_interval():
    points = [{"step": 0, "epoch": 0.0, PROBE_KEY: 0.6}, {"step": 10, "epoch": 5.0, PROBE_KEY: 0.5},
              {"step": 20, "epoch": 10.0, PROBE_KEY: 0.4}]
    runs_by_epoch = {epoch: {seed: {"eval_macro_f1": 0.5 + 0.01 * seed + 0.02 * epoch,
                                    "test_macro_f1": 0.4 + 0.02 * seed - 0.01 * epoch,
                                    "test_micro_f1": 0.6 + 0.01 * seed * epoch} for seed in (1, 2, 3)}
                     for epoch in (0.0, 10.0)}
    table, summary = summarise(points, runs_by_epoch, [1, 2, 3], {"stop rule (patience 2)": 0.0}, 10.0)
    assert summary["paired"]["stop rule (patience 2) − base model"] is None
    assert "| stop rule (patience 2) − base model (epoch 0 − 0) | the same point | the same point | the same point |" \
        in table
    against_last = summary["paired"]["stop rule (patience 2) − last checkpoint"]["test_macro_f1"]
    assert against_last["mean"] == pytest.approx(10.0)  # 100 * (0.01 * 10), the same for every seed


def test_with_flags_replaces_values_or_adds_the_flag():
    flags = ["--a", "1", "--b", "x", "y", "--c", "-1"]
    assert with_flags(flags, b=["z"], d=["4"]) == ["--a", "1", "--b", "z", "--c", "-1", "--d", "4"]
    assert with_flags(flags, c=["2"]) == ["--a", "1", "--b", "x", "y", "--c", "2"]


def test_a_checkpoint_is_exported_with_the_weights_only_the_final_folder_holds(tmp_path):
    import torch

    checkpoint, final = tmp_path / "checkpoint-5", tmp_path / "final"
    for folder, weights in ((checkpoint, {"bert.layer": torch.ones(2)}),
                            (final, {"bert.layer": torch.zeros(2), "bert.pooler.dense.weight": torch.full((2,), 3.0)})):
        folder.mkdir()
        save_file(weights, str(folder / "model.safetensors"))
        (folder / "config.json").write_text("{}")
    (checkpoint / "optimizer.pt").write_bytes(b"state")
    exported = export_checkpoint(checkpoint, final, tmp_path / "epoch5")
    weights = load_file(str(exported / "model.safetensors"))
    assert weights["bert.layer"].tolist() == [1.0, 1.0]  # the checkpoint's own, never the final one's
    assert weights["bert.pooler.dense.weight"].tolist() == [3.0, 3.0]
    assert (exported / "config.json").is_file() and not (exported / "optimizer.pt").exists()
    assert not (tmp_path / "epoch5.partial").exists()


def test_checkpoint_epochs_must_be_multiples_of_the_probe_cadence(tmp_path, task_dir):
    argv = ["--task_dir", str(task_dir), "--output_dir", str(tmp_path / "exp"), "--tapt_epochs", "4",
            "--probe_every_epochs", "2", "--checkpoint_epochs", "3", "--seeds", "1", "2"]
    with pytest.raises(InputError, match=r"--checkpoint_epochs: 3 is not a multiple of --probe_every_epochs"):
        main(argv)


def test_the_probe_reads_the_rows_the_fine_tunes_train_and_select_on(tmp_path, task_dir):
    files = task_files(str(task_dir))

    def probe_data(*extra):
        (args,) = parse_args(["--task_dir", str(task_dir), "--output_dir", str(tmp_path), *extra],
                             groups=(tapt_runs.TaptArguments,))
        return args, probe_data_flags(args, files, tmp_path)

    _, whole = probe_data()
    assert whole["probe_task"] == [str(task_dir)] and "probe_train_file" not in whole
    args, subset = probe_data("--max_train_samples", "20", "--max_eval_samples", "5")
    assert "probe_task" not in subset
    train = [json.loads(line) for line in open(subset["probe_train_file"][0])]
    dev = [json.loads(line) for line in open(subset["probe_validation_file"][0])]
    assert len(train) == 20 and len(dev) == 5 and all(set(row) == {"text", "label"} for row in train + dev)
    # the same draw as the fine-tunes' (and TAPT's text), labels as in the task's files
    tapt_text = [json.loads(line)["text"] for line in open(tapt_runs.tapt_train_file(args, files, tmp_path))]
    assert [row["text"] for row in train] == tapt_text
    labels = {row["text"]: row["label"] for row in map(json.loads, open(task_dir / "train.jsonl"))}
    assert all(labels[row["text"]] == row["label"] for row in train)
    assert {row["text"] for row in dev} < {json.loads(line)["text"] for line in open(task_dir / "dev.jsonl")}


@pytest.mark.slow
def test_experiment_probes_the_run_and_fine_tunes_its_checkpoints(tmp_path, headless_model_dir, task_dir, corpus,
                                                                  monkeypatch):
    out = tmp_path / "exp"
    argv = ["--task_dir", str(task_dir), "--output_dir", str(out), "--model_name_or_path", str(headless_model_dir),
            "--seeds", "1", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--tapt_epochs", "4",
            "--probe_every_epochs", "1", "--checkpoint_epochs", "2", "4", "--tapt_batch_size", "8",
            "--tapt_max_seq_length", "32", "--tapt_max_eval_samples", "4", "--learning_rate", "1e-3",
            "--general_text", str(corpus), "--head_warmup_steps", "1", "--tapt_learning_rate", "1e-2",
            "--workers", "2"]
    report = main(argv)
    points = report["summary"]["points"]
    # Before training, then every epoch; not the head warm-up's evaluation after step 1 (no checkpoint; the base
    # encoder, frozen while the head warms up).
    assert [p["epoch"] for p in points] == [0.0, 1.0, 2.0, 3.0, 4.0]
    state = json.loads((out / "tapt" / "trainer_state.json").read_text())
    assert any(e["step"] == 1 and "eval_probe_macro_f1" in e for e in state["log_history"])
    assert 1 not in [p["step"] for p in points]
    assert all(0 <= p[PROBE_KEY] <= 1 for p in points)
    picked = report["picked_epoch"]
    assert picked == max(points[1:], key=lambda p: p[PROBE_KEY])["epoch"]
    kept = report["stop_rule"]["keeps"]
    assert set(report["runs"]) == {"0", "2", "4"} | {f"{picked:g}", f"{kept:g}"}
    assert all(set(seeds) == {"1", "2"} for seeds in report["runs"].values())
    # Different weights at different points: the fine-tuned losses differ.
    assert len({report["runs"][epoch]["1"]["eval_loss"] for epoch in ("0", "2", "4")}) == 3
    exported = load_file(str(out / "checkpoints" / "epoch2" / "model.safetensors"))
    assert "bert.pooler.dense.weight" in exported  # the base's pooler, as in the final folder
    assert report["summary"]["rank_correlation"]["test_macro_f1"]["n"] == len(report["runs"])
    markdown = (out / "results.md").read_text()
    assert "| probe's pick − last checkpoint" in markdown and "Spearman's rho" in markdown
    assert "| stop rule (patience 2) − base model" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "tapt").glob("checkpoint-*")) == sorted(
        f"checkpoint-{p['step']}" for p in points[1:])  # every probed point kept

    def no_process(*args, **kwargs):
        raise AssertionError(f"a finished run was launched again: {args}")

    monkeypatch.setattr(runs.subprocess, "Popen", no_process)
    assert main(argv)["summary"] == report["summary"]  # everything reused
