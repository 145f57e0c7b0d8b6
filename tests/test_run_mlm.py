"""End to end: main() on a tiny BERT trains, evaluates with fixed masks, saves a loadable model and resumes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

import run_mlm
from run_mlm import main


def run(model_dir, corpus, out, *extra):
    """Six steps, evaluated before and after training only (flags in ``extra`` override these)."""
    held_out = [] if "--validation_file" in extra else ["--validation_split_percentage", "10"]
    return main([
        "--model_name_or_path", str(model_dir), "--train_file", str(corpus), "--output_dir", str(out),
        "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--learning_rate", "0.001", "--max_steps", "6", "--logging_steps", "1", "--save_steps", "3",
        "--eval_strategy", "no", *held_out, "--preprocessing_num_workers", "1", "--seed", "1",
        "--dataloader_num_workers", "0", *extra,
    ])


@pytest.fixture(scope="module")
def eval_batches() -> list[dict[str, torch.Tensor]]:
    """Every batch the evaluation collator of the ``trained`` run made, in order."""
    return []


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory, eval_batches):
    out = tmp_path_factory.mktemp("run")
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(
        f"the band played the first song of the year {i % 7} . he was known in the city for music ."
        for i in range(200)))

    def build_trainer_with_a_spy(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        collate = trainer.eval_data_collator

        def spy(features):
            batch = collate(features)
            eval_batches.append({key: value.clone() for key, value in batch.items()})
            return batch

        trainer.eval_data_collator = spy
        return trainer

    build_trainer = run_mlm.build_trainer
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_mlm, "build_trainer", build_trainer_with_a_spy)
        results = run(tiny_model_dir, corpus, out / "out")
    return results, out / "out", corpus


def test_results_and_files(trained):
    results, out, _ = trained
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-6)
    assert results["eval_before_perplexity"] == pytest.approx(math.exp(results["eval_before_loss"]), rel=1e-6)
    assert results["eval_loss"] < results["eval_before_loss"]  # six steps on repetitive text must help
    assert results["eval_accuracy"] > results["eval_before_accuracy"]  # and more masked tokens are predicted right
    # the same masked tokens are scored before and after training
    assert results["eval_masked_tokens"] == results["eval_before_masked_tokens"] > 0
    for name in ("train_results.json", "eval_results.json", "all_results.json", "model.safetensors",
                 "config.json", "tokenizer.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_loss"] == pytest.approx(results["eval_loss"]) and "eval_before_loss" in saved
    assert list(out.glob("runs/*/events.out.tfevents.*")), "TensorBoard logs missing"


def test_evaluation_before_and_after_training_scores_the_same_batches(trained, eval_batches):
    results, _, _ = trained
    per_evaluation = math.ceil(results["eval_samples"] / 8)
    assert per_evaluation > 1 and len(eval_batches) == 2 * per_evaluation  # eval_before, then eval
    before, after = eval_batches[:per_evaluation], eval_batches[per_evaluation:]
    for first, second in zip(before, after):
        assert first.keys() == second.keys() and {"input_ids", "labels"} <= first.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), key
    assert sum(int((b["labels"] != -100).sum()) for b in after) == results["eval_masked_tokens"]


def test_parameters_changed(trained, tiny_model_dir):
    _, out, _ = trained
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed
    assert len(changed) > len(before) // 2


def test_saved_model_loads_and_fills_a_mask(trained):
    from transformers import AutoModelForMaskedLM, pipeline

    _, out, _ = trained
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    fill = pipeline("fill-mask", model=str(out), top_k=3, device="cpu")
    assert model.config.vocab_size == len(fill.tokenizer) == 117
    text = "the band played the first [MASK] of the year ."
    predictions = fill(text)
    # The pipeline's guesses are the saved model's top 3 at the mask, decoded by the saved tokenizer.
    encoded = fill.tokenizer(text, return_tensors="pt")
    position = encoded["input_ids"][0].tolist().index(fill.tokenizer.mask_token_id)
    with torch.no_grad():
        best = model(**encoded).logits[0, position].softmax(-1).topk(3)
    assert [p["token"] for p in predictions] == best.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(best.values.tolist(), abs=1e-6)


def test_rerun_resumes_from_the_last_checkpoint(trained, tiny_model_dir, tmp_path, caplog):
    _, _, corpus = trained
    out = tmp_path / "out"
    first = run(tiny_model_dir, corpus, out, "--max_steps", "3")
    assert (out / "checkpoint-3").is_dir()
    with caplog.at_level("INFO"):
        results = run(tiny_model_dir, corpus, out)  # same folder, more steps: resumes from checkpoint-3
    assert "Resuming from" in caplog.text and "checkpoint-3" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    train_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    # a resumed run does not evaluate 'before' again: it keeps the figures its start measured
    assert results["eval_before_loss"] == first["eval_before_loss"]


def test_explicit_resume_from_checkpoint(trained, tiny_model_dir, tmp_path):
    _, out, corpus = trained
    results = run(tiny_model_dir, corpus, tmp_path / "other", "--resume_from_checkpoint", str(out / "checkpoint-3"))
    state = json.loads((tmp_path / "other" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    # Steps 4 to 6 redone from the checkpoint end where the uninterrupted run ended.
    assert results["eval_loss"] == pytest.approx(trained[0]["eval_loss"], abs=1e-5)


@pytest.mark.slow
def test_line_by_line_trains_with_length_grouped_batches(tiny_model_dir, corpus, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from mlm_pretraining.trainer import MLMTrainer

    seen = {}
    original = MLMTrainer.train

    def train(self, *args, **kwargs):
        seen["sampler"], seen["lengths"] = self._get_train_sampler(), list(self.train_dataset["length"])
        return original(self, *args, **kwargs)

    MLMTrainer.train = train
    try:
        run(tiny_model_dir, corpus, tmp_path / "lines", "--line_by_line", "--save_strategy", "no", "--max_steps", "2")
    finally:
        MLMTrainer.train = original
    assert isinstance(seen["sampler"], LengthGroupedSampler)
    assert list(seen["sampler"].lengths) == seen["lengths"]  # taken from the column, not recomputed


def test_cli_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run_mlm.py", "--train_file", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "run_mlm.py: error: --train_file: no such file or folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_eval_results_keep_the_before_training_figures(trained):
    results, out, _ = trained
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_before_loss"] == pytest.approx(results["eval_before_loss"])
    assert saved["eval_loss"] == pytest.approx(results["eval_loss"])


def test_named_validation_sets_are_each_scored_before_and_after(trained, tiny_model_dir, tmp_path):
    from mlm_pretraining.reporting.plotting import curves, read_log_history

    _, _, corpus = trained
    general = tmp_path / "general.txt"
    general.write_text("\n".join(f"the river in the park of the north {i % 5} ." for i in range(80)))
    results = run(tiny_model_dir, corpus, tmp_path / "named", "--validation_file", f"domain={corpus}",
                  f"general={general}", "--max_eval_samples", "12")
    for name in ("domain", "general"):
        for when in ("eval_before", "eval"):
            assert results[f"{when}_{name}_perplexity"] == pytest.approx(math.exp(results[f"{when}_{name}_loss"]))
            assert results[f"{when}_{name}_masked_tokens"] > 0
        assert results[f"eval_{name}_samples"] == 12
    assert results["eval_domain_loss"] < results["eval_before_domain_loss"]  # trained on that very text
    assert results["eval_general_loss"] != pytest.approx(results["eval_domain_loss"])  # two sets, two scores
    assert "eval_loss" not in results  # named sets only: no unnamed key that could be mistaken for one of them
    points = curves(read_log_history(tmp_path / "named"))
    assert [step for step, _ in points["eval_loss:general"]] == [0, 6]  # one line per set, from step 0
    assert points["eval_loss:domain"][-1][1] == pytest.approx(results["eval_domain_loss"])
    assert (tmp_path / "named" / "training_curves.png").is_file()


def test_evaluating_a_checkpoint_without_training(trained, tmp_path):
    results, out, corpus = trained
    again = main(["--model_name_or_path", str(out), "--validation_file", str(corpus), "--output_dir",
                  str(tmp_path / "eval-only"), "--max_seq_length", "32", "--per_device_eval_batch_size", "8",
                  "--preprocessing_num_workers", "1", "--seed", "1", "--report_to", "none"])
    assert "train_loss" not in again and "eval_before_loss" not in again
    assert again["eval_perplexity"] == pytest.approx(math.exp(again["eval_loss"]))
    assert again["eval_loss"] < results["eval_before_loss"]  # the trained checkpoint, not a fresh one


def test_the_default_cadence_follows_the_runs_length(trained, tiny_model_dir, tmp_path):
    """No cadence flags: the loss logged at every 1 % of the steps, an evaluation and a checkpoint every 10 %, the
    newest two checkpoints kept (a 20-step run: every step; every 2 steps; checkpoint-18 and -20)."""
    _, _, corpus = trained
    out = tmp_path / "defaults"
    main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--output_dir", str(out),
          "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--max_steps", "20",
          "--max_eval_samples", "4", "--preprocessing_num_workers", "1", "--report_to", "none",
          "--dataloader_num_workers", "0"])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 21))
    assert sorted({e["step"] for e in history if "eval_loss" in e}) == list(range(2, 21, 2))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-20"]
