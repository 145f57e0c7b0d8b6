"""Whole-word masking: word ids from fast tokenizers (WordPiece, byte-level BPE, SentencePiece) and Chinese words
from the segmenter, carried through packing and --line_by_line, and masked whole by MLMCollator."""

from __future__ import annotations

import csv
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, build_model
from datasets import Dataset, DatasetDict

from arguments import DataArguments, MaskingArguments
from collators import MLMCollator
from mlm_pretraining.data.packing import pack, special_token_template, tokenize
from mlm_pretraining.data.sources import prepare_datasets
from mlm_pretraining.data.whole_word import (
    CJK_CHAR,
    check_tokenizer,
    chinese_segmenter,
    encode_with_word_ids,
    splits_chinese_characters,
    use_chinese_segmentation,
)
from mlm_pretraining.errors import InputError

CHINESE = SHARED_DATA / "chinese"
needs_chinese = pytest.mark.skipif(not (CHINESE / "bert-base-chinese-vocab.txt").exists(),
                                   reason="../shared/data/chinese is not here")
MULTI_PIECE = ["happily", "unable", "seasons", "played", "believably", "bands", "cities"]
SINGLE = "the city park was known for music and band first song of year he released new album in world war".split()


def english_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(MULTI_PIECE + SINGLE) for _ in range(rng.randint(4, 18))) + " ." for _ in range(n)]


def data_args(**kwargs) -> DataArguments:
    return DataArguments(preprocessing_num_workers=1, **kwargs)


def masked_words(collator, features, mask_token_id, rounds: int):
    """Collate ``rounds`` times; check every word is all-chosen or all-unchosen and every chosen word gets one
    action (all pieces [MASK], or none). Return (chosen words, words, chosen multi-piece words, all-[MASK] words,
    expected chosen words), the last from the rate plus the one word every row gets when none was drawn."""
    chosen = total = chosen_multi = all_mask = 0
    expected = 0.0
    p = collator.mlm_probability
    for _ in range(rounds):
        batch = collator(features)
        labels, inputs = batch["labels"], batch["input_ids"]
        words = torch.full_like(labels, -1)
        for row, f in enumerate(features):
            ids = torch.as_tensor(np.asarray(f["input_ids"]))
            # [UNK] (special) is never a target, so a word's pieces are its other tokens: 酒[UNK] is 酒.
            words[row, : len(ids)] = torch.as_tensor(np.asarray(f["word_ids"])).masked_fill(
                torch.isin(ids, collator.special_ids), -1)
        assert (labels[words < 0] == -100).all(), "a token outside every word was chosen"
        valid = words >= 0
        # One bin per (row, word): how many pieces, how many chosen, how many became [MASK].
        key = (words + torch.arange(len(features))[:, None] * words.shape[1])[valid]
        size = torch.bincount(key, minlength=words.numel())
        picked = torch.bincount(key, weights=(labels != -100)[valid].double(), minlength=words.numel()).long()
        masked = torch.bincount(key, weights=(inputs == mask_token_id)[valid].double(), minlength=words.numel())
        exists = size > 0
        per_row = exists.view(len(features), -1).sum(dim=1).double()
        expected += float((per_row * p + (per_row > 0) * (1 - p) ** per_row).sum())
        assert not ((picked > 0) & (picked < size)).any(), "a word was split: some pieces chosen, others not"
        is_chosen = exists & (picked == size)
        assert ((masked[is_chosen] == 0) | (masked[is_chosen] == size[is_chosen])).all(), "80/10/10 per piece"
        total += int(exists.sum())
        chosen += int(is_chosen.sum())
        chosen_multi += int((is_chosen & (size > 1)).sum())
        all_mask += int((is_chosen & (masked == size)).sum())
    return chosen, total, chosen_multi, all_mask, expected


# ---------------------------------------------------------------- word ids from the tokenizer


def test_wordpiece_pieces_share_a_word_id(tiny_tokenizer):
    encoded = encode_with_word_ids(tiny_tokenizer, ["the happily played bands ."])
    tokens = tiny_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens == ["[CLS]", "the", "happ", "##ily", "played", "band", "##s", ".", "[SEP]"]
    assert encoded["word_ids"][0] == [-1, 0, 1, 1, 2, 3, 3, 4, -1]


def _train_tokenizer(kind: str, texts: list[str]):
    from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    model, vocab_size = (ByteLevelBPETokenizer, 300) if kind == "bpe" else (SentencePieceBPETokenizer, 60)
    trained = model()
    trained.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                special_tokens=["<pad>", "<s>", "</s>", "<mask>", "<unk>"])
    return PreTrainedTokenizerFast(tokenizer_object=trained._tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", mask_token="<mask>", unk_token="<unk>")


@pytest.mark.parametrize("kind,marker", [("bpe", "Ġ"), ("sentencepiece", "▁")])
def test_bpe_and_sentencepiece_words_are_whitespace_words(kind, marker):
    texts = english_texts(200)
    tokenizer = _train_tokenizer(kind, texts)
    encoded = encode_with_word_ids(tokenizer, texts[:50], add_special_tokens=False)
    split_words = 0
    for text, ids, words in zip(texts, encoded["input_ids"], encoded["word_ids"]):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        pieces: dict[int, list[str]] = {}
        for token, w in zip(tokens, words):
            pieces.setdefault(w, []).append(token)
        assert ["".join(p).replace(marker, "") for p in pieces.values()] == text.split()
        split_words += sum(len(p) > 1 for p in pieces.values())
    assert split_words > 20  # the small vocabularies really cut words into pieces


def test_whole_word_mask_needs_a_fast_tokenizer():
    with pytest.raises(InputError, match="--whole_word_mask needs a fast tokenizer"):
        check_tokenizer(SimpleNamespace(is_fast=False))


# ---------------------------------------------------------------- packing and line by line


def test_packed_word_ids_follow_the_tokenizer_words_across_blocks(tiny_tokenizer):
    texts = english_texts(40, seed=1)
    raw = DatasetDict(train=Dataset.from_dict({"text": texts}))
    tokenized = tokenize(raw, tiny_tokenizer, data_args(), 16, word_ids=True)["train"]
    prefix, suffix = special_token_template(tiny_tokenizer)
    packed = pack(tokenized, 16, prefix, suffix)
    # The expected word of every token in the stream: (text, word), separators none.
    stream_ids, stream_words = [], []
    for t, text in enumerate(texts):
        enc = tiny_tokenizer(text, add_special_tokens=False)
        stream_ids += enc["input_ids"] + [tiny_tokenizer.sep_token_id]
        stream_words += [(t, w) for w in enc.word_ids()] + [None]
    body = 16 - len(prefix) - len(suffix)
    cut_words = 0
    for b, row in enumerate(packed):
        ids, words = np.asarray(row["input_ids"]), np.asarray(row["word_ids"])
        expected = stream_words[b * body : (b + 1) * body]
        assert ids[1:-1].tolist() == stream_ids[b * body : (b + 1) * body]
        assert words[0] == words[-1] == -1 and words.max() < 16
        for i in range(body):
            for j in range(body):
                same = words[1 + i] >= 0 and words[1 + i] == words[1 + j]
                assert same == (expected[i] is not None and expected[i] == expected[j])
        cut_words += expected[0] is not None and b > 0 and stream_words[b * body - 1] == expected[0]
    assert cut_words > 0  # some word was cut by a block boundary and became two units, one per block


def test_line_by_line_word_ids_mark_special_tokens(tiny_tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"text": ["the happily played bands .", "unable seasons"]}))
    out = prepare_datasets(raw, tiny_tokenizer, data_args(line_by_line=True), 16, whole_word_mask=True)["train"]
    assert out[0]["word_ids"] == [-1, 0, 1, 1, 2, 3, 3, 4, -1]
    assert out[1]["word_ids"] == [-1, 0, 0, 1, 1, -1]


@pytest.mark.parametrize("line_by_line", [False, True])
def test_collator_never_splits_a_word_and_keeps_the_word_rate(tiny_tokenizer, line_by_line):
    raw = DatasetDict(train=Dataset.from_dict({"text": english_texts(400, seed=2)}))
    features = list(prepare_datasets(raw, tiny_tokenizer, data_args(line_by_line=line_by_line), 32,
                                     whole_word_mask=True)["train"])
    torch.manual_seed(0)
    collator = MLMCollator(tiny_tokenizer, whole_word_mask=True, pad_to_multiple_of=8)
    chosen, total, chosen_multi, all_mask, expected = masked_words(collator, features,
                                                                   tiny_tokenizer.mask_token_id, 10)
    assert total > 20_000
    # Binomial standard error ~0.0025 of the rate. The expectation is 0.15 plus the one word a row gets when the
    # draw picked none: +0.015 on these short lines, +0.000 on full blocks.
    assert abs(chosen - expected) / total < 0.008, (chosen / total, expected / total)
    assert abs(chosen / total - 0.15) < (0.02 if line_by_line else 0.008)
    assert chosen_multi > 500
    assert abs(all_mask / chosen - 0.8) < 0.03
    batch = collator(features[:4])
    assert "attention_mask" in batch and "word_ids" not in batch


def test_the_check_catches_token_level_masking(tiny_tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"text": english_texts(100)}))
    features = list(prepare_datasets(raw, tiny_tokenizer, data_args(), 32, whole_word_mask=True)["train"])
    with pytest.raises(AssertionError, match="split"):
        masked_words(MLMCollator(tiny_tokenizer), features, tiny_tokenizer.mask_token_id, 2)


def test_fixed_eval_masks_with_whole_words(tiny_tokenizer):
    raw = DatasetDict(train=Dataset.from_dict({"text": english_texts(50, seed=3)}))
    features = list(prepare_datasets(raw, tiny_tokenizer, data_args(line_by_line=True), 32,
                                     whole_word_mask=True)["train"])
    collator = MLMCollator(tiny_tokenizer, whole_word_mask=True, seed=7)
    together = collator(features[:8])
    alone = collator(features[3:4])
    n = len(features[3]["input_ids"])
    assert torch.equal(together["labels"][3, :n], alone["labels"][0, :n])
    assert torch.equal(collator(features[:8])["input_ids"], together["input_ids"])
    assert masked_words(collator, features[:8], tiny_tokenizer.mask_token_id, 1)[0] > 0


# ---------------------------------------------------------------- Chinese


@pytest.fixture(scope="module")
def chinese_tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("bert-chinese")
    tokenizer = BertTokenizer(vocab=str(CHINESE / "bert-base-chinese-vocab.txt"), do_lower_case=False,
                              model_max_length=512)
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    with open(CHINESE / "ChnSentiCorp_htl_all.csv", encoding="utf-8-sig") as handle:
        return [row["review"] for row in csv.DictReader(handle) if row["review"]][:300]


def test_chinese_segmentation_is_detected(chinese_tokenizer, tiny_tokenizer):
    assert chinese_segmenter() is not None
    assert splits_chinese_characters(chinese_tokenizer)
    assert use_chinese_segmentation(chinese_tokenizer, "auto")
    assert not use_chinese_segmentation(chinese_tokenizer, "off")
    sentencepiece = _train_tokenizer("sentencepiece", ["酒店的服务很好 房间很大"] * 5)
    assert not use_chinese_segmentation(sentencepiece, "auto")
    with pytest.raises(InputError, match="--chinese_word_segmentation on"):
        use_chinese_segmentation(sentencepiece, "on")


@needs_chinese
def test_chinese_word_ids_are_the_segmenter_words(chinese_tokenizer):
    text = "酒店的服务很好，房间很大，wifi速度不错。"
    words = chinese_segmenter()(text)
    encoded = encode_with_word_ids(chinese_tokenizer, [text], add_special_tokens=False, segment_chinese=True)
    tokens = chinese_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    units: dict[int, str] = {}
    for token, w in zip(tokens, encoded["word_ids"][0]):
        units[w] = units.get(w, "") + token.replace("##", "")
    assert list(units.values()) == words  # 酒店 / 的 / 服务 / ... each one unit; wifi stays one word
    assert "酒店" in words and "服务" in words
    plain = encode_with_word_ids(chinese_tokenizer, [text], add_special_tokens=False)
    assert len(set(plain["word_ids"][0])) > len(units)  # without the segmenter every character is a word


@needs_chinese
def test_chinese_masks_align_with_segmenter_words(chinese_tokenizer, reviews):
    segment = chinese_segmenter()
    raw = DatasetDict(train=Dataset.from_dict({"text": reviews}))
    features = list(prepare_datasets(raw, chinese_tokenizer, data_args(line_by_line=True), 128,
                                     whole_word_mask=True)["train"])
    torch.manual_seed(0)
    collator = MLMCollator(chinese_tokenizer, whole_word_mask=True)
    chosen, total, chosen_multi, _, expected = masked_words(collator, features, chinese_tokenizer.mask_token_id, 4)
    assert abs(chosen - expected) / total < 0.008 and chosen_multi > 1000
    # Each text's Chinese units are exactly its segmenter words (inside the truncated part).
    checked = 0
    for text, feature in zip(reviews, features):
        enc = chinese_tokenizer(text, truncation=True, max_length=128, return_offsets_mapping=True)
        units: dict[int, tuple[int, int]] = {}
        for w, (start, end) in zip(feature["word_ids"], enc["offset_mapping"]):
            if w >= 0:
                units[w] = (units[w][0], end) if w in units else (start, end)
        covered = enc["offset_mapping"][-2][1]
        spans, pos = [], 0
        for word in segment(text):
            spans.append((pos, pos + len(word), word))
            pos += len(word)
        for start, end, word in spans:
            if end <= covered and all(CJK_CHAR.match(c) for c in word):
                assert (start, end) in units.values(), f"{word!r} is not one unit in {text[:40]!r}"
                checked += 1
    assert checked > 5000


@needs_chinese
def test_chinese_word_ids_are_cached_by_datasets(chinese_tokenizer, tmp_path, reviews):
    from datasets import load_dataset

    path = tmp_path / "reviews.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "review"])
        writer.writerows([1, r] for r in reviews[:40])
    raw = load_dataset("csv", data_files={"train": str(path)}, cache_dir=str(tmp_path / "cache"))
    raw = DatasetDict(train=raw["train"].rename_column("review", "text").remove_columns("label"))
    first = tokenize(raw, chinese_tokenizer, data_args(), 128, word_ids=True, segment_chinese=True)["train"]
    second = tokenize(raw, chinese_tokenizer, data_args(), 128, word_ids=True, segment_chinese=True)["train"]
    assert first.cache_files and first.cache_files == second.cache_files
    plain = tokenize(raw, chinese_tokenizer, data_args(), 128, word_ids=True)["train"]
    assert plain.cache_files != first.cache_files


# ---------------------------------------------------------------- arguments and end to end


def test_masking_argument_validation():
    with pytest.raises(InputError, match="--chinese_word_segmentation must be one of auto, on, off"):
        MaskingArguments(whole_word_mask=True, chinese_word_segmentation="jieba")
    with pytest.raises(InputError, match="only matters with --whole_word_mask"):
        MaskingArguments(chinese_word_segmentation="on")
    assert MaskingArguments(whole_word_mask=True).chinese_word_segmentation == "auto"


def _run(model_dir, train_file, output_dir, *extra):
    import run_mlm

    return run_mlm.main([
        "--model_name_or_path", str(model_dir), "--train_file", str(train_file), "--output_dir", str(output_dir),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--report_to", "none", "--preprocessing_num_workers", "1", "--log_level", "warning",
        "--dataloader_num_workers", "0", *extra,
    ])


@pytest.mark.slow
def test_run_mlm_whole_word_mask(tiny_model_dir, corpus, tmp_path):
    results = _run(tiny_model_dir, corpus, tmp_path / "out", "--whole_word_mask", "--max_seq_length", "32")
    assert math.isfinite(results["eval_perplexity"])
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))


@needs_chinese
@pytest.mark.slow
def test_run_mlm_whole_word_mask_on_chinese_reviews(chinese_tokenizer, tmp_path, reviews):
    model_dir = tmp_path / "tiny-chinese"
    chinese_tokenizer.save_pretrained(model_dir)
    build_model(model_dir, chinese_tokenizer)
    path = tmp_path / "reviews.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "review"])
        writer.writerows([1, r] for r in reviews[:200])
    results = _run(model_dir, path, tmp_path / "out", "--whole_word_mask", "--max_seq_length", "64")
    assert math.isfinite(results["eval_perplexity"]) and results["eval_masked_tokens"] > 20
