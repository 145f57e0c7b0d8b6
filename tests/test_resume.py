"""Resuming: exact continuation (losses and weights) after a kill, incomplete checkpoints skipped, fast batch skipping,
a finished run left as it is, and a graceful stop on SIGTERM/SIGINT (the checkpoint checks themselves: test_checkpoints.py; the callback:
test_callbacks.py)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import kill_when_saved, write_season_corpus
from helpers import (
    MAX_STEPS,
    flags,
    launch_run_mlm,
    losses,
    max_weight_difference,
    snapshot,
)

import run_mlm
from mlm_pretraining.checkpoints import checkpoint_problem, last_complete_checkpoint


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_season_corpus(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, corpus_file, tmp_path_factory) -> Path:
    """An uninterrupted run of MAX_STEPS steps, checkpoints every 4 steps."""
    out = tmp_path_factory.mktemp("full") / "out"
    run_mlm.main(flags(tiny_model_dir, corpus_file, out))
    assert len(losses(out)) == MAX_STEPS
    return out


@pytest.mark.parametrize("step", [12, MAX_STEPS], ids=["mid_epoch", "the_last"])
def test_resume_from_a_copied_checkpoint_is_exact(full_run, tiny_model_dir, corpus_file, tmp_path, step):
    """Rerunning the same command on a folder holding only checkpoint-N ends like the full run. From checkpoint-12 (mid
    epoch 1) it trains the last two steps. From checkpoint-14, the last, as a run killed after its last checkpoint but
    before its final files leaves it, it trains none (the Trainer trained a 15th) and writes the model, card and
    trainer state, with no training metrics (none measured: not train_loss 0 over 0 steps). A third run changes
    nothing."""
    out = tmp_path / "out"
    shutil.copytree(full_run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    argv = flags(tiny_model_dir, corpus_file, out)
    results = run_mlm.main(argv)
    assert losses(out) == pytest.approx(losses(full_run), abs=1e-6)
    assert max_weight_difference(out, full_run) <= 1e-6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted({f"checkpoint-{step}", "checkpoint-14"})
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS and (out / "README.md").is_file()
    summaries = [e for e in state["log_history"] if "train_loss" in e]
    if step == MAX_STEPS:
        assert "train_loss" not in results and not summaries and not (out / "train_results.json").exists()
    else:
        assert results["train_loss"] > 0 and len(summaries) == 1
    saved = json.loads((out / "all_results.json").read_text()) if step != MAX_STEPS else {}  # none without metrics
    before = snapshot(out)
    assert run_mlm.main(argv) == saved
    assert snapshot(out) == before


@pytest.mark.parametrize("length, end, longer, longer_end", [
    ({}, MAX_STEPS, {"max_steps": 18}, 18),  # ends mid epoch 2: the Trainer trained a 15th step
    ({"max_steps": 10}, 10, {"max_steps": 14}, 14),  # ends with epoch 1: it trained none, reporting train_loss 0
    ({"max_steps": -1, "num_train_epochs": 1.5}, 15, {"max_steps": -1, "num_train_epochs": 2}, 20),  # a 16th
], ids=["max_steps", "max_steps_at_an_epoch_end", "epochs"])
def test_rerunning_a_finished_run_changes_nothing(tiny_model_dir, corpus_file, tmp_path, caplog, length, end, longer,
                                                  longer_end):
    """The same command on a finished run (its last checkpoint at the end of training) trains nothing and writes
    nothing: model, results, card, curves and checkpoints stay as they are (bytes and times), it returns the saved
    results, and one line names the checkpoint and the folder and says how to train longer or start afresh. Before,
    the Trainer resumed and trained past the end, or at an epoch's end trained nothing and overwrote the results and
    the card's training row with train_loss 0.0. Negative control: asked to train longer, the same folder trains on."""
    out = tmp_path / "out"
    extra = {"do_eval": True, "validation_split_percentage": 10}
    first = run_mlm.main(flags(tiny_model_dir, corpus_file, out, **extra, **length))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == end
    assert {"train_results.json", "eval_results.json", "all_results.json", "README.md", "training_curves.png",
            "model.safetensors", f"checkpoint-{end}/trainer_state.json"} <= set(snapshot(out))
    before = snapshot(out)
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.run_mlm"):
        again = run_mlm.main(flags(tiny_model_dir, corpus_file, out, **extra, **length))
    assert snapshot(out) == before
    assert again == json.loads((out / "all_results.json").read_text())
    assert again["train_loss"] == pytest.approx(first["train_loss"]) and again["train_loss"] > 1
    assert f"Nothing to do: {out / f'checkpoint-{end}'} is at the end of training (step {end} of " in caplog.text
    assert f"{out} holds the finished run and is left as it is. To train longer, raise that flag; to start afresh, " \
           "add --overwrite_output_dir." in caplog.text

    run_mlm.main(flags(tiny_model_dir, corpus_file, out, **extra, **longer))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == longer_end
    assert [int(e["step"]) for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
            if "loss" in e] == list(range(1, longer_end + 1))
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 1


def test_rerunning_a_finished_run_that_saved_no_checkpoint_changes_nothing(tiny_model_dir, corpus_file, tmp_path,
                                                                             caplog):
    """--save_strategy no: the finished run's own trainer_state.json stands for the last checkpoint. Before, the same
    command trained again from the start and overwrote the model. Negative controls: asked to train longer, it trains
    (from the start: there is no checkpoint); a trainer_state.json cut short is not a finished run."""
    out = tmp_path / "out"
    argv = flags(tiny_model_dir, corpus_file, out, save_strategy="no")
    first = run_mlm.main(argv)
    assert not list(out.glob("checkpoint-*"))
    before = snapshot(out)
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.run_mlm"):
        again = run_mlm.main(argv)
    assert snapshot(out) == before and again["train_loss"] == pytest.approx(first["train_loss"])
    assert f"Nothing to do: {out} is at the end of training (step {MAX_STEPS} of --max_steps {MAX_STEPS})" \
        in caplog.text
    state = out / "trainer_state.json"
    state.write_text(state.read_text()[:50])
    run_mlm.main(argv)
    assert json.loads(state.read_text())["global_step"] == MAX_STEPS and snapshot(out) != before
    run_mlm.main(flags(tiny_model_dir, corpus_file, out, save_strategy="no", max_steps=MAX_STEPS + 2))
    assert json.loads(state.read_text())["global_step"] == MAX_STEPS + 2


def test_half_written_checkpoint_is_skipped_and_run_ends_exact(full_run, tiny_model_dir, corpus_file, tmp_path,
                                                                caplog):
    """checkpoint-12 cut short as by a kill while saving: a warning names it, the run resumes from checkpoint-8."""
    out = tmp_path / "out"
    for step in (8, 12):
        shutil.copytree(full_run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    weights = out / "checkpoint-12" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="mlm_pretraining.checkpoints"):
        assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-8")
    assert f"Skipping {out / 'checkpoint-12'}: incomplete checkpoint" in caplog.text
    run_mlm.main(flags(tiny_model_dir, corpus_file, out))
    assert losses(out) == pytest.approx(losses(full_run), abs=1e-6)
    assert max_weight_difference(out, full_run) <= 1e-6
    assert checkpoint_problem(out / "checkpoint-12") is None  # rewritten whole


def test_skipping_seen_batches_does_not_touch_the_data(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The Trainer's resume uses accelerate's skip_first_batches: on a map-style dataset it skips sampler indices,
    so skipped batches are neither read nor collated."""
    from accelerate import skip_first_batches
    from datasets import Dataset
    from transformers import AutoModelForMaskedLM

    from arguments import MLMTrainingArguments
    from collators import MLMCollator
    from mlm_pretraining.trainer import MLMTrainer

    calls = []
    collator = MLMCollator(tiny_tokenizer, seed=0)

    def counting_collator(features):
        calls.append(len(features))
        return collator(features)

    data = Dataset.from_dict({"input_ids": [[2, 10 + i % 50, 11, 3] for i in range(64)]})
    args = MLMTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                                use_cpu=True, seed=1)
    trainer = MLMTrainer(model=AutoModelForMaskedLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=data, data_collator=counting_collator)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(0)  # as the Trainer does before each epoch: the sampler's order depends on the epoch alone
    all_batches = [b["labels"].clone() for b in loader]
    calls.clear()
    skipping_loader = skip_first_batches(loader, 10)
    skipping_loader.set_epoch(0)
    skipped = iter(skipping_loader)
    first = next(skipped)
    assert calls == [4, 4]  # this batch and the one accelerate prefetches; not the 10 skipped ones
    assert torch.equal(first["labels"], all_batches[10])


@pytest.mark.slow
def test_kill9_after_a_checkpoint_then_rerun_is_exact(full_run, tiny_model_dir, corpus_file, tmp_path):
    """SIGKILL once checkpoint-4 is written, rerun the same command: same loss curve and weights as uninterrupted."""
    out = tmp_path / "out"
    argv = flags(tiny_model_dir, corpus_file, out)
    kill_when_saved(launch_run_mlm(argv, tmp_path / "killed.log"), out / "checkpoint-4" / "trainer_state.json")
    assert not (out / "model.safetensors").exists()
    first_checkpoint = (out / "checkpoint-4" / "trainer_state.json").stat().st_mtime_ns
    rerun = launch_run_mlm(argv, tmp_path / "rerun.log")
    assert rerun.wait() == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert (out / "checkpoint-4" / "trainer_state.json").stat().st_mtime_ns == first_checkpoint  # resumed
    assert losses(out) == pytest.approx(losses(full_run), abs=1e-6)
    assert max_weight_difference(out, full_run) <= 1e-6


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, corpus_file, tmp_path):
    out = tmp_path / "out"
    process = launch_run_mlm(flags(tiny_model_dir, corpus_file, out, max_steps=100_000, save_steps=100_000), tmp_path / "log")
    deadline = time.time() + 300
    while "{'loss'" not in (tmp_path / "log").read_text():  # a logged training step
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None
    step = int(checkpoints[0].name.split("-")[1])
    assert json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"] == step == len(losses(
        checkpoints[0]))
    assert f"Stopped by SIGTERM at step {step}; checkpoint saved in {out}" in log
