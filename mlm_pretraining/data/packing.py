"""Tokenizing and packing, the rules every path shares: texts are tokenized by :func:`encode_texts` and cut into
blocks by :class:`Packer` in memory (:func:`pack`), streamed (streaming.py) and prepared (prepared.py) alike, so the
three give the same blocks."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Sequence, Value

from mlm_pretraining.data.whole_word import dense_word_ids, encode_with_word_ids
from mlm_pretraining.errors import InputError

if TYPE_CHECKING:
    from arguments import DataArguments

def special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text, e.g. ([CLS], [SEP]) or (<s>, </s>)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def text_separator(tokenizer) -> int | None:
    """The id put after each text when texts are packed together: [SEP] (BERT), else </s> (EOS), else none."""
    return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id


def encode_texts(tokenizer, texts: list[str], *, max_seq_length: int, line_by_line: bool = False,
                 separator: int | None = None, word_ids: bool = False, segment_chinese: bool = False) -> dict:
    """Tokenize a batch of texts the way every path does: whole texts with ``separator`` after each (packing), or
    each text truncated to ``max_seq_length`` with its special tokens and its 'length' and 'untruncated_length'
    (``line_by_line``). With ``word_ids`` a 'word_ids' list per text (whole-word masking, see whole_word.py; -1 on
    special tokens and separators), Chinese words from a segmenter with ``segment_chinese``."""
    if line_by_line:
        options = dict(truncation=True, max_length=max_seq_length)
    else:
        options = dict(add_special_tokens=False)
    if word_ids:
        encoded = encode_with_word_ids(tokenizer, texts, segment_chinese=segment_chinese, **options)
    else:
        encoded = tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, **options)
    if line_by_line:
        # Stored so the group_by_length sampler does not read every example to measure it.
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        encoded["untruncated_length"] = untruncated_lengths(encoded, tokenizer)
        return encoded
    if separator is None:
        return encoded
    # A separator after each text marks text boundaries inside packed blocks.
    encoded["input_ids"] = [ids + [separator] for ids in encoded["input_ids"]]
    if word_ids:
        encoded["word_ids"] = [words + [-1] for words in encoded["word_ids"]]
    return encoded


def encode_flat(tokenizer, texts: list[str], **options) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """``data.encode_texts`` as flat arrays: the texts' tokens one after the other, tokens per text, word ids
    (or None), and the per-text extras of --line_by_line ('length', 'untruncated_length')."""
    encoded = encode_texts(tokenizer, texts, **options)
    lengths = np.fromiter(map(len, encoded["input_ids"]), dtype=np.int64, count=len(texts))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(encoded["input_ids"]), dtype=np.int32, count=total)
    words = None
    if "word_ids" in encoded:
        words = np.fromiter(itertools.chain.from_iterable(encoded["word_ids"]), dtype=np.int32, count=total)
    extras = {key: encoded[key] for key in ("length", "untruncated_length") if key in encoded}
    return ids, lengths, words, extras


def tokenize(raw: DatasetDict, tokenizer, args: DataArguments, max_seq_length: int, *, word_ids: bool = False,
             segment_chinese: bool = False) -> DatasetDict:
    """Tokenize every split (cached by ``datasets``): whole texts for packing, truncated texts line by line.

    With ``word_ids`` a 'word_ids' column is added for whole-word masking (see whole_word.py); with
    ``segment_chinese`` Chinese words come from a segmenter. Other columns (document_id) are kept.
    """
    separator = text_separator(tokenizer)
    if args.nsp:
        separator = None  # NSP pairs get their separators when they are built
    # The function's fingerprint names the cache entry, so it closes over what shapes the tokens and nothing else
    # (not the whole of ``args``: a new --max_train_samples or --overwrite_cache must still find the cache).
    line_by_line = args.line_by_line

    def tokenize_batch(batch):
        return encode_texts(tokenizer, batch["text"], max_seq_length=max_seq_length, line_by_line=line_by_line,
                            separator=separator, word_ids=word_ids, segment_chinese=segment_chinese)

    raw = DatasetDict({split: ds for split, ds in raw.items() if isinstance(ds, Dataset)})  # streams: on the fly
    if not raw:  # --streaming or --tokenized_dataset without --validation_file: nothing to tokenize here
        return raw
    features = {name: feature for name, feature in next(iter(raw.values())).features.items() if name != "text"}
    features["input_ids"] = Sequence(Value("int32"))
    if word_ids:
        features["word_ids"] = Sequence(Value("int32"))
    if args.line_by_line:
        features["length"] = Value("int32")
        features["untruncated_length"] = Value("int32")
    return raw.map(
        tokenize_batch,
        batched=True,
        num_proc=args.preprocessing_num_workers or os.cpu_count(),
        remove_columns=["text"],
        features=Features(features),
        load_from_cache_file=not args.overwrite_cache,
        desc="Tokenizing",
    )


def untruncated_lengths(encoded, tokenizer) -> list[int]:
    """Each text's token count before truncation (special tokens included), read from the fast tokenizer's
    overflow, so the corpus report counts truncated texts without tokenizing twice. A slow tokenizer keeps no
    overflow: its lengths are the truncated ones."""
    encodings = getattr(encoded, "encodings", None)
    if encodings is None:
        return [len(ids) for ids in encoded["input_ids"]]
    # Each overflowing piece carries its own special tokens; with stride 0 the rest is the cut-off text.
    specials = tokenizer.num_special_tokens_to_add()
    return [len(e.ids) + sum(len(o.ids) - specials for o in e.overflowing) for e in encodings]


class Packer:
    """The one packing rule: tokenized texts go in, in order, and full blocks of ``max_seq_length`` come out.

    Each block is ``prefix + body + suffix``; the tokens that do not fill a block wait for the next texts, so
    packing a corpus in any number of pieces gives the blocks of packing it whole, and only the final partial block
    is ever dropped (by not adding more). Word ids (whole-word masking) travel with their tokens: made unique across
    texts as they come in, then renumbered 0, 1, 2, ... per block, so a word cut by a block boundary becomes two.
    """

    def __init__(self, max_seq_length: int, prefix: list[int], suffix: list[int], word_ids: bool = False):
        self.max_seq_length = max_seq_length
        self.prefix = np.asarray(prefix, np.int32)
        self.suffix = np.asarray(suffix, np.int32)
        self.body = max_seq_length - len(prefix) - len(suffix)
        self.word_ids = word_ids
        self.ids = np.zeros(0, np.int32)  # the tokens waiting for a block
        self.words = np.zeros(0, np.int64)
        self.next_word = 0
        self.tokens_in = 0  # tokens added so far
        self.tokens_cut = 0  # tokens cut into blocks so far

    def add(self, ids: np.ndarray, lengths: np.ndarray, words: np.ndarray | None = None):
        """Add texts (``ids`` their tokens one after the other, ``lengths`` tokens per text, ``words`` their own
        word ids, -1 where none); return the blocks now full: input ids ``(n, max_seq_length)`` and, with word ids,
        theirs (-1 on the special tokens), else None."""
        ids = np.asarray(ids, np.int32)
        self.tokens_in += len(ids)
        self.ids = np.concatenate([self.ids, ids])
        if self.word_ids:
            self.words = np.concatenate([self.words, self._unique_words(np.asarray(words, np.int64), lengths)])
        n_blocks = len(self.ids) // self.body
        cut = n_blocks * self.body
        blocks = self._frame(self.ids[:cut].reshape(n_blocks, self.body), self.prefix, self.suffix)
        words_out = None
        if self.word_ids:
            minus = np.full(len(self.prefix), -1), np.full(len(self.suffix), -1)
            words_out = dense_word_ids(self._frame(self.words[:cut].reshape(n_blocks, self.body), *minus))
            self.words = self.words[cut:]
        self.ids = self.ids[cut:]
        self.tokens_cut += cut
        return blocks, words_out

    @staticmethod
    def _frame(body: np.ndarray, prefix: np.ndarray, suffix: np.ndarray) -> np.ndarray:
        n = len(body)
        return np.hstack([np.broadcast_to(prefix.astype(body.dtype), (n, len(prefix))), body,
                          np.broadcast_to(suffix.astype(body.dtype), (n, len(suffix)))])

    def _unique_words(self, words: np.ndarray, lengths) -> np.ndarray:
        """Word ids that differ between texts and from every id added before (-1 stays -1)."""
        text_start = np.zeros(len(words), dtype=bool)
        starts = np.cumsum(np.asarray(lengths, np.int64))[:-1]
        text_start[starts[starts < len(words)]] = True
        if len(words):
            text_start[0] = True
        previous = np.concatenate([[-1], words[:-1]])
        new_word = (words >= 0) & ((words != previous) | text_start)
        unique = np.where(words >= 0, self.next_word + np.cumsum(new_word) - 1, -1)
        self.next_word += int(new_word.sum())
        return unique


def flat_texts(batch: pa.RecordBatch | pa.Table, column: str = "input_ids") -> tuple[np.ndarray, np.ndarray]:
    """A list column's values one after the other, and the length of each row."""
    values = pc.list_flatten(batch.column(column)).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(batch.column(column)), 0).to_numpy(zero_copy_only=False)
    return values, lengths


def pack(tokenized: Dataset, max_seq_length: int, prefix: list[int], suffix: list[int],
         rows_per_piece: int = 100_000) -> Dataset:
    """Concatenate all token ids and cut them into full blocks of ``max_seq_length`` (special tokens included).

    Only the final partial block of the whole split is dropped. Each block is ``prefix + body + suffix``.
    A 'word_ids' column is packed alongside, renumbered per block; a word cut by a block boundary becomes two.
    The texts are read ``rows_per_piece`` at a time (:class:`Packer` carries what is left over).
    """
    with_words = "word_ids" in tokenized.column_names
    packer = Packer(max_seq_length, prefix, suffix, word_ids=with_words)
    blocks, words = [], []
    for piece in tokenized.flatten_indices().data.table.to_batches(max_chunksize=rows_per_piece):
        ids, lengths = flat_texts(piece)
        new_blocks, new_words = packer.add(ids, lengths, flat_texts(piece, "word_ids")[0] if with_words else None)
        blocks.append(new_blocks)
        words.append(new_words)
    if packer.tokens_cut == 0:
        raise InputError(
            f"The text has {packer.tokens_in} tokens, fewer than one block of --max_seq_length {max_seq_length}; "
            "give more text, a smaller --max_seq_length, or --line_by_line."
        )
    return Dataset(blocks_table(np.concatenate(blocks), np.concatenate(words) if with_words else None))


def blocks_table(blocks: np.ndarray, words: np.ndarray | None = None) -> pa.Table:
    """Packed blocks (and their word ids) as an Arrow table of fixed-size lists, the one layout of packed data."""
    length = blocks.shape[1]
    columns = {"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(blocks.astype(np.int32).ravel()), length)}
    if words is not None:
        columns["word_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(words.astype(np.int32).ravel()), length)
    return pa.table(columns)
