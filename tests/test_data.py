"""Tokenizing and packing that loses no tokens but the final partial block; lines; limits; general text mixed in."""

from __future__ import annotations

import numpy as np

from arguments import DataArguments, parse_args
from collators import MLMCollator
from mlm_pretraining.data.packing import pack, special_token_template, tokenize
from mlm_pretraining.data.sources import mix_in, prepare_datasets
from mlm_pretraining.data.text import read_corpus


def test_packing_loses_nothing_but_the_final_partial_block(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, preprocessing_num_workers=1)
    raw = read_corpus(args)
    stream = [i for ids in tokenize(raw, tiny_tokenizer, args, 32)["train"]["input_ids"] for i in ids]
    prefix, suffix = special_token_template(tiny_tokenizer)
    assert (prefix, suffix) == ([tiny_tokenizer.cls_token_id], [tiny_tokenizer.sep_token_id])
    blocks = np.array(prepare_datasets(raw, tiny_tokenizer, args, 32)["train"]["input_ids"])
    body = 32 - 2
    assert blocks.shape == (len(stream) // body, 32)
    assert (blocks[:, 0] == tiny_tokenizer.cls_token_id).all() and (blocks[:, -1] == tiny_tokenizer.sep_token_id).all()
    assert blocks[:, 1:-1].ravel().tolist() == stream[: len(blocks) * body]
    # every text is followed by a separator inside the stream
    n_texts = len(raw["train"])
    assert stream.count(tiny_tokenizer.sep_token_id) == n_texts


def test_packing_is_exact_on_a_hand_made_stream():
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[10, 11, 12], [13], [14, 15, 16, 17, 18], [19, 20]]})
    blocks = pack(ds, 5, [1], [2])["input_ids"]
    assert blocks == [[1, 10, 11, 12, 2], [1, 13, 14, 15, 2], [1, 16, 17, 18, 2]]  # 19, 20 dropped


def test_line_by_line_keeps_each_text_truncated(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, line_by_line=True,
                         preprocessing_num_workers=1)
    raw = read_corpus(args)
    rows = prepare_datasets(raw, tiny_tokenizer, args, 12)["train"]["input_ids"]
    assert len(rows) == len(raw["train"])
    assert max(len(r) for r in rows) == 12
    assert all(r[0] == tiny_tokenizer.cls_token_id and r[-1] == tiny_tokenizer.sep_token_id for r in rows)
    heading = tiny_tokenizer(raw["train"][0]["text"])["input_ids"]  # " = season 0 = ": short, kept whole
    assert len(heading) < 12 and rows[0] == heading
    long_text = tiny_tokenizer(raw["train"][1]["text"])["input_ids"]
    assert len(long_text) > 12 and rows[1] == long_text[:11] + [tiny_tokenizer.sep_token_id]


def test_max_samples_limit_each_split(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], max_train_samples=3, max_eval_samples=2,
                         preprocessing_num_workers=1)
    processed = prepare_datasets(read_corpus(args), tiny_tokenizer, args, 16)
    assert (len(processed["train"]), len(processed["validation"])) == (3, 2)


def test_tokenization_cache_is_found_again_when_only_unrelated_flags_change(tiny_tokenizer, corpus):
    from dataclasses import replace

    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, preprocessing_num_workers=1,
                         overwrite_cache=True)
    raw = read_corpus(args)
    first = tokenize(raw, tiny_tokenizer, args, 16)["train"]
    again = tokenize(raw, tiny_tokenizer, replace(args, overwrite_cache=False, max_train_samples=3), 16)["train"]
    other = tokenize(raw, tiny_tokenizer, replace(args, overwrite_cache=False, line_by_line=True), 16)["train"]
    assert first.cache_files and again.cache_files == first.cache_files
    assert other.cache_files != first.cache_files  # line by line tokenizes differently: its own entry


def test_mix_in_gives_the_share_keeps_all_training_examples_and_repeats_under_the_seed():
    from datasets import Dataset

    train = Dataset.from_dict({"input_ids": [[i] for i in range(800)]})
    general = Dataset.from_dict({"input_ids": [[10_000 + i] for i in range(1_000)]})
    mixed = mix_in(train, general, 0.2, seed=3)
    ids = [row[0] for row in mixed["input_ids"]]
    assert len(ids) == 1_000 and sorted(i for i in ids if i < 10_000) == list(range(800))  # all of train, once
    picked = [i for i in ids if i >= 10_000]
    assert len(picked) == 200 and len(set(picked)) == 200
    assert picked != sorted(picked)  # a seeded draw from the whole general set, not its first 200 rows
    first_half = sum(i >= 10_000 for i in ids[:500])
    assert 70 <= first_half <= 130  # spread through the data (binomial 100 ± 9), not appended at the end
    assert mix_in(train, general, 0.2, seed=3)["input_ids"] == mixed["input_ids"]
    assert mix_in(train, general, 0.2, seed=4)["input_ids"] != mixed["input_ids"]


def test_mix_in_uses_all_general_examples_when_there_are_too_few():
    from datasets import Dataset

    train = Dataset.from_dict({"input_ids": [[i] for i in range(100)]})
    general = Dataset.from_dict({"input_ids": [[10_000 + i] for i in range(10)]})
    assert len(mix_in(train, general, 0.5, seed=0)) == 110


def test_mix_train_file_goes_through_packing(tiny_tokenizer, corpus, tmp_path):
    general = tmp_path / "general.txt"
    general.write_text("\n".join("the river and the park in the north of the city ." for _ in range(400)))
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, preprocessing_num_workers=1,
                         mix_train_file=[str(general)], mix_share=0.25)
    alone = prepare_datasets(read_corpus(DataArguments(train_file=[str(corpus)], validation_split_percentage=0,
                                                       preprocessing_num_workers=1)), tiny_tokenizer, args, 32)
    processed = prepare_datasets(read_corpus(args), tiny_tokenizer, args, 32)
    n = len(alone["train"])
    assert len(processed["train"]) == n and len(processed["mix"]) > n  # packed alike, mixed by run_mlm.py
    assert len(mix_in(processed["train"], processed["mix"], 0.25, seed=0)) == n + round(n * 0.25 / 0.75)


def test_line_by_line_examples_carry_their_length(tiny_tokenizer, corpus, tmp_path):

    _, data_args, *_ = parse_args(["--output_dir", str(tmp_path), "--train_file", str(corpus), "--line_by_line",
                                     "--preprocessing_num_workers", "1"])
    processed = prepare_datasets(read_corpus(data_args), tiny_tokenizer, data_args, 32)
    train = processed["train"]
    assert train["length"][:20] == [len(ids) for ids in train["input_ids"][:20]]
    assert len(set(train["length"])) > 1
    collated = MLMCollator(tiny_tokenizer, pad_to_multiple_of=8)([train[i] for i in range(5)])
    assert collated["input_ids"].shape[1] % 8 == 0 and "length" not in collated
