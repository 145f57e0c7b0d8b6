"""mlm_pretraining/sparse_head.py: the sparse prediction head gives the full head's loss, gradients and checkpoints."""

from __future__ import annotations

import json
import logging

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

from mlm_pretraining.speed.sparse_head import (
    enable_sparse_prediction,
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
    assert model.training  # training: for BERT-style heads the projection is fused with the loss
    sparse, sparse_grads = loss_and_grads(model, inputs)
    if kind != "modernbert":  # ModernBERT's own sparse prediction keeps its plain loss
        assert sparse.logits is None
    assert abs(sparse.loss.item() - full.loss.item()) < 1e-5
    assert sparse.loss.item() > 1.0  # a real loss, not an empty selection
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # Evaluation: the scores at the labelled positions are the full head's scores there, and the same loss.
    model.eval()
    with torch.no_grad():
        scored = model(**inputs)
    assert scored.logits.shape == (n_chosen, VOCAB)
    torch.testing.assert_close(scored.logits, full.logits[inputs["labels"] != -100], atol=1e-5, rtol=1e-5)
    assert abs(scored.loss.item() - full.loss.item()) < 1e-5

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
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.speed.sparse_head"):
        assert enable_sparse_prediction(model) is False
    assert "not available for ElectraForMaskedLM" in caplog.text
    assert "forward" not in vars(model)
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
