"""The speed features: sparse prediction head (exact), precision checks, length grouping, flat evaluation memory."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from arguments import InputError, parse_args
from collators import MLMCollator
from mlm_pretraining.precision import bf16_warning, cpu_has_native_bf16
from mlm_pretraining.sparse_head import (
    disable_sparse_prediction,
    enable_sparse_prediction,
    supports_sparse_prediction,
)

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=80, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        return BertForMaskedLM(BertConfig(**SMALL))
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(**SMALL, pad_token_id=1))
    if kind == "distilbert":
        return DistilBertForMaskedLM(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                      max_position_embeddings=80, dropout=0.0, attention_dropout=0.0))
    if kind == "modernbert":
        return ModernBertForMaskedLM(ModernBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=64,
                                                      max_position_embeddings=80, pad_token_id=0, bos_token_id=2,
                                                      eos_token_id=3, cls_token_id=2, sep_token_id=3))
    raise ValueError(kind)


def batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (3, 24), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 17:] = 0  # a padded row
    input_ids[1, 17:] = 0
    labels = torch.full_like(input_ids, -100)
    chosen = (torch.rand(input_ids.shape, generator=generator) < 0.2) & attention_mask.bool()
    labels[chosen] = input_ids[chosen]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def loss_and_grads(model, inputs, **kwargs):
    model.zero_grad()
    out = model(**inputs, **kwargs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "modernbert"])
def test_sparse_head_gives_the_full_heads_loss_and_gradients(kind):
    model = tiny(kind)
    inputs = batch()
    n_chosen = int((inputs["labels"] != -100).sum())
    full, full_grads = loss_and_grads(model, inputs)
    assert full.logits.shape == (3, 24, VOCAB)

    assert enable_sparse_prediction(model)
    sparse, sparse_grads = loss_and_grads(model, inputs)
    assert sparse.logits.shape == (n_chosen, VOCAB)
    assert abs(sparse.loss.item() - full.loss.item()) < 1e-5
    assert sparse.loss.item() > 1.0  # a real loss, not an empty selection
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # The scores at the labelled positions are the full head's scores there.
    torch.testing.assert_close(sparse.logits, full.logits[inputs["labels"] != -100], atol=1e-5, rtol=1e-5)

    # Without labels (inference, fill-mask) the model gives full logits as before.
    no_labels = {k: v for k, v in inputs.items() if k != "labels"}
    assert model(**no_labels).logits.shape == (3, 24, VOCAB)


def test_sparse_loss_is_the_batch_mean_whatever_count_the_trainer_passes():
    # The step-wide normalisation is MLMTrainer.compute_loss's job alone; the head must not normalise twice.
    model = tiny("bert")
    inputs = batch(1)
    full = model(**inputs).loss.item()
    enable_sparse_prediction(model)
    assert model(**inputs, num_items_in_batch=torch.tensor(1000)).loss.item() == pytest.approx(full, abs=1e-5)


def test_unknown_model_keeps_its_full_head_and_says_so(caplog):
    torch.manual_seed(0)
    model = ElectraForMaskedLM(ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    assert not supports_sparse_prediction(model)
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.sparse_head"):
        assert enable_sparse_prediction(model) is False
    assert "not available for ElectraForMaskedLM" in caplog.text
    assert "forward" not in vars(model)
    assert model(**batch()).logits.shape == (3, 24, VOCAB)


def test_disable_restores_the_class_forward():
    model = tiny("bert")
    enable_sparse_prediction(model)
    disable_sparse_prediction(model)
    assert model(**batch()).logits.shape == (3, 24, VOCAB)


def test_saved_model_is_a_plain_checkpoint(tmp_path):
    model = tiny("roberta")
    keys = set(model.state_dict())
    enable_sparse_prediction(model)
    assert set(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(loaded) is RobertaForMaskedLM
    assert set(loaded.state_dict()) == keys
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["RobertaForMaskedLM"]


def common_flags(tiny_model_dir, corpus, out):
    return ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--output_dir", str(out),
            "--max_seq_length", "32", "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--report_to", "none", "--save_steps", "2", "--seed", "3",
            "--preprocessing_num_workers", "1", "--logging_steps", "1", "--dataloader_num_workers", "0"]


@pytest.mark.slow
def test_training_with_the_sparse_head_matches_the_full_head_end_to_end(tiny_model_dir, corpus, tmp_path):
    from run_mlm import main

    sparse = main(common_flags(tiny_model_dir, corpus, tmp_path / "sparse"))
    full = main(common_flags(tiny_model_dir, corpus, tmp_path / "full") + ["--sparse_prediction", "False"])
    for key in ("eval_before_loss", "train_loss", "eval_loss", "eval_accuracy"):
        assert abs(sparse[key] - full[key]) < 1e-4, key
    assert sparse["eval_loss"] < sparse["eval_before_loss"]  # it did train
    # The checkpoint and the final model have exactly the keys of the full-head run's.
    saved = AutoModelForMaskedLM.from_pretrained(tmp_path / "sparse")
    reference = AutoModelForMaskedLM.from_pretrained(tmp_path / "full")
    assert set(saved.state_dict()) == set(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "sparse" / "checkpoint-2" / "model.safetensors").is_file()

    # Resuming from checkpoint-2 ends where resuming the full-head run ends.
    import shutil
    resumed = {}
    for name, extra in (("sparse", []), ("full", ["--sparse_prediction", "False"])):
        shutil.rmtree(tmp_path / name / "checkpoint-3")
        resumed[name] = main(common_flags(tiny_model_dir, corpus, tmp_path / name) + extra)
    assert abs(resumed["sparse"]["eval_loss"] - resumed["full"]["eval_loss"]) < 1e-5
    assert abs(resumed["sparse"]["eval_loss"] - sparse["eval_loss"]) < 1e-3


def test_bf16_warning_only_on_cpus_without_native_bf16():
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    amx = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    graviton = "Features\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_has_native_bf16(avx2)
    assert cpu_has_native_bf16(amx) and cpu_has_native_bf16(graviton)
    assert "SLOWER" in bf16_warning(True, on_cpu=True, cpuinfo=avx2)
    assert bf16_warning(True, on_cpu=True, cpuinfo=amx) is None
    assert bf16_warning(True, on_cpu=False, cpuinfo=avx2) is None  # a GPU does the work
    assert bf16_warning(False, on_cpu=True, cpuinfo=avx2) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_bf16_runs_on_a_cpu_only_machine_and_fp16_is_refused(tmp_path):
    *_, args = parse_args(["--output_dir", str(tmp_path), "--bf16", "--report_to", "none"])
    assert args.bf16 and args.use_cpu
    with pytest.raises(InputError, match="--fp16 needs a GPU"):
        parse_args(["--output_dir", str(tmp_path), "--fp16"])


def test_line_by_line_examples_carry_their_length(tiny_tokenizer, corpus, tmp_path):
    from mlm_pretraining.data import prepare_datasets
    from mlm_pretraining.text import read_corpus

    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), "--train_file", str(corpus), "--line_by_line",
                                     "--preprocessing_num_workers", "1"])
    processed = prepare_datasets(read_corpus(data_args), tiny_tokenizer, data_args, 32)
    train = processed["train"]
    assert train["length"][:20] == [len(ids) for ids in train["input_ids"][:20]]
    assert len(set(train["length"])) > 1
    collated = MLMCollator(tiny_tokenizer, pad_to_multiple_of=8)([train[i] for i in range(5)])
    assert collated["input_ids"].shape[1] % 8 == 0 and "length" not in collated


@pytest.mark.slow
def test_line_by_line_trains_with_length_grouped_batches(tiny_model_dir, corpus, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    import run_mlm
    from mlm_pretraining.trainer import MLMTrainer

    seen = {}
    original = MLMTrainer.train

    def train(self, *args, **kwargs):
        seen["sampler"], seen["lengths"] = self._get_train_sampler(), list(self.train_dataset["length"])
        return original(self, *args, **kwargs)

    MLMTrainer.train = train
    try:
        results = run_mlm.main(common_flags(tiny_model_dir, corpus, tmp_path / "lines")
                               + ["--line_by_line", "--save_strategy", "no", "--max_steps", "2"])
    finally:
        MLMTrainer.train = original
    assert isinstance(seen["sampler"], LengthGroupedSampler)
    assert list(seen["sampler"].lengths) == seen["lengths"]  # taken from the column, not recomputed
    assert results["train_loss"] > 0


def test_evaluation_memory_is_flat_no_predictions_are_gathered(tiny_model_dir, tiny_tokenizer, tmp_path):
    # Memory stays flat when every batch's logits (sparse or full) are reduced to ids on the device and scored
    # batch by batch: the metric sees one batch of integer ids per call, never float logits or the whole set.
    from datasets import Dataset

    from mlm_pretraining.metrics import MLMMetrics, preprocess_logits_for_metrics
    from mlm_pretraining.trainer import MLMTrainer

    *_, args = parse_args(["--output_dir", str(tmp_path), "--per_device_eval_batch_size", "4", "--report_to", "none"])
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    enable_sparse_prediction(model)
    ids = tiny_tokenizer(["the city park was known for its music and the band played"] * 40)["input_ids"]
    seen = []
    accuracy = MLMMetrics()

    def spy(eval_pred, compute_result):
        seen.append((tuple(eval_pred.predictions.shape), eval_pred.predictions.dtype))
        return accuracy(eval_pred, compute_result)

    trainer = MLMTrainer(model=model, args=args, data_collator=MLMCollator(tiny_tokenizer, seed=1),
                         eval_dataset=Dataset.from_dict({"input_ids": ids}), compute_metrics=spy,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    metrics = trainer.evaluate()
    assert len(seen) == 10
    assert all(shape == (4, len(ids[0])) and not dtype.is_floating_point for shape, dtype in seen)
    assert metrics["eval_masked_tokens"] > 40 and 0 <= metrics["eval_accuracy"] <= 1


def test_help_lists_the_speed_flags():
    # argparse expands '%' in help texts, so a stray percent sign would break --help.
    from transformers import HfArgumentParser

    from arguments import ARGUMENT_GROUPS

    text = HfArgumentParser(ARGUMENT_GROUPS).format_help()
    assert "--sparse_prediction" in text and "group_by_length with --line_by_line" in text


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
