"""mlm_pretraining/sentence_pairs.py and --nsp: document ids, pair building, the model class check, and an
end-to-end run (the NSP metrics: test_metrics.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from arguments import DataArguments, ModelArguments
from collators import MLMCollator
from mlm_pretraining.data.sentence_pairs import build_pairs
from mlm_pretraining.data.sources import prepare_datasets
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.errors import InputError
from mlm_pretraining.model.loading import model_class_for

CLS, SEP = 2, 3
OFFSET = 100  # synthetic token ids: OFFSET + position in the flat stream, so every token says where it came from


def synthetic_documents(n_docs: int, seed: int = 0, lines_per_doc=(1, 1)):
    """Tokenized texts with a document_id; token id = OFFSET + its position in the whole stream."""
    rng = np.random.default_rng(seed)
    rows, docs, pos = [], [], 0
    for d in range(n_docs):
        for _ in range(rng.integers(lines_per_doc[0], lines_per_doc[1] + 1)):
            n = int(rng.integers(3, 60))
            rows.append(list(range(OFFSET + pos, OFFSET + pos + n)))
            docs.append(d)
            pos += n
    return Dataset.from_dict({"input_ids": rows, "document_id": docs})


def doc_of_token(tokenized: Dataset) -> dict[int, int]:
    return {t: d for ids, d in zip(tokenized["input_ids"], tokenized["document_id"]) for t in ids}


def split_pair(ids: list[int], types: list[int]):
    assert ids[0] == CLS and ids[-1] == SEP
    first_sep = ids.index(SEP)
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    return ids[1:first_sep], ids[first_sep + 1 : -1]


def test_pairs_are_balanced_and_true_pairs_consecutive():
    tokenized = synthetic_documents(400)
    pairs = build_pairs(tokenized, 64, [CLS], [SEP], seed=0)
    doc = doc_of_token(tokenized)
    labels = np.asarray(pairs["next_sentence_label"])
    assert len(pairs) > 300
    assert abs(labels.mean() - 0.5) < 0.03
    covered = set()
    for ids, types, label in zip(pairs["input_ids"], pairs["token_type_ids"], labels):
        assert len(ids) <= 64
        a, b = split_pair(ids, types)
        assert a and b
        assert a == list(range(a[0], a[0] + len(a))) and b == list(range(b[0], b[0] + len(b)))  # contiguous
        covered.update(a)
        if label == 0:
            assert b[0] == a[-1] + 1 and doc[b[0]] == doc[a[-1]] == doc[b[-1]]  # B truly follows A
            covered.update(b)
        else:
            assert doc[b[0]] != doc[a[0]] and doc[b[0]] == doc[b[-1]]  # B from one other document
    # No text is skipped: every token is in some A or true B, except a document's lone last token.
    missing = set(doc) - covered
    last_tokens = {max(t for t in doc if doc[t] == d) for d in set(doc.values())}
    assert missing <= last_tokens


def test_a_is_cut_at_a_line_start_when_there_is_one():
    tokenized = synthetic_documents(60, lines_per_doc=(2, 5))
    line_starts = {ids[0] for ids in tokenized["input_ids"]}
    pairs = build_pairs(tokenized, 128, [CLS], [SEP], seed=1)
    checked = 0
    for ids, types, label in zip(pairs["input_ids"], pairs["token_type_ids"], pairs["next_sentence_label"]):
        a, b = split_pair(ids, types)
        if label == 0 and line_starts & set(range(a[0] + 1, b[-1] + 1)):
            assert b[0] in line_starts, "A was cut inside a line although a line started within the pair"
            checked += 1
        if label == 1:
            assert b[0] in line_starts, "a random B from a document of several lines should start at a line"
    assert checked > 20


def test_pairs_are_seeded():
    tokenized = synthetic_documents(50)
    first = build_pairs(tokenized, 64, [CLS], [SEP], seed=3)
    assert first["input_ids"] == build_pairs(tokenized, 64, [CLS], [SEP], seed=3)["input_ids"]
    assert first["input_ids"] != build_pairs(tokenized, 64, [CLS], [SEP], seed=4)["input_ids"]


def test_one_document_is_an_error():
    with pytest.raises(InputError, match="--nsp needs at least two documents in the train text, found 1"):
        build_pairs(synthetic_documents(1), 64, [CLS], [SEP], seed=0)


def test_word_ids_go_through_pairs():
    tokenized = synthetic_documents(30).map(lambda r: {"word_ids": [i // 2 for i in range(len(r["input_ids"]))]})
    source = {t: (row, i // 2) for row, ids in enumerate(tokenized["input_ids"]) for i, t in enumerate(ids)}
    pairs = build_pairs(tokenized, 64, [CLS], [SEP], seed=0)
    for ids, types, words in zip(pairs["input_ids"], pairs["token_type_ids"], pairs["word_ids"]):
        assert all(w == -1 for t, w in zip(ids, words) if t in (CLS, SEP)) and max(words) < len(ids)
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                same_unit = words[i] >= 0 and words[i] == words[j]
                same_word = ids[i] in source and source.get(ids[i]) == source.get(ids[j]) and types[i] == types[j]
                assert same_unit == same_word  # a word cut between A and B becomes two units


def test_document_ids_from_blank_lines_and_rows(tmp_path):
    txt = tmp_path / "docs.txt"
    txt.write_text("a b c\nd e\n\n \nf g\n\nh\ni\n", encoding="utf-8")
    raw = read_corpus(DataArguments(train_file=[str(txt)], validation_split_percentage=0, nsp=True))
    assert raw["train"]["text"] == ["a b c", "d e", "f g", "h", "i"]
    ids = raw["train"]["document_id"]
    assert ids[0] == ids[1] != ids[2] != ids[3] == ids[4] and len(set(ids)) == 3
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ["one doc", "two doc", "three"]), encoding="utf-8")
    raw = read_corpus(DataArguments(train_file=[str(jsonl)], validation_split_percentage=0, nsp=True))
    assert raw["train"]["document_id"] == [0, 1, 2]
    plain = read_corpus(DataArguments(train_file=[str(txt)], validation_split_percentage=0))
    assert plain["train"].column_names == ["text"]


def test_prepare_datasets_builds_pairs_from_a_text_file(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, nsp=True,
                         preprocessing_num_workers=1)
    pairs = prepare_datasets(read_corpus(args), tiny_tokenizer, args, 32)["train"]
    assert set(pairs.column_names) == {"input_ids", "token_type_ids", "next_sentence_label"}
    labels = np.asarray(pairs["next_sentence_label"])
    assert 0.35 < labels.mean() < 0.65
    assert max(len(ids) for ids in pairs["input_ids"]) == 32
    batch = MLMCollator(tiny_tokenizer, seed=0)(list(pairs.select(range(8))))
    assert batch["token_type_ids"].shape == batch["input_ids"].shape and batch["token_type_ids"].max() == 1
    assert batch["next_sentence_label"].tolist() == labels[:8].tolist()
    # The [SEP] between A and B is never chosen for masking.
    sep = torch.as_tensor([p for p in pairs.select(range(8))["input_ids"][0]]) == tiny_tokenizer.sep_token_id
    assert (batch["labels"][0][: len(sep)][sep] == -100).all()


def test_nsp_and_line_by_line_conflict():
    with pytest.raises(InputError, match="--nsp .* cannot be combined with --line_by_line"):
        DataArguments(nsp=True, line_by_line=True)


def test_model_without_nsp_head_is_an_error(tmp_path, tiny_model_dir):
    from transformers import BertForPreTraining, DistilBertConfig, RobertaConfig

    assert model_class_for(ModelArguments(model_name_or_path=str(tiny_model_dir)), nsp=True) is BertForPreTraining
    for config in (RobertaConfig(), DistilBertConfig()):
        folder = tmp_path / config.model_type
        config.save_pretrained(folder)
        with pytest.raises(InputError, match=f"--nsp needs a model with a next-sentence-prediction head, and "
                                             f"{config.model_type}"):
            model_class_for(ModelArguments(model_name_or_path=str(folder)), nsp=True)


@pytest.mark.slow
def test_run_mlm_nsp_end_to_end(tiny_model_dir, corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    import run_mlm

    output_dir = tmp_path / "out"
    results = run_mlm.main([
        "--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--output_dir", str(output_dir),
        "--nsp", "--whole_word_mask", "--max_seq_length", "32", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--report_to", "none",
        "--preprocessing_num_workers", "1", "--log_level", "warning",
    ])
    assert "eval_before_nsp_accuracy" in results
    right = results["eval_nsp_accuracy"] * results["eval_samples"]  # a count of right guesses over every pair
    assert right == pytest.approx(round(right), abs=1e-9)
    assert math.isfinite(results["eval_perplexity"])
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_mlm_loss"]))
    assert results["eval_loss"] > results["eval_mlm_loss"] + 0.3  # the NSP loss (about ln 2 untrained) is added
    pretraining = BertForPreTraining.from_pretrained(output_dir).eval()
    masked_lm = AutoModelForMaskedLM.from_pretrained(output_dir).eval()
    assert type(masked_lm).__name__ == "BertForMaskedLM"
    inputs = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        assert torch.allclose(pretraining(inputs).prediction_logits, masked_lm(inputs).logits, atol=1e-5)
