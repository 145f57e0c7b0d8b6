"""scripts/tapt_experiment.py end to end on a tiny model and task: both arms, the table, reuse of finished runs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from arguments import InputError
from scripts.tapt_experiment import (
    main,
    restore_unused_weights,
    result_table,
    summarize,
)
from tests.test_classification import labelled_rows, write_jsonl


def test_summary_and_table_use_paired_differences():
    assert summarize([0.5, 0.7]) == (pytest.approx(60.0), pytest.approx(14.142135, rel=1e-5))
    runs = {"base": {1: {"eval_macro_f1": 0.5, "test_macro_f1": 0.4, "test_micro_f1": 0.6},
                     2: {"eval_macro_f1": 0.7, "test_macro_f1": 0.6, "test_micro_f1": 0.8}},
            "tapt": {1: {"eval_macro_f1": 0.6, "test_macro_f1": 0.5, "test_micro_f1": 0.6},
                     2: {"eval_macro_f1": 0.7, "test_macro_f1": 0.8, "test_micro_f1": 0.8}}}
    table, summary = result_table(runs, [1, 2])
    assert summary["difference"]["test_macro_f1"]["mean"] == pytest.approx(15.0)  # (+10 + 20) / 2
    assert summary["difference"]["test_macro_f1"]["std"] == pytest.approx(7.0710678)
    assert summary["tapt"]["test_macro_f1"]["mean"] == pytest.approx(65.0)
    assert "| TAPT − base (paired by seed) | +5.00 ± 7.07 | +15.00 ± 7.07 | +0.00 ± 0.00 |" in table


@pytest.fixture
def task_dir(tmp_path):
    folder = tmp_path / "task"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", labelled_rows(60))
    write_jsonl(folder / "dev.jsonl", labelled_rows(9))
    write_jsonl(folder / "test.jsonl", labelled_rows(12))
    return folder


def test_experiment_runs_both_arms_and_reuses_finished_runs(tmp_path, tiny_model_dir, task_dir, capsys):
    out = tmp_path / "exp"
    argv = ["--task_dir", str(task_dir), "--output_dir", str(out), "--model_name_or_path", str(tiny_model_dir),
            "--seeds", "1", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--tapt_max_steps", "3",
            "--tapt_batch_size", "4", "--tapt_max_seq_length", "32", "--tapt_max_eval_samples", "4",
            "--learning_rate", "1e-3",
            # A TAPT step size that moves the tiny encoder measurably: at 1e-4 for 3 steps the arms' dev losses can
            # agree to float32 precision, depending only on the fine-tuning batch order.
            "--tapt_learning_rate", "1e-2"]
    report = main(argv)
    assert set(report["runs"]) == {"base", "tapt"} and set(report["runs"]["tapt"]) == {"1", "2"}
    for arm in ("base", "tapt"):
        for seed in ("1", "2"):
            assert report["runs"][arm][seed]["test_samples"] == 12
    # The arms start from different weights, so their scores are those of different models.
    assert report["runs"]["base"]["1"]["eval_loss"] != report["runs"]["tapt"]["1"]["eval_loss"]
    tapt_state = json.loads((out / "tapt" / "trainer_state.json").read_text())
    assert tapt_state["global_step"] == 3
    assert report["tapt"]["eval_perplexity"] > 0 and "eval_before_perplexity" in report["tapt"]
    assert not list((out / "base-finetune" / "seed1").glob("*.safetensors"))  # weights removed, results kept
    markdown = (out / "results.md").read_text()
    assert "| TAPT − base (paired by seed) |" in markdown and markdown in capsys.readouterr().out
    assert set(report["seconds"]) == {"tapt", "base-finetune-seed1", "tapt-finetune-seed1",
                                      "base-finetune-seed2", "tapt-finetune-seed2"}

    again = main(argv)  # everything finished: nothing is rerun, the same numbers come back
    assert again["seconds"] == {}
    assert again["summary"] == report["summary"]


def test_restore_unused_weights_copies_the_pooler(tmp_path):
    from safetensors.torch import save_file

    base, tapt = tmp_path / "base", tmp_path / "tapt"
    base.mkdir(), tapt.mkdir()
    pooler = torch.randn(4, 4)
    save_file({"embeddings.word_embeddings.weight": torch.zeros(10, 4), "pooler.dense.weight": pooler},
              str(base / "model.safetensors"))
    save_file({"bert.embeddings.word_embeddings.weight": torch.ones(10, 4)}, str(tapt / "model.safetensors"))
    assert restore_unused_weights(str(base), tapt) == ["bert.pooler.dense.weight"]
    weights = load_file(str(tapt / "model.safetensors"))
    assert torch.equal(weights["bert.pooler.dense.weight"], pooler)
    assert torch.equal(weights["bert.embeddings.word_embeddings.weight"], torch.ones(10, 4))  # trained, untouched


def test_task_dir_must_hold_the_three_splits(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(InputError, match="no validation file"):
        main(["--task_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(InputError, match="--seeds must be distinct"):
        main(["--task_dir", str(tmp_path), "--output_dir", "x", "--seeds", "1", "1"])
