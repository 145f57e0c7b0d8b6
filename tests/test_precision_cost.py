"""scripts/benchmarks/precision_cost.py: the paired table, the flags it refuses, and one seed pair end to end on a
tiny model (bf16 really trains differently; finished runs are reused)."""

from __future__ import annotations

import pytest
from mlm_lab import runs

from mlm_pretraining.errors import InputError
from scripts.benchmarks.precision_cost import main, parse_args, report


def test_report_pairs_by_seed():
    results = {"fp32": {1: {"eval_loss": 2.0, "eval_perplexity": 7.39, "eval_accuracy": 0.30, "seconds": 60},
                        2: {"eval_loss": 2.2, "eval_perplexity": 9.03, "eval_accuracy": 0.28, "seconds": 66}},
               "bf16": {1: {"eval_loss": 2.1, "eval_perplexity": 8.17, "eval_accuracy": 0.29, "seconds": 600},
                        2: {"eval_loss": 2.3, "eval_perplexity": 9.97, "eval_accuracy": 0.27, "seconds": 660}}}
    table, summary = report(results, [1, 2])
    loss = summary["difference"]["eval_loss"]
    assert loss["mean"] == pytest.approx(0.1) and loss["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert summary["difference"]["eval_accuracy"]["mean"] == pytest.approx(-1.0)  # percentage points
    assert "| fp32 | 2.1000 ± 0.1414 | 8.21 ± 1.16 | 29.00 ± 1.41 | 1.1 |" in table
    assert "| bf16 − fp32, paired by seed, 95% CI | +0.1000 [+0.1000, +0.1000]* |" in table
    assert "seed 1: 2.0000 → 2.1000" in table


def test_flags_set_per_run_are_refused(tmp_path):
    with pytest.raises(InputError, match="--seed is set per run"):
        parse_args(["--output_dir", str(tmp_path), "--seed", "3"])
    with pytest.raises(InputError, match="--config: no such file"):
        parse_args(["--output_dir", str(tmp_path), "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", str(tmp_path), "--seeds", "1"])


@pytest.mark.slow
def test_both_precisions_train_and_finished_runs_are_reused(tmp_path, tiny_model_dir, corpus, monkeypatch):
    argv = ["--output_dir", str(tmp_path / "cost"), "--seeds", "1", "2", "--model_name_or_path", str(tiny_model_dir),
            "--train_file", str(corpus), "--validation_file", str(corpus), "--max_seq_length", "32",
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--use_cpu"]
    summary = main(argv)
    for precision in ("fp32", "bf16"):
        assert summary[precision]["eval_loss"]["mean"] > 0
    assert summary["difference"]["eval_loss"]["mean"] != 0  # bf16 rounding changed the training

    def no_process(*args, **kwargs):
        raise AssertionError(f"a finished run was launched again: {args}")

    monkeypatch.setattr(runs.subprocess, "Popen", no_process)
    assert main(argv) == summary
