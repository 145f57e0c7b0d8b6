"""Head warm-up (mlm_pretraining/head_warmup.py): which weights are new, --head_warmup_steps, an encoder that stays
bit-identical during the warm-up and moves after it, and exact resume across the switch."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import write_season_corpus
from helpers import flags, launch_run_mlm, losses, max_weight_difference
from safetensors.torch import load_file

import run_mlm
from arguments import parse_args
from mlm_pretraining.errors import InputError
from mlm_pretraining.model.head_warmup import (
    AUTO_CAP,
    NewWeights,
    find_new_weights,
    resolve_warmup_steps,
)
from mlm_pretraining.model.loading import load_model_with_info

HEAD = {"cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_season_corpus(
        tmp_path_factory.mktemp("warmup-data"),
        first="the city park was happily known for its music and the band played the first song of the year .")


def model_args(path):
    (args, *_) = parse_args(["--model_name_or_path", str(path), "--output_dir", "unused"])
    return args


def encoder(weights: dict) -> dict:
    """The encoder's tensors by their name in a bare BertModel checkpoint (no 'bert.' prefix, no pooler)."""
    return {k.removeprefix("bert."): v for k, v in weights.items()
            if not k.startswith("cls.") and "pooler" not in k}


def test_new_head_found_and_tied_decoder_weight_is_not_new(headless_model_dir, tiny_tokenizer):
    model, info = load_model_with_info(model_args(headless_model_dir), tiny_tokenizer)
    assert "cls.predictions.decoder.bias" in info["missing_keys"]  # tied to cls.predictions.bias
    new = find_new_weights(model, info["missing_keys"])
    assert set(new.parameters) == HEAD  # decoder.weight is the (loaded) input embedding matrix, decoder.bias the bias
    assert new.rows == {}
    assert new.describe() == "cls.predictions.bias, cls.predictions.transform.* (5 tensors)"
    assert resolve_warmup_steps("auto", new, 20) == 2  # 10 % of the steps
    assert resolve_warmup_steps("auto", new, 5) == 1  # at least one
    assert resolve_warmup_steps("auto", new, 100_000) == AUTO_CAP
    assert resolve_warmup_steps(7, new, 20) == 7


def test_trained_head_means_no_warmup(tiny_model_dir, tiny_tokenizer):
    model, info = load_model_with_info(model_args(tiny_model_dir), tiny_tokenizer)
    new = find_new_weights(model, info["missing_keys"])
    assert not new and new.parameters == {} and new.rows == {}
    assert resolve_warmup_steps("auto", new, 1000) == 0
    assert resolve_warmup_steps(50, new, 1000) == 0  # nothing to warm up


def test_added_tokens_are_new_rows(tiny_model_dir, tiny_tokenizer):
    model, info = load_model_with_info(model_args(tiny_model_dir), tiny_tokenizer)
    new = find_new_weights(model, info["missing_keys"], [70, 71])
    # Input embeddings (= the tied decoder weight) and the output bias; no whole parameter.
    assert new.parameters == {}
    assert sorted(new.rows) == ["bert.embeddings.word_embeddings.weight", "cls.predictions.bias"]
    assert all(ids == [70, 71] for _, ids in new.rows.values())


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_bad_warmup_steps_name_the_flag(value):
    with pytest.raises(InputError, match=f"--head_warmup_steps must be 'auto' or a non-negative integer.*'{value}'"):
        parse_args(["--output_dir", "x", "--head_warmup_steps", value])


def test_warmup_steps_parse():
    assert parse_args(["--output_dir", "x"])[-1].head_warmup_steps == "auto"
    assert parse_args(["--output_dir", "x", "--head_warmup_steps", "12"])[-1].head_warmup_steps == "12"


def run(model_dir, corpus, out, steps, warmup, **extra) -> dict:
    run_mlm.main(flags(model_dir, corpus, out, max_steps=steps, head_warmup_steps=warmup, save_steps=100,
                       weight_decay=0.1, **extra))
    return load_file(out / "model.safetensors")


def test_encoder_bit_identical_during_warmup_and_moves_after(headless_model_dir, corpus_file, tmp_path, caplog):
    base = load_file(headless_model_dir / "model.safetensors")
    with caplog.at_level("INFO", logger="mlm_pretraining.model.head_warmup"):
        warm = run(headless_model_dir, corpus_file, tmp_path / "warm", 4, 4)
    assert "Newly initialised: cls.predictions.bias, cls.predictions.transform.* (5 tensors); training only these " \
           "until step 4 of 4 (--head_warmup_steps 4)" in caplog.text
    warm_encoder = encoder(warm)
    assert warm_encoder.keys() == encoder(base).keys()
    for key, tensor in encoder(base).items():  # weight decay 0.1 included: AdamW never saw these
        assert torch.equal(warm_encoder[key], tensor), key
    losses_warm = losses(tmp_path / "warm")
    assert losses_warm[-1] < losses_warm[0]  # the head alone learns

    after = encoder(run(headless_model_dir, corpus_file, tmp_path / "after", 6, 4))
    moved = [key for key, tensor in encoder(base).items() if not torch.equal(after[key], tensor)]
    assert len(moved) == len(base) - 2  # all but the pooler (which masked-LM does not use)
    assert "Head warm-up done at step 4" in caplog.text

    plain = encoder(run(headless_model_dir, corpus_file, tmp_path / "plain", 4, 0))
    assert not torch.equal(plain["encoder.layer.0.attention.self.query.weight"],
                           base["encoder.layer.0.attention.self.query.weight"])


def test_added_token_rows_alone_train_during_warmup(tiny_model_dir, corpus_file, tmp_path, caplog):
    words = tmp_path / "words.txt"
    words.write_text("happily\nbelievably\n", encoding="utf-8")
    base = load_file(tiny_model_dir / "model.safetensors")
    with caplog.at_level("INFO", logger="mlm_pretraining.model.head_warmup"):
        out = run(tiny_model_dir, corpus_file, tmp_path / "out", 3, "auto", add_tokens=words)
    assert "Newly initialised: 2 new rows of bert.embeddings.word_embeddings.weight; 2 new rows of " \
           "cls.predictions.bias; training only these until step 1 of 3 (--head_warmup_steps auto)" \
           in caplog.text
    out_steps1 = run(tiny_model_dir, corpus_file, tmp_path / "one", 1, "auto", add_tokens=words)
    rows = base["bert.embeddings.word_embeddings.weight"].shape[0]
    for key, tensor in base.items():
        if key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            assert torch.equal(out_steps1[key][:rows], tensor), key  # old rows frozen, despite weight decay
            assert not torch.equal(out_steps1[key][rows:], out[key][rows:]), key
        else:
            assert torch.equal(out_steps1[key], tensor), key
            assert not torch.equal(out[key], tensor), key  # after the warm-up step everything trains
    assert out_steps1["bert.embeddings.word_embeddings.weight"].shape[0] == rows + 2


# Exact resume across the switch: warm-up ends at step 6, between checkpoints 4 and 8 (test_resume's MAX_STEPS 14).
WARMUP = 6


@pytest.fixture(scope="module")
def full_warmup_run(headless_model_dir, corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full-warmup") / "out"
    run_mlm.main(flags(headless_model_dir, corpus_file, out, head_warmup_steps=WARMUP, weight_decay=0.1))
    return out


@pytest.mark.parametrize("step", [4, 8])  # resumed during, and after, the warm-up
def test_resume_across_the_switch_is_exact(full_warmup_run, headless_model_dir, corpus_file, tmp_path, step):
    out = tmp_path / "out"
    shutil.copytree(full_warmup_run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    run_mlm.main(flags(headless_model_dir, corpus_file, out, head_warmup_steps=WARMUP, weight_decay=0.1))
    assert losses(out) == pytest.approx(losses(full_warmup_run), abs=1e-6)
    assert max_weight_difference(out, full_warmup_run) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("step", [4, 8])
def test_kill9_during_and_after_warmup_then_rerun_is_exact(full_warmup_run, headless_model_dir, corpus_file,
                                                            tmp_path, step):
    """SIGKILL once checkpoint-``step`` is written (4: inside the warm-up, 8: after it), rerun: as uninterrupted."""
    out = tmp_path / "out"
    argv = flags(headless_model_dir, corpus_file, out, head_warmup_steps=WARMUP, weight_decay=0.1)
    process = launch_run_mlm(argv, tmp_path / "killed.log")
    deadline = time.time() + 300
    while process.poll() is None and not (out / f"checkpoint-{step}" / "trainer_state.json").exists():
        assert time.time() < deadline
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    rerun = launch_run_mlm(argv, tmp_path / "rerun.log")
    assert rerun.wait() == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 14
    assert losses(out) == pytest.approx(losses(full_warmup_run), abs=1e-6)
    assert max_weight_difference(out, full_warmup_run) <= 1e-6


def test_empty_new_weights_is_false():
    assert not NewWeights()
