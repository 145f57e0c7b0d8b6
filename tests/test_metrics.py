"""mlm_pretraining/metrics.py: predictions scattered back to their own positions (sparse head), masked-token
accuracy and perplexity counted over every batch, NSP metrics, and evaluation memory that stays flat."""

from __future__ import annotations

import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForMaskedLM, EvalPrediction

import run_mlm
from arguments import parse_args
from collators import MLMCollator
from mlm_pretraining import trainer as trainer_module
from mlm_pretraining.metrics import (
    MLMMetrics,
    perplexity,
    preprocess_logits_for_metrics,
)
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction
from mlm_pretraining.trainer import MLMTrainer

IGNORE = -100


def one_hot_logits(ids: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits whose argmax is ``ids[i]`` in row i, with unequal scores so no tie decides."""
    logits = torch.linspace(0, 1, vocab).repeat(len(ids), 1)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    return logits


def test_sparse_predictions_land_on_their_own_positions():
    # Labelled positions in row-major order: (0, 1), (0, 3), (1, 0), (1, 4). The sparse head scores them in that
    # order; each prediction must go back to its own position, -100 everywhere else.
    labels = torch.tensor([[IGNORE, 7, IGNORE, 9, IGNORE], [5, IGNORE, IGNORE, IGNORE, 8]])
    sparse = one_hot_logits([7, 2, 5, 8])
    predictions = preprocess_logits_for_metrics(sparse, labels)
    assert predictions.tolist() == [[IGNORE, 7, IGNORE, 2, IGNORE], [5, IGNORE, IGNORE, IGNORE, 8]]
    # The full head's (batch, length, vocab) logits give the same predictions at the labelled positions.
    full = torch.zeros(2, 5, 10)
    full[labels != IGNORE] = sparse
    full_predictions = preprocess_logits_for_metrics((full,), labels)  # a model output tuple: logits first
    assert full_predictions.shape == (2, 5)
    assert torch.equal(full_predictions[labels != IGNORE], predictions[labels != IGNORE])


def test_accuracy_is_the_hand_count_over_all_batches_then_resets():
    metric = MLMMetrics()
    first_labels = torch.tensor([[IGNORE, 7, IGNORE, 9, IGNORE], [5, IGNORE, IGNORE, IGNORE, 8]])
    first = preprocess_logits_for_metrics(one_hot_logits([7, 2, 5, 8]), first_labels)  # 3 of 4 right
    second_labels = torch.tensor([[1, IGNORE, 4]])
    second = preprocess_logits_for_metrics(one_hot_logits([1, 3]), second_labels)  # 1 of 2 right
    losses = torch.tensor([2.0, 3.0])
    assert metric(EvalPrediction(first, first_labels, losses=losses[:1]), compute_result=False) == {}
    result = metric(EvalPrediction(second, second_labels, losses=losses[1:]), compute_result=True)
    assert result["accuracy"] == 4 / 6 and result["masked_tokens"] == 6
    assert result["perplexity"] == pytest.approx(math.exp(2.5))  # exp of the mean per-sample loss
    again = metric(EvalPrediction(second, second_labels), compute_result=True)
    assert again == {"accuracy": 0.5, "masked_tokens": 2.0}  # counts were reset after the last batch


def test_sparse_nsp_loss_per_row_goes_to_its_own_row():
    labels = torch.tensor([[IGNORE, 7, 9], [IGNORE, IGNORE, IGNORE], [5, IGNORE, 8]])
    sparse = one_hot_logits([7, 2, 5, 1])
    nsp_logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    predictions, nsp_predictions, row_loss = preprocess_logits_for_metrics(
        (sparse, nsp_logits), (labels, torch.tensor([0, 1, 1])))
    assert predictions.tolist() == [[IGNORE, 7, 2], [IGNORE] * 3, [5, IGNORE, 1]]
    assert nsp_predictions.tolist() == [0, 1, 0]
    token_loss = torch.nn.functional.cross_entropy(sparse, torch.tensor([7, 9, 5, 8]), reduction="none")
    torch.testing.assert_close(row_loss, torch.stack([token_loss[:2].sum(), torch.tensor(0.0), token_loss[2:].sum()]))


def test_perplexity_is_exp_and_inf_on_overflow():
    assert perplexity(2.0) == math.exp(2.0)
    assert perplexity(1e4) == float("inf")


def test_evaluation_memory_is_flat_no_predictions_are_gathered(tiny_model_dir, tiny_tokenizer, tmp_path):
    # Memory stays flat when every batch's logits (sparse or full) are reduced to ids on the device and scored
    # batch by batch: the metric sees one batch of integer ids per call, never float logits or the whole set.
    *_, args = parse_args(["--output_dir", str(tmp_path), "--per_device_eval_batch_size", "4", "--report_to", "none"])
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    enable_sparse_prediction(model)
    ids = tiny_tokenizer(["the city park was known for its music and the band played"] * 40)["input_ids"]
    seen, scored = [], []
    accuracy = MLMMetrics()

    def spy(eval_pred, compute_result):
        seen.append((tuple(eval_pred.predictions.shape), eval_pred.predictions.dtype))
        scored.append((eval_pred.predictions.clone(), eval_pred.label_ids.clone()))
        return accuracy(eval_pred, compute_result)

    trainer = MLMTrainer(model=model, args=args, data_collator=MLMCollator(tiny_tokenizer, seed=1),
                         eval_dataset=Dataset.from_dict({"input_ids": ids}), compute_metrics=spy,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    metrics = trainer.evaluate()
    assert len(seen) == 10
    assert all(shape == (4, len(ids[0])) and not dtype.is_floating_point for shape, dtype in seen)
    # The reported numbers are the counts over all ten batches, not the last one's.
    predictions, labels = (torch.cat(tensors) for tensors in zip(*scored))
    chosen = labels != -100
    assert metrics["eval_masked_tokens"] == chosen.sum().item()
    assert metrics["eval_accuracy"] == (predictions[chosen] == labels[chosen]).sum().item() / chosen.sum().item()


def test_nsp_metrics():
    labels = torch.tensor([[-100, 5, -100], [7, -100, -100]])
    prediction_logits = torch.zeros(2, 3, 10)
    prediction_logits[0, 1, 5] = 10.0  # right
    prediction_logits[1, 0, 2] = 10.0  # wrong
    seq_logits = torch.tensor([[3.0, 0.0], [3.0, 0.0]])  # both predict 0
    nsp_labels = torch.tensor([0, 1])
    out = preprocess_logits_for_metrics((prediction_logits, seq_logits), (labels, nsp_labels))
    predictions, nsp_predictions, mlm_loss = out
    assert predictions[0, 1] == 5 and nsp_predictions.tolist() == [0, 0]
    expected = torch.nn.functional.cross_entropy(prediction_logits[labels != -100], labels[labels != -100],
                                                 reduction="none")
    assert torch.allclose(mlm_loss, expected)
    metric = MLMMetrics()
    result = metric(EvalPrediction(predictions=out, label_ids=(labels, nsp_labels)))
    assert result["accuracy"] == 0.5 and result["nsp_accuracy"] == 0.5
    assert result["mlm_loss"] == pytest.approx(float(expected.mean()))
    plain = metric(EvalPrediction(predictions=predictions, label_ids=labels))
    assert "nsp_accuracy" not in plain and plain["accuracy"] == 0.5


PEAK_MEMORY_SCRIPT = """
import os, sys, threading, time
import run_mlm
from mlm_pretraining import trainer as trainer_module
if sys.argv[2] == "gather":  # the stock way: keep every batch's full logits, score them all at the end
    trainer_module.preprocess_logits_for_metrics = lambda logits, labels: logits
    trainer_module.MLMMetrics = lambda: lambda eval_pred, compute_result=True: {
        "accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

growth = []
evaluate = trainer_module.MLMTrainer.evaluate

def watched_evaluate(self, *args, **kwargs):  # the most resident memory grew during evaluation, sampled every 2 ms
    start, peak, done = rss(), [0], threading.Event()
    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)
    thread = threading.Thread(target=watch)
    thread.start()
    try:
        return evaluate(self, *args, **kwargs)
    finally:
        done.set()
        thread.join()
        growth.append((max(peak[0], rss()) - start) / 2**20)

trainer_module.MLMTrainer.evaluate = watched_evaluate
metrics = run_mlm.main(sys.argv[3:])
print("GROWTH_MB", max(growth), metrics["eval_samples"])
"""


def evaluation_growth_mb(mode: str, samples: int, flags: list[str]) -> float:
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, repo, mode, *flags, "--max_eval_samples",
                           str(samples)], capture_output=True, text=True, timeout=600, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("GROWTH_MB"))
    growth, evaluated = line.split()[1:]
    assert int(float(evaluated)) == samples
    return float(growth)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_evaluating_10000_sequences_takes_no_more_memory_than_100(tiny_model_dir, tmp_path):
    # Full-vocabulary logits of 10,000 × 32 positions would be 10,000 × 32 × |vocab| × 4 bytes ≈ 190 MB here; the
    # "gather" run keeps them as the stock pipeline does, to show the measurement sees such growth.
    import random

    words = [w for w in (tiny_model_dir / "vocab.txt").read_text().split() if w.isalpha()]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(9_000)]
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flags = ["--model_name_or_path", str(tiny_model_dir), "--validation_file", str(tmp_path / "valid.txt"),
             "--do_train", "false", "--max_seq_length", "32", "--per_device_eval_batch_size", "64",
             "--sparse_prediction", "false", "--report_to", "none", "--output_dir", str(tmp_path / "out")]
    small = evaluation_growth_mb("ours", 100, flags)
    large = evaluation_growth_mb("ours", 10_000, flags)
    gathered = evaluation_growth_mb("gather", 10_000, flags + ["--batch_eval_metrics", "false"])
    print(f"resident memory growth while evaluating: 100 sequences {small:.0f} MB, 10,000 {large:.0f} MB, "
          f"10,000 gathered {gathered:.0f} MB")
    assert large - small < 20, (small, large)
    assert gathered - small > 150, (small, gathered)


@pytest.fixture(scope="module")
def echo_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny BERT made to predict the token it reads at each position (layers and positions switched off, the
    head's transform the identity): right exactly where a chosen token was left unchanged, so accuracy is far from
    0 and depends on every prediction sitting at its own position."""
    from transformers import AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    hidden = model.config.hidden_size
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.zero_()
        model.bert.embeddings.token_type_embeddings.weight.zero_()
        for layer in model.bert.encoder.layer:  # residual only: LayerNorm(0 + x) = x
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight.zero_()
                dense.bias.zero_()
        transform = model.cls.predictions.transform
        transform.dense.weight.copy_(torch.eye(hidden))
        transform.dense.bias.fill_(10.0)  # gelu(x + 10) = x + 10, and the LayerNorm after it removes the 10
    folder = tmp_path_factory.mktemp("echo-bert")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def evaluate_only(model_dir, corpus, out, monkeypatch, *extra):
    """run_mlm.main evaluating (no training) with fixed masks; returns its results and each scored batch."""
    scored = []

    class Recording(MLMMetrics):
        def __call__(self, eval_pred, compute_result=True):
            scored.append((torch.as_tensor(eval_pred.predictions).clone(), torch.as_tensor(eval_pred.label_ids).clone()))
            return super().__call__(eval_pred, compute_result)

    monkeypatch.setattr(trainer_module, "MLMMetrics", Recording)
    results = run_mlm.main(["--model_name_or_path", str(model_dir), "--validation_file", str(corpus),
                            "--do_train", "false", "--output_dir", str(out), "--max_seq_length", "32",
                            "--per_device_eval_batch_size", "8", "--report_to", "none", "--seed", "3",
                            "--mask_replace_prob", "0.5", "--preprocessing_num_workers", "1", *extra])
    return results, scored


def test_sparse_and_full_heads_score_the_same_predictions_end_to_end(echo_model_dir, corpus, tmp_path, monkeypatch):
    """Same weights, same masks: the sparse head's predictions reach the metric at the positions the full head's do,
    so accuracy and loss agree, and accuracy is the count of right predictions."""
    sparse, sparse_batches = evaluate_only(echo_model_dir, corpus, tmp_path / "sparse", monkeypatch)
    full, full_batches = evaluate_only(echo_model_dir, corpus, tmp_path / "full", monkeypatch,
                                       "--sparse_prediction", "false")
    assert len(sparse_batches) == len(full_batches) > 3
    right = total = 0
    for (sparse_predictions, labels), (full_predictions, full_labels) in zip(sparse_batches, full_batches):
        assert torch.equal(labels, full_labels)  # the same masks
        chosen = labels != IGNORE
        assert (sparse_predictions[~chosen] == IGNORE).all()
        assert torch.equal(sparse_predictions[chosen], full_predictions[chosen])
        right += (sparse_predictions[chosen] == labels[chosen]).sum().item()
        total += chosen.sum().item()
    assert sparse["eval_masked_tokens"] == full["eval_masked_tokens"] == total
    assert sparse["eval_accuracy"] == pytest.approx(right / total, abs=1e-12)
    # The echo model is right where a chosen token stayed unchanged: 40 % with --mask_replace_prob 0.5.
    assert sparse["eval_accuracy"] == pytest.approx(0.4, abs=0.1)
    assert abs(sparse["eval_accuracy"] - full["eval_accuracy"]) < 1e-5
    assert abs(sparse["eval_loss"] - full["eval_loss"]) < 1e-5
