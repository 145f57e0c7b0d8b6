"""Sentence pairs for next-sentence prediction: tokenized documents → ``[CLS] A [SEP] B [SEP]`` examples.

Each document's token stream is walked from the start. A pair takes up to a full sequence of tokens: A is cut at
a line start inside that span when there is one (else at a random token), and B is, with probability 1/2, the
tokens that truly follow A (``next_sentence_label`` 0) or, otherwise, as many tokens from a random place in
another document (label 1). After a random B the walk resumes right after A, so no text is skipped. Pairs are
drawn once, with a seed, like BERT's ``create_pretraining_data.py`` with ``dupe_factor`` 1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from mlm_pretraining.data.whole_word import dense_word_ids
from mlm_pretraining.errors import InputError

IS_RANDOM_NEXT = 1  # BertForPreTraining: next_sentence_label 0 = B continues A, 1 = B is from elsewhere


def flat_column(table: pa.Table, name: str) -> np.ndarray:
    """All values of a list column, concatenated, as int64."""
    return pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False).astype(np.int64)


def text_lengths(table: pa.Table) -> np.ndarray:
    """Tokens per text (row)."""
    return pc.fill_null(pc.list_value_length(table.column("input_ids")), 0).to_numpy().astype(np.int64)


def global_word_ids(table: pa.Table) -> np.ndarray:
    """The rows' word ids, flattened and renumbered so that words of different texts never share an id."""
    words = flat_column(table, "word_ids")
    text_start = np.zeros(len(words), dtype=bool)
    starts = np.cumsum(text_lengths(table))[:-1]
    text_start[starts[starts < len(words)]] = True
    if len(words):
        text_start[0] = True
    previous = np.concatenate([[-1], words[:-1]])
    new_word = (words >= 0) & ((words != previous) | text_start)
    return np.where(words >= 0, np.cumsum(new_word) - 1, -1)


def _documents(table: pa.Table) -> list[tuple[int, int, np.ndarray]]:
    """(start, end, line starts) of each document in the flat token stream; documents of < 2 tokens left out."""
    lengths = text_lengths(table)
    text_start = np.concatenate([[0], np.cumsum(lengths)])
    document = table.column("document_id").to_numpy()
    first_texts = np.flatnonzero(np.concatenate([[True], document[1:] != document[:-1]])) if len(document) else []
    bounds = list(first_texts) + [len(document)]
    docs = []
    for first, stop in zip(bounds[:-1], bounds[1:]):
        start, end = text_start[first], text_start[stop]
        if end - start >= 2:
            lines = np.unique(text_start[first:stop])
            docs.append((int(start), int(end), lines[lines < end]))
    return docs


def _random_segment(docs, exclude: int, length: int, rng) -> tuple[int, int]:
    """``length`` tokens (fewer if the document is shorter) from a random place in a document other than ``exclude``."""
    other = int(rng.integers(len(docs) - 1))
    other += other >= exclude
    start, end, lines = docs[other]
    if len(lines) > 1:  # start at a line, as a true B cut at a line does
        fitting = lines[lines + length <= end]
        begin = int(rng.choice(fitting)) if len(fitting) else start
    else:
        begin = int(rng.integers(start, max(start, end - length) + 1))
    return begin, min(begin + length, end)


def build_pairs(tokenized: Dataset, max_seq_length: int, prefix: list[int], suffix: list[int], seed: int,
                split: str = "train") -> Dataset:
    """Turn tokenized texts with a ``document_id`` column into NSP examples of at most ``max_seq_length`` tokens.

    Columns out: ``input_ids``, ``token_type_ids`` (0 for ``prefix A suffix``, 1 for ``B suffix``),
    ``next_sentence_label``, and ``word_ids`` when the input has them (-1 on special tokens).
    """
    table = tokenized.flatten_indices().data.table
    ids = flat_column(table, "input_ids")
    words = global_word_ids(table) if "word_ids" in table.column_names else None
    docs = _documents(table)
    if len(docs) < 2:
        raise InputError(
            f"--nsp needs at least two documents in the {split} text, found {len(docs)}: separate documents by "
            "blank lines in .txt files, or give one document per row in .csv/.json files."
        )
    budget = max_seq_length - len(prefix) - 2 * len(suffix)
    rng = np.random.default_rng(seed)
    spans, labels = [], []  # (a_start, a_end, b_start, b_end) per pair
    for d, (start, end, lines) in enumerate(docs):
        pos = start
        while end - pos >= 2:
            chunk = min(budget, end - pos)
            is_random = rng.random() < 0.5
            cuts = lines[np.searchsorted(lines, pos, "right") : np.searchsorted(lines, pos + chunk, "left")]
            a_end = int(rng.choice(cuts)) if len(cuts) else pos + int(rng.integers(1, chunk))
            if is_random:
                b_start, b_end = _random_segment(docs, d, pos + chunk - a_end, rng)
                spans.append((pos, a_end, b_start, b_end))
                pos = a_end
            else:
                spans.append((pos, a_end, a_end, pos + chunk))
                pos += chunk
            labels.append(IS_RANDOM_NEXT if is_random else 1 - IS_RANDOM_NEXT)

    n_prefix, n_suffix = len(prefix), len(suffix)
    rows_ids, rows_types, rows_words = [], [], []
    for a_start, a_end, b_start, b_end in spans:
        rows_ids.append(np.concatenate([prefix, ids[a_start:a_end], suffix, ids[b_start:b_end], suffix]))
        n_first = n_prefix + a_end - a_start + n_suffix
        rows_types.append(np.repeat([0, 1], [n_first, b_end - b_start + n_suffix]))
        if words is not None:
            row = np.concatenate([np.full(n_prefix, -1), words[a_start:a_end], np.full(n_suffix, -1),
                                  words[b_start:b_end], np.full(n_suffix, -1)])
            rows_words.append(dense_word_ids(row))
    columns = {"input_ids": _list_array(rows_ids), "token_type_ids": _list_array(rows_types),
               "next_sentence_label": pa.array(labels, pa.int64())}
    if words is not None:
        columns["word_ids"] = _list_array(rows_words)
    return Dataset(pa.table(columns))


def _list_array(rows: list[np.ndarray]) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    values = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
