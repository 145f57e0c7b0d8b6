"""--streaming: the packed stream equals in-memory packing (word ids too), passes repeat with new masks, every
block's position seeks to the blocks after it, runs resume by position exactly and without re-tokenizing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, write_season_corpus
from safetensors.torch import load_file

import run_mlm
from arguments import DataArguments
from collators import STREAM_POSITION, MLMCollator
from mlm_pretraining.data.packing import pack, special_token_template, tokenize
from mlm_pretraining.data.sources import prepare_datasets
from mlm_pretraining.data.streaming import STATE_FILE, PackedStream
from mlm_pretraining.data.text import TextStream, read_corpus
from mlm_pretraining.data.whole_word import use_chinese_segmentation
from mlm_pretraining.errors import InputError


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
    from mlm_pretraining.data import streaming

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
    state = json.loads((full / "checkpoint-12" / STATE_FILE).read_text())
    assert state["blocks_consumed"] == 12 * 8 and state["global_step"] == 12
    assert [p["pass"] for p in state["positions"]] == [1]  # 84 blocks a pass: block 12 of the second pass
    assert state["positions"][0]["block_in_pass"] == 12
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-12", resumed / "checkpoint-12")
    run_mlm.main(flags(tiny_model_dir, corpus, resumed))
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6)
    assert max_weight_difference(full, resumed) <= 1e-6
    assert epochs(resumed) == epochs(full)


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def epochs(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["epoch"] for entry in history if "loss" in entry]


TEXTS_A_BATCH = 10  # small text batches, so reading by position and replaying read measurably different amounts


@pytest.fixture(scope="module")
def stream_corpus(tmp_path_factory) -> Path:
    return write_season_corpus(tmp_path_factory.mktemp("stream-data"))


def run_streaming(model, corpus, out, **extra) -> None:
    from mlm_pretraining.data import streaming

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming, "TEXTS_PER_BATCH", TEXTS_A_BATCH)
        run_mlm.main(flags(model, corpus, out, do_eval=False, **extra))


@pytest.fixture(scope="module")
def stream_run(tiny_model_dir, stream_corpus, tmp_path_factory) -> Path:
    """An uninterrupted 14-step streamed run without evaluation, checkpoints every 4 steps."""
    out = tmp_path_factory.mktemp("stream-full") / "out"
    run_streaming(tiny_model_dir, stream_corpus, out)
    return out


def test_resume_by_position_reads_only_the_text_it_trains_on(stream_run, tiny_model_dir, stream_corpus, tmp_path,
                                                              monkeypatch, caplog):
    """Before the first new step a resume by position tokenizes a couple of text batches; replaying (a checkpoint
    without stream_state.json, as older versions wrote) tokenizes the text before the checkpoint's block again (a
    pass of 84 blocks, 180 texts, and 12 blocks more). Both continue exactly as the uninterrupted run."""
    from mlm_pretraining.data import streaming
    from mlm_pretraining.trainer import MLMTrainer

    counted, at_first_step = [], []
    encode = streaming.encode_flat
    training_step = MLMTrainer.training_step

    def counting_encode(tokenizer, texts, **options):
        counted.append(len(texts))
        return encode(tokenizer, texts, **options)

    def first_step(self, *args, **kwargs):
        if not at_first_step:
            at_first_step.append(sum(counted))
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(streaming, "encode_flat", counting_encode)
    monkeypatch.setattr(MLMTrainer, "training_step", first_step)
    read = {}
    for how in ("seek", "replay"):
        out = tmp_path / how
        shutil.copytree(stream_run / "checkpoint-12", out / "checkpoint-12")
        if how == "replay":
            (out / "checkpoint-12" / STATE_FILE).unlink()
        counted.clear(), at_first_step.clear()
        with caplog.at_level(logging.INFO, logger="mlm_pretraining.data.streaming"):
            run_streaming(tiny_model_dir, stream_corpus, out)
        read[how] = at_first_step[0]
        assert losses(out) == pytest.approx(losses(stream_run), abs=1e-6), how
        assert max_weight_difference(out, stream_run) <= 1e-6, how
    assert "Resuming the stream by position: pass 1, block 12" in caplog.text
    assert f"has no {STATE_FILE}" in caplog.text and "replays the stream" in caplog.text
    # The 16 blocks of the first step's batch and the one prefetched hold ~34 texts (14 tokens a text), read in
    # batches of 10 from the text the checkpoint's block starts in.
    assert read["seek"] <= 34 + 2 * TEXTS_A_BATCH
    assert read["replay"] > 180  # a whole pass (180 texts) and more, to reach block 12 of the second pass


def test_resume_by_position_refuses_other_files_or_workers(stream_run, tiny_model_dir, stream_corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(stream_run / "checkpoint-12", out / "checkpoint-12")
    with pytest.raises(InputError, match=r"written with --dataloader_num_workers 1 .* this run has 2\. Resume with "
                                         r"--dataloader_num_workers 1"):
        run_streaming(tiny_model_dir, stream_corpus, out, dataloader_num_workers=2)
    changed = tmp_path / "train.txt"
    changed.write_text(stream_corpus.read_text() + "one more line .\n")
    with pytest.raises(InputError, match=r"checkpoint-12 was written while streaming other text or settings \(files "
                                         r"\[\['train.txt', \d+\]\] then, \[\['train.txt', \d+\]\] now\)"):
        run_streaming(tiny_model_dir, changed, out)


@pytest.mark.parametrize("extra", [
    {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 4, "whole_word_mask": True},
    pytest.param({"dataloader_num_workers": 2}, marks=pytest.mark.slow),
], ids=["accumulation-whole-word", "two-workers"])
def test_resume_by_position_is_exact(tiny_model_dir, stream_corpus, tmp_path, extra):
    """Gradient accumulation with whole-word masks (word ids carried through the stream), and two dataloader
    workers (each packs every other text batch and has its own position; after 9 batches the resumed dataloader's
    first batch is due from worker 1, not 0). Resumed at step 9 of 12, across the end of the first pass."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    steps = dict(max_steps=12, save_steps=3, **extra)
    run_streaming(tiny_model_dir, stream_corpus, full, **steps)
    state = json.loads((full / "checkpoint-9" / STATE_FILE).read_text())
    assert state["blocks_consumed"] == 9 * 8
    assert len(state["positions"]) == extra.get("dataloader_num_workers", 1)
    shutil.copytree(full / "checkpoint-9", resumed / "checkpoint-9")
    run_streaming(tiny_model_dir, stream_corpus, resumed, **steps)
    assert len(losses(full)) == 12
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6)
    assert max_weight_difference(full, resumed) <= 1e-6


# ---------------------------------------------------------------- reading by place, seeking


def test_text_stream_reads_the_texts_datasets_reads(tmp_path):
    """CRLF, lone CR, a BOM, blank and whitespace-only lines, a line separator inside a line: the same texts as the
    in-memory path (datasets' text builder, universal newlines); JSON lines and a JSON array likewise, null and
    blank texts skipped."""
    txt = tmp_path / "odd.txt"
    txt.write_bytes("\ufeffone\r\ntwo\rthree\n\n   \nfour\u2028still four\r\n\rfive".encode("utf-8"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "alpha"}\n\n{"text": null}\n{"text": "  "}\n{"text": "beta\\r\\ngamma"}\r\n',
                     encoding="utf-8")
    array = tmp_path / "rows.json"  # read by datasets, file by file: places are rows
    array.write_text(json.dumps([{"text": "first"}, {"text": None}, {"text": "second"}, {"text": " "}]))
    for path in (txt, jsonl, array):
        args = DataArguments(train_file=[str(path)], validation_split_percentage=0)
        in_memory = read_corpus(args)["train"]["text"]
        streamed = read_corpus(dataclasses.replace(args, streaming=True))["train"]
        assert list(streamed) == in_memory
        places = list(streamed.texts())
        # Starting at any text's place, or at the place after it, reads the rest of the texts.
        for k, (place, text, after) in enumerate(places):
            assert [t for _, t, _ in streamed.texts(place)] == in_memory[k:]
            assert [t for _, t, _ in streamed.texts(after)] == in_memory[k + 1:]
    assert in_memory == ["first", "second"]


def test_bad_utf8_in_a_stream_names_the_file_and_byte(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n" * 3 + b"caf\xe9\n")
    stream = TextStream([str(path)], "text", "--train_file")
    with pytest.raises(InputError, match=r"bad.txt' is not valid UTF-8 at byte 33"):
        list(stream)


@pytest.mark.parametrize("options", [{}, {"word_ids": True}, {"line_by_line": True}, {"max_samples": 23}])
def test_seeking_to_a_blocks_position_gives_the_blocks_after_it(corpus, tiny_tokenizer, monkeypatch, options):
    """Every block's position is where the next block starts: a new stream seeked there yields exactly the blocks
    that followed, across text batches and passes (the last block of a pass, and the one before it, included)."""
    from mlm_pretraining.data import streaming

    monkeypatch.setattr(streaming, "TEXTS_PER_BATCH", 13)  # many text batches, blocks crossing their borders
    lines = corpus.read_text(encoding="utf-8").splitlines()
    for i in range(0, len(lines), 9):  # texts of several blocks too: positions inside a text, resumed inside it
        lines[i] = " ".join([lines[i]] * (1 + i % 7))
    corpus.write_text("\n".join(lines), encoding="utf-8")
    _, texts = stream_of(corpus)
    n = 400
    rows = list(itertools.islice(iter(PackedStream(texts, tiny_tokenizer, 32, **options)), n))
    pass_ends = [k for k in range(n - 1) if rows[k]["mask_epoch"] != rows[k + 1]["mask_epoch"]]
    assert len(pass_ends) >= 2
    for k in sorted({*range(0, n - 1, 37), *pass_ends, *(k - 1 for k in pass_ends)}):
        resumed = PackedStream(texts, tiny_tokenizer, 32, **options)
        resumed.seek({0: rows[k][STREAM_POSITION]})
        assert list(itertools.islice(iter(resumed), n - k - 1)) == rows[k + 1:], f"seeking after block {k}"


def test_seeking_with_two_dataloader_workers_continues_their_turns(corpus, tiny_tokenizer, monkeypatch):
    """Two workers each pack every other text batch and the dataloader takes their batches in turn; after 7
    batches (the next one due from worker 1) a seeked stream continues with exactly the batches that followed."""
    from torch.utils.data import DataLoader

    from mlm_pretraining.data import streaming

    monkeypatch.setattr(streaming, "TEXTS_PER_BATCH", 11)
    _, texts = stream_of(corpus)

    def batches(stream, n):
        loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=list)
        return list(itertools.islice(iter(loader), n))

    full = batches(PackedStream(texts, tiny_tokenizer, 32), 24)
    latest = {}
    for batch in full[:7]:
        for row in batch:
            latest[row[STREAM_POSITION][0]] = row[STREAM_POSITION]
    resumed = PackedStream(texts, tiny_tokenizer, 32)
    resumed.seek(latest, rotation=7 % 2)
    assert batches(resumed, 17) == full[7:]


def test_stream_word_ids_and_masks_equal_the_in_memory_whole_word_path(corpus, tiny_tokenizer, tmp_path):
    args, texts = stream_of(corpus, validation_split_percentage=0, preprocessing_num_workers=1)
    raw = read_corpus(dataclasses.replace(args, streaming=False), str(tmp_path / "cache"))
    in_memory = prepare_datasets(raw, tiny_tokenizer, args, 32, whole_word_mask=True)["train"]
    streamed = list(itertools.islice(iter(PackedStream(texts, tiny_tokenizer, 32, word_ids=True)), len(in_memory)))
    assert [r["input_ids"] for r in streamed] == [list(r) for r in in_memory["input_ids"]]
    assert [r["word_ids"] for r in streamed] == [list(r) for r in in_memory["word_ids"]]
    assert any(len(set(w)) < len(w) - 2 for w in in_memory["word_ids"])  # words of several pieces are there
    collator = MLMCollator(tiny_tokenizer, seed=3, whole_word_mask=True)
    collator.epoch = 0  # the first pass: mask_epoch 0
    a = collator([{k: v for k, v in r.items() if k != STREAM_POSITION} for r in streamed[:16]])
    b = collator(list(in_memory.select(range(16))))
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.skipif(not (SHARED_DATA / "chinese" / "bert-base-chinese-vocab.txt").exists(),
                    reason="../shared/data/chinese is not here")
def test_streamed_chinese_reviews_segment_words_as_in_memory(tmp_path):
    """A .csv streamed through datasets file by file, Chinese words from the segmenter: same blocks and word ids."""
    import csv

    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=str(SHARED_DATA / "chinese" / "bert-base-chinese-vocab.txt"), do_lower_case=False)
    with open(SHARED_DATA / "chinese" / "ChnSentiCorp_htl_all.csv", encoding="utf-8-sig") as handle:
        reviews = [row["review"] for row in csv.DictReader(handle) if row["review"]][:120]
    path = tmp_path / "reviews.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "review"])
        writer.writerows([1, r] for r in reviews)
    args = DataArguments(train_file=[str(path)], text_column_name="review", validation_split_percentage=0,
                         preprocessing_num_workers=1)
    in_memory = prepare_datasets(read_corpus(args), tokenizer, args, 64, whole_word_mask=True)["train"]
    texts = read_corpus(dataclasses.replace(args, streaming=True))["train"]
    segment = use_chinese_segmentation(tokenizer, "auto")
    assert segment
    streamed = list(itertools.islice(iter(PackedStream(texts, tokenizer, 64, word_ids=True,
                                                       segment_chinese=segment)), len(in_memory)))
    assert [r["word_ids"] for r in streamed] == [list(r) for r in in_memory["word_ids"]]
    assert [r["input_ids"] for r in streamed] == [list(r) for r in in_memory["input_ids"]]


@pytest.mark.slow
def test_sigterm_then_rerun_seeks_and_continues_as_uninterrupted(tiny_model_dir, stream_corpus, tmp_path):
    """What a user does: SIGTERM a streamed run (run_mlm.py saves a checkpoint at the current step, with the stream's
    position), rerun the same command: it seeks there and ends with the losses and weights of a run never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    steps = dict(max_steps=300, save_steps=100_000, do_eval=False)
    full = tmp_path / "full"
    run_mlm.main(flags(tiny_model_dir, stream_corpus, full, **steps))
    out, log = tmp_path / "stopped", tmp_path / "stopped.log"
    argv = [sys.executable, str(repo / "run_mlm.py"), *flags(tiny_model_dir, stream_corpus, out, **steps)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(argv, cwd=repo, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while "{'loss': " not in log.read_text():  # a logged training step
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 300
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["global_step"] == step and state["blocks_consumed"] == step * 8
    rerun_log = tmp_path / "rerun.log"
    rerun = subprocess.run(argv, cwd=repo, env=env, stdout=open(rerun_log, "w"), stderr=subprocess.STDOUT)
    assert rerun.returncode == 0, rerun_log.read_text()[-3000:]
    assert "Resuming the stream by position" in rerun_log.read_text()
    assert losses(out) == pytest.approx(losses(full), abs=1e-6)
    assert max_weight_difference(full, out) <= 1e-6
