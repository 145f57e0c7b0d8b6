"""--streaming: the packed stream equals in-memory packing, passes repeat with new masks, runs resume exactly."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import run_mlm
from arguments import DataArguments, InputError
from mlm_pretraining.data import pack, special_token_template, tokenize
from mlm_pretraining.streaming import PackedStream
from mlm_pretraining.text import read_corpus


def stream_of(corpus: Path, **kwargs):
    args = DataArguments(train_file=[str(corpus)], streaming=True, **kwargs)
    return args, read_corpus(args)["train"]


def test_stream_blocks_equal_in_memory_packing(corpus, tiny_tokenizer, tmp_path):
    args, texts = stream_of(corpus, validation_split_percentage=0, preprocessing_num_workers=1)
    raw = read_corpus(dataclasses.replace(args, streaming=False), str(tmp_path / "cache"))
    packed = pack(tokenize(raw, tiny_tokenizer, args, 32)["train"], 32, *special_token_template(tiny_tokenizer))
    expected = [list(row) for row in packed["input_ids"]]
    stream = PackedStream(texts, tiny_tokenizer, 32)
    first_two_passes = list(itertools.islice(iter(stream), 2 * len(expected)))
    assert [b["input_ids"] for b in first_two_passes] == expected * 2  # the same blocks, pass after pass
    assert [b["mask_epoch"] for b in first_two_passes] == [0] * len(expected) + [1] * len(expected)
    assert len(expected) > 50


def test_stream_carries_the_remainder_across_text_batches(corpus, tiny_tokenizer, monkeypatch):
    """Tokenizing 7 texts at a time gives the same blocks: the remainder of a batch starts the next block."""
    from mlm_pretraining import streaming

    _, texts = stream_of(corpus)
    whole = [b["input_ids"] for b in itertools.islice(iter(PackedStream(texts, tiny_tokenizer, 32)), 60)]
    monkeypatch.setattr(streaming, "TEXTS_PER_BATCH", 7)
    small = [b["input_ids"] for b in itertools.islice(iter(PackedStream(texts, tiny_tokenizer, 32)), 60)]
    assert small == whole


def test_line_by_line_stream_and_max_samples(corpus, tiny_tokenizer):
    _, texts = stream_of(corpus)
    stream = PackedStream(texts, tiny_tokenizer, 16, line_by_line=True, max_samples=3)
    rows = list(itertools.islice(iter(stream), 6))
    assert [r["mask_epoch"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert all(r["input_ids"][0] == tiny_tokenizer.cls_token_id and len(r["input_ids"]) <= 16 for r in rows)
    assert rows[0]["input_ids"] == tiny_tokenizer(" = season 0 = ")["input_ids"]


def test_stream_text_column_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"title": "a", "body": "b"}\n')
    with pytest.raises(InputError, match=r"--train_file \(.*d.jsonl\) has no 'text' column.* Columns: title, body"):
        stream_of(path)
    with pytest.raises(InputError, match=r"--text_column_name 'content' is not a column of --train_file \(.*d.jsonl\)"):
        stream_of(path, text_column_name="content")


def flags(model, corpus, out, **extra) -> list[str]:
    args = {"model_name_or_path": model, "train_file": corpus, "validation_file": corpus, "streaming": True,
            "output_dir": out, "max_seq_length": 32, "per_device_train_batch_size": 8, "max_steps": 14,
            "save_steps": 4, "logging_steps": 1, "max_eval_samples": 8, "report_to": "none", "use_cpu": True,
            "preprocessing_num_workers": 1, "disable_tqdm": True, **extra}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_streaming_run_resumes_exactly_across_passes(tiny_model_dir, corpus, tmp_path):
    """A 14-step streaming run (a pass is 10 steps) against a rerun from its checkpoint-12, in the second pass:
    the stream is replayed to the same position, with the same masks, to the same losses and weights."""
    full = tmp_path / "full"
    results = run_mlm.main(flags(tiny_model_dir, corpus, full))
    assert "train_samples" not in results
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["eval_loss"] < results["eval_before_loss"]
    assert len(losses(full)) == 14
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-12", resumed / "checkpoint-12")
    run_mlm.main(flags(tiny_model_dir, corpus, resumed))
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
