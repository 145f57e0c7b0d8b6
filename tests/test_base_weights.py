"""The saved model keeps the base checkpoint's encoder weights masked-LM does not use (BERT's pooler), so a classifier
fine-tuned from a run_mlm.py output starts from the same pooler as one fine-tuned from the base."""

from __future__ import annotations

import json

import torch
from helpers import flags
from safetensors.torch import load_file, save_file

import run_mlm
from mlm_pretraining.model.base_weights import (
    EXTRA_SHARD,
    base_weights_to_keep,
    keep_base_weights,
)

POOLER = ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]


def test_run_mlm_output_keeps_the_base_pooler(headless_model_dir, corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    out = tmp_path / "out"
    run_mlm.main(flags(headless_model_dir, corpus, out, max_steps=2, head_warmup_steps=0))
    base, saved = load_file(headless_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    for key in POOLER:
        assert torch.equal(saved[key], base[key.removeprefix("bert.")]), key  # bit for bit
    assert not torch.equal(saved["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])

    _, info = AutoModelForSequenceClassification.from_pretrained(out, num_labels=3, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}  # no pooler among them
    model, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    # The masked-LM class loads everything it has and only lists the pooler as unused, as for bert-base-uncased.
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(POOLER)
    assert torch.equal(model.cls.predictions.transform.dense.weight,
                       saved["cls.predictions.transform.dense.weight"])


def test_nothing_added_when_the_base_has_no_pooler(tiny_model_dir, corpus, tmp_path):
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_steps=1))
    assert not [key for key in load_file(out / "model.safetensors") if "pooler" in key]


def test_pretraining_checkpoint_keeps_pooler_not_nsp_head(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    weights = {"bert.embeddings.word_embeddings.weight": torch.zeros(10, 4),
               "bert.pooler.dense.weight": torch.ones(4, 4), "cls.seq_relationship.weight": torch.ones(2, 4)}
    save_file(weights, str(base / "model.safetensors"))
    kept = base_weights_to_keep(str(base), {"bert.pooler.dense.weight", "cls.seq_relationship.weight"}, "bert.")
    assert list(kept) == ["bert.pooler.dense.weight"]


class FakeModel:
    base_model_prefix = "bert"


def test_sharded_output_gets_one_more_shard_and_trained_keys_are_never_replaced(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir(), out.mkdir()
    pooler = torch.randn(4, 4)
    save_file({"embeddings.word_embeddings.weight": torch.zeros(10, 4), "pooler.dense.weight": pooler},
              str(base / "model.safetensors"))
    save_file({"bert.embeddings.word_embeddings.weight": torch.ones(10, 4)}, str(out / "model-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {"bert.embeddings.word_embeddings.weight": "model-00001.safetensors"}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    unexpected = {"pooler.dense.weight", "embeddings.word_embeddings.weight"}  # the second: never replaced
    assert keep_base_weights(FakeModel(), str(base), unexpected, str(out)) == ["bert.pooler.dense.weight"]
    manifest = json.loads((out / "model.safetensors.index.json").read_text())
    assert manifest["weight_map"]["bert.pooler.dense.weight"] == EXTRA_SHARD
    assert torch.equal(load_file(out / EXTRA_SHARD)["bert.pooler.dense.weight"], pooler)
    assert list(load_file(out / EXTRA_SHARD)) == ["bert.pooler.dense.weight"]


def test_no_weights_in_output_is_a_warning_not_a_crash(tmp_path, caplog):
    base = tmp_path / "base"
    base.mkdir()
    save_file({"pooler.dense.weight": torch.ones(2, 2)}, str(base / "model.safetensors"))
    assert keep_base_weights(FakeModel(), str(base), {"pooler.dense.weight"}, str(tmp_path / "empty")) == []
    assert "the base model's bert.pooler.dense.weight not added" in caplog.text


def test_unreachable_hub_model_keeps_nothing():
    # HF_HUB_OFFLINE and not cached: nothing to copy, no error (the saved model is simply the masked-LM one).
    assert base_weights_to_keep("no-such-owner/no-such-model", {"pooler.dense.weight"}, "bert.") == {}
