"""Tokenize once: scripts/prepare_corpus.py writes the blocks in-memory packing makes (word ids and lines too), a
--tokenized_dataset run trains exactly like the in-memory run on the same text, and a folder made for another
tokenizer, length or masking, or with a missing or truncated shard, is refused with a message that says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_season_corpus
from safetensors.torch import load_file

import run_mlm
from arguments import DataArguments, parse_args
from mlm_pretraining.data.prepared import (
    METADATA_FILE,
    load_prepared,
    tokenizer_fingerprint,
)
from mlm_pretraining.data.sources import prepare_datasets, read_data
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.errors import InputError
from scripts import prepare_corpus


def prepare(model, corpus, out, *extra) -> dict:
    return prepare_corpus.main(["--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir",
                                str(out), "--max_seq_length", "32", *extra])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    return write_season_corpus(
        tmp_path_factory.mktemp("prepared-data"),
        second="he unable released {i} new album , which became known happily in the world during the war .")


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, text_file, tmp_path_factory) -> Path:
    """The text prepared with word ids by 2 processes into shards of ~6 KB (several shards)."""
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    prepare(tiny_model_dir, text_file, out, "--whole_word_mask", "--preprocessing_num_workers", "2",
            "--max_shard_mb", "0.006")
    return out


def in_memory(text_file, tokenizer, length=32, **options):
    args = DataArguments(train_file=[str(text_file)], validation_split_percentage=0, preprocessing_num_workers=1,
                         line_by_line=options.pop("line_by_line", False))
    return prepare_datasets(read_corpus(args), tokenizer, args, length, **options)["train"]


def test_prepared_blocks_equal_in_memory_packing(prepared, text_file, tiny_tokenizer):
    metadata = json.loads((prepared / METADATA_FILE).read_text())
    assert len(metadata["shards"]) > 2 and metadata["workers"] == 2
    assert metadata["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tiny_tokenizer)
    assert (metadata["max_seq_length"], metadata["whole_word_mask"], metadata["line_by_line"]) == (32, True, False)
    for shard in metadata["shards"]:
        assert (prepared / shard["file"]).stat().st_size == shard["bytes"]
    # The tiny BERT vocabulary splits Chinese into characters, so --chinese_word_segmentation auto is on.
    loaded = load_prepared(str(prepared), tiny_tokenizer, 32, whole_word_mask=True, segment_chinese=True)
    expected = in_memory(text_file, tiny_tokenizer, whole_word_mask=True)
    assert len(loaded) == len(expected) == metadata["num_blocks"] == sum(s["rows"] for s in metadata["shards"])
    assert loaded.features == expected.features
    assert np.array_equal(np.array(loaded["input_ids"]), np.array(expected["input_ids"]))
    assert np.array_equal(np.array(loaded["word_ids"]), np.array(expected["word_ids"]))
    assert loaded.cache_files  # memory-mapped from the shards, not copied into memory
    without_words = load_prepared(str(prepared), tiny_tokenizer, 32)  # word ids unused without --whole_word_mask
    assert without_words.column_names == ["input_ids"]


def test_prepared_lines_equal_in_memory_lines(tiny_model_dir, text_file, tiny_tokenizer, tmp_path):
    prepare(tiny_model_dir, text_file, tmp_path / "lines", "--line_by_line", "--preprocessing_num_workers", "1",
            "--max_seq_length", "16")
    loaded = load_prepared(str(tmp_path / "lines"), tiny_tokenizer, 16, line_by_line=True)
    expected = in_memory(text_file, tiny_tokenizer, 16, line_by_line=True)
    assert loaded.features == expected.features
    assert loaded.to_dict() == expected.to_dict()
    assert max(loaded["untruncated_length"]) > 16 == max(loaded["length"])  # truncated, full length kept


def run_flags(model, out, **data) -> list[str]:
    args = {"model_name_or_path": model, "output_dir": out, "max_steps": 5, "per_device_train_batch_size": 8,
            "logging_steps": 1, "save_strategy": "no", "max_eval_samples": 8, "report_to": "none", "use_cpu": True,
            "preprocessing_num_workers": 1, "disable_tqdm": True, "whole_word_mask": True, **data}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_training_from_the_prepared_folder_equals_training_from_text(prepared, tiny_model_dir, text_file, tmp_path):
    """Same blocks, same sampler order, same masks: the same loss at every step, the same weights."""
    from_text = run_mlm.main(run_flags(tiny_model_dir, tmp_path / "text", train_file=text_file,
                                       validation_file=text_file, max_seq_length=32))
    from_folder = run_mlm.main(run_flags(tiny_model_dir, tmp_path / "folder", tokenized_dataset=prepared,
                                         validation_file=text_file))  # --max_seq_length from the folder
    assert len(losses(tmp_path / "text")) == 5
    assert losses(tmp_path / "folder") == pytest.approx(losses(tmp_path / "text"), abs=1e-6)
    assert from_folder["eval_loss"] == pytest.approx(from_text["eval_loss"], abs=1e-6)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("text", "folder"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    report = json.loads((tmp_path / "folder" / "corpus_report.json").read_text())
    assert report["splits"]["train"] == {"prepared": str(prepared), "examples": 92}
    assert "The train text was prepared beforehand (`--tokenized_dataset`): 92 examples." in \
        (tmp_path / "folder" / "README.md").read_text()


def test_another_tokenizer_is_refused(prepared, tiny_model_dir, text_file, tmp_path, run):
    cased = tmp_path / "cased"
    shutil.copytree(tiny_model_dir, cased)
    config = json.loads((cased / "tokenizer_config.json").read_text())
    config["do_lower_case"] = False  # the same vocabulary, cut differently
    (cased / "tokenizer_config.json").write_text(json.dumps(config))
    error = run(["--tokenized_dataset", str(prepared), "--whole_word_mask"],
                r"--tokenized_dataset '.*' was prepared with the tokenizer of .*tiny-bert.* "
                r"\(fingerprint [0-9a-f]{16}, \d+ tokens\); this run's tokenizer .* gives other token ids\. Prepare the corpus again with this "
                r"run's --model_name_or_path", before_model=False, model=cased)
    assert str(cased) in str(error)
    words = tmp_path / "words.txt"
    words.write_text("believably\n")  # two pieces before, one token after
    run(["--tokenized_dataset", str(prepared), "--add_tokens", str(words)],
        r"was prepared with the tokenizer of .* \d+ tokens\); this run's tokenizer .* (\d+ tokens)", before_model=False)


def test_another_block_length_line_by_line_or_whole_word_setting_is_refused(prepared, tiny_model_dir, text_file,
                                                                            tmp_path, run):
    def read(*flags):
        _, data_args, mask_args, *_ = parse_args(["--output_dir", str(tmp_path / "out"),
                                                  "--tokenized_dataset", str(prepared), *flags])
        read_data(data_args, mask_args.whole_word_mask)
        return data_args

    assert read().max_seq_length == 32  # the folder's block length
    # Refused before the model loads (run_mlm.main, the model loader replaced by one that fails the test).
    run(["--tokenized_dataset", str(prepared), "--max_seq_length", "64"],
        r"--tokenized_dataset '.*' holds blocks of 32 tokens, this run's --max_seq_length is 64\. Drop "
        r"--max_seq_length .* or prepare the corpus again with --max_seq_length 64")
    run(["--tokenized_dataset", str(prepared), "--line_by_line"],
        r"was prepared without --line_by_line, this run is with it")
    with pytest.raises(InputError, match=r"--tokenized_dataset is the training data, already tokenized .*; drop "
                                         r"--train_file and --streaming"):
        read("--train_file", str(text_file), "--streaming")
    plain = tmp_path / "plain"
    prepare(tiny_model_dir, text_file, plain, "--preprocessing_num_workers", "1")
    run(["--tokenized_dataset", str(plain), "--whole_word_mask"],
        r"--tokenized_dataset '.*plain' was prepared without --whole_word_mask, so it holds no word ids .* Prepare "
        r"the corpus again with --whole_word_mask, or drop --whole_word_mask")


def test_a_truncated_or_missing_shard_or_metadata_is_named(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "data-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])

    def read():
        read_data(DataArguments(tokenized_dataset=str(copy)))

    with pytest.raises(InputError, match=rf"--tokenized_dataset '{copy}': shard {shard} has \d+ bytes, "
                                         rf"{METADATA_FILE} says \d+: it is truncated or was changed"):
        read()
    shard.unlink()
    with pytest.raises(InputError, match=rf"shard {shard} is missing \(\d+ shards are listed in {METADATA_FILE}\)"):
        read()
    (copy / METADATA_FILE).unlink()
    with pytest.raises(InputError, match=rf"holds no {METADATA_FILE}: it was not written by "
                                         r"scripts/prepare_corpus.py, or the preparation did not finish"):
        read()


def test_prepare_corpus_refuses_nsp_and_an_occupied_folder(prepared, tiny_model_dir, text_file):
    with pytest.raises(InputError, match=r"scripts/prepare_corpus.py cannot be combined with --nsp: half of the NSP "
                                         r"pairs take their second segment from a random other document"):
        prepare(tiny_model_dir, text_file, prepared.parent / "nsp", "--nsp")
    with pytest.raises(InputError, match=r"already holds a prepared corpus .* pass --overwrite_output_dir"):
        prepare(tiny_model_dir, text_file, prepared)
