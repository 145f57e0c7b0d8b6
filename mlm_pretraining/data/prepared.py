"""Tokenize once: a training corpus tokenized and packed into shards on disk (scripts/prepare_corpus.py), and
loaded memory-mapped by ``run_mlm.py --tokenized_dataset FOLDER`` with no tokenizer pass over the text.

Preparing reads the text in order (text.TextStream, as --streaming does: .txt/.jsonl line by line, nothing held in
memory), tokenizes batches of texts in a pool of processes (``data.encode_texts``), packs them in order
(``data.Packer``, the packing of every other path, so the blocks equal in-memory packing) and writes them as Arrow
shards of at most ``max_shard_bytes``, then ``prepared_corpus.json``, last: the tokenizer (name and a fingerprint
of its vocabulary, special tokens and how it cuts a probe text), block length, line-by-line and whole-word settings,
block and token counts, and each shard's file name and size. One pass and bounded memory, instead of ``datasets``
map + save_to_disk, which first writes the tokenized texts to a cache as large again as the blocks, then copies
them into shards. The shards are Arrow IPC streams, the format of ``datasets``' own cache files, loaded with
``Dataset.from_file``: memory-mapped, so every process of a torchrun job shares the page cache, and the Trainer
samples them like any in-memory dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, concatenate_datasets

from mlm_pretraining.data.packing import (
    Packer,
    blocks_table,
    encode_flat,
    special_token_template,
    text_separator,
)
from mlm_pretraining.data.streaming import text_batches
from mlm_pretraining.data.text import TextStream
from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_text_atomically

logger = logging.getLogger(__name__)

METADATA_FILE = "prepared_corpus.json"
FORMAT = "mlm_pretraining prepared corpus 1"
SHARD_NAME = "data-{:05d}.arrow"
# Tokenized by the fingerprinted tokenizer: normalisation (case, accents), pre-tokenization, numbers, CJK.
PROBE_TEXT = "Hello, World! Héllo WÖRLD straße naïve 中文分词 12,345.67 e-mail: a@b.c ¿Qué? Ελληνικά"


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what decides the token ids: the vocabulary (added tokens included), the special tokens,
    and the ids of a probe text (normalisation and pre-tokenization)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    digest.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens)), ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer(PROBE_TEXT)["input_ids"]).encode())
    return digest.hexdigest()[:16]


# Each pool process keeps the tokenizer and the options, set once when it starts.
_WORKER: dict = {}


def _start_worker(tokenizer, options: dict) -> None:
    _WORKER.update(tokenizer=tokenizer, options=options)


def _encode_in_worker(texts: list[str]):
    return encode_flat(_WORKER["tokenizer"], texts, **_WORKER["options"])


def encoded_batches(source: TextStream, tokenizer, options: dict, num_workers: int) -> Iterator[tuple]:
    """``encode_flat`` of every batch of texts of ``source``, in order; tokenized by ``num_workers`` processes
    (in this one for 1), at most two batches a process ahead of the consumer, so memory stays bounded."""
    batches = ([text for _, text, _ in batch] for _, _, batch in text_batches(source))
    if num_workers <= 1:
        for texts in batches:
            yield encode_flat(tokenizer, texts, **options)
        return
    with ProcessPoolExecutor(num_workers, initializer=_start_worker, initargs=(tokenizer, options)) as pool:
        pending: deque = deque()
        for texts in batches:
            pending.append(pool.submit(_encode_in_worker, texts))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ShardWriter:
    """Arrow tables appended to ``folder/data-NNNNN.arrow`` files, a new file once one reaches ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.shards: list[dict] = []
        self._sink = self._writer = None
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        while table.num_rows:
            if self._writer is None:
                self._sink = pa.OSFile(str(self.folder / SHARD_NAME.format(len(self.shards))), "wb")
                self._writer = pa.ipc.new_stream(self._sink, table.schema)
                self._rows = 0
            fits = max(1, (self.max_bytes - self._sink.tell()) // row_bytes)
            self._writer.write_table(table.slice(0, fits))
            self._rows += min(fits, table.num_rows)
            table = table.slice(fits)
            if self._sink.tell() >= self.max_bytes:
                self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        self._sink.close()
        name = SHARD_NAME.format(len(self.shards))
        self.shards.append({"file": name, "bytes": os.path.getsize(self.folder / name), "rows": self._rows})
        self._sink = self._writer = None

    def close(self) -> list[dict]:
        """Finish the last shard; the shards written, each {file, bytes, rows}."""
        if self._writer is not None:
            self._close_shard()
        return self.shards


def _rows_table(ids: np.ndarray, lengths: np.ndarray, words: np.ndarray | None, extras: dict) -> pa.Table:
    """--line_by_line examples as the columns ``data.tokenize`` gives them."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = {"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids, pa.int32()))}
    if words is not None:
        columns["word_ids"] = pa.ListArray.from_arrays(offsets, pa.array(words, pa.int32()))
    for key in ("length", "untruncated_length"):
        columns[key] = pa.array(extras[key], pa.int32())
    return pa.table(columns)


def prepare_corpus(source: TextStream, tokenizer, output_dir: str, *, max_seq_length: int,
                   line_by_line: bool = False, whole_word_mask: bool = False, segment_chinese: bool = False,
                   chinese_word_segmentation: str = "auto", num_workers: int = 1,
                   max_shard_bytes: int = 512 << 20, description: dict | None = None) -> dict:
    """Tokenize and pack all of ``source`` into Arrow shards in ``output_dir`` (see the module docstring); write
    ``prepared_corpus.json`` last and return it. ``description`` (source files, command) is stored with it."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if num_workers > 1:  # the processes are the parallelism; a tokenizer used before a fork would warn in each
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prefix, suffix = special_token_template(tokenizer)
    options = dict(max_seq_length=max_seq_length, line_by_line=line_by_line, separator=text_separator(tokenizer),
                   word_ids=whole_word_mask, segment_chinese=segment_chinese)
    packer = Packer(max_seq_length, prefix, suffix, word_ids=whole_word_mask)
    writer = ShardWriter(folder, max_shard_bytes)
    started = time.perf_counter()
    texts = tokens = 0
    for ids, lengths, words, extras in encoded_batches(source, tokenizer, options, num_workers):
        texts += len(lengths)
        tokens += len(ids)
        if line_by_line:
            writer.write(_rows_table(ids, lengths, words, extras))
            continue
        blocks, block_words = packer.add(ids, lengths, words)
        if len(blocks):
            writer.write(blocks_table(blocks, block_words))
    shards = writer.close()
    blocks_written = sum(shard["rows"] for shard in shards)
    if blocks_written == 0:
        raise InputError(f"The text has {tokens} tokens, fewer than one block of --max_seq_length {max_seq_length}; "
                         "give more text, a smaller --max_seq_length, or --line_by_line.")
    metadata = {
        "format": FORMAT,
        "tokenizer": {"name_or_path": tokenizer.name_or_path, "fingerprint": tokenizer_fingerprint(tokenizer),
                      "vocab_size": len(tokenizer)},
        "max_seq_length": max_seq_length,
        "line_by_line": line_by_line,
        "whole_word_mask": whole_word_mask,
        "chinese_word_segmentation": chinese_word_segmentation,
        "segment_chinese": segment_chinese,
        "num_blocks": blocks_written,
        "num_texts": texts,
        "num_tokens": tokens,
        "dropped_tokens": 0 if line_by_line else packer.tokens_in - packer.tokens_cut,
        "columns": shards and Dataset.from_file(str(folder / shards[0]["file"])).column_names,
        "shards": shards,
        "seconds": round(time.perf_counter() - started, 2),
        "workers": num_workers,
        **(description or {}),
    }
    # written last: a folder without it is unfinished
    write_text_atomically(folder / METADATA_FILE, json.dumps(metadata, indent=1, ensure_ascii=False))
    logger.info("Prepared %d %s (%d tokens) from %d texts in %d shard(s) in %s, %.1f s.", blocks_written,
                "examples" if line_by_line else "blocks", tokens, texts, len(shards), folder, metadata["seconds"])
    return metadata


def read_metadata(folder: str, flag: str = "--tokenized_dataset") -> dict:
    """A prepared folder's metadata, after checking that every shard it names is there with its recorded size."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{flag} '{folder}' is not a folder. Give a folder written by scripts/prepare_corpus.py.")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise InputError(f"{flag} '{folder}' holds no {METADATA_FILE}: it was not written by "
                         "scripts/prepare_corpus.py, or the preparation did not finish (the file is written last). Run scripts/prepare_corpus.py "
                         f"--output_dir {folder} with the model, data and masking flags of the training run.")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        shards = [(shard["file"], int(shard["bytes"])) for shard in metadata["shards"]]
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {FORMAT!r}")
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{flag}: {meta_path} is not metadata this version can read ({err}). Prepare the corpus "
                         "again with scripts/prepare_corpus.py.") from None
    for name, size in shards:
        shard = path / name
        if not shard.is_file():
            raise InputError(f"{flag} '{folder}': shard {shard} is missing ({len(shards)} shards are listed in "
                             f"{METADATA_FILE}). Copy the whole folder again, or prepare the corpus again.")
        if shard.stat().st_size != size:
            raise InputError(f"{flag} '{folder}': shard {shard} has {shard.stat().st_size} bytes, {METADATA_FILE} "
                             f"says {size}: it is truncated or was changed (an interrupted copy?). Copy it again, or "
                             "prepare the corpus again.")
    return metadata


def check_prepared(folder: str, *, max_seq_length: int | None, line_by_line: bool, whole_word_mask: bool,
                   segment_chinese: bool | None = None, tokenizer=None) -> dict:
    """The one set of rules for training on a prepared folder: its metadata and shards (:func:`read_metadata`), and
    the settings it was prepared with against this run's (block length unless ``max_seq_length`` is None,
    --line_by_line, word ids for ``whole_word_mask``; Chinese segmentation and the tokenizer when given). Refused
    naming the difference; returns the metadata."""
    metadata = read_metadata(folder)
    flag = f"--tokenized_dataset '{folder}'"
    if max_seq_length is not None and metadata["max_seq_length"] != max_seq_length:
        raise InputError(f"{flag} holds blocks of {metadata['max_seq_length']} tokens, this run's --max_seq_length is "
                         f"{max_seq_length}. Drop --max_seq_length (the folder's length is used), or prepare the "
                         f"corpus again with --max_seq_length {max_seq_length}.")
    if metadata["line_by_line"] != line_by_line:
        raise InputError(f"{flag} was prepared {'with' if metadata['line_by_line'] else 'without'} --line_by_line, "
                         f"this run is {'with' if line_by_line else 'without'} it. Use the same setting, or prepare "
                         "the corpus again.")
    if whole_word_mask and not metadata["whole_word_mask"]:
        raise InputError(f"{flag} was prepared without --whole_word_mask, so it holds no word ids to mask whole words "
                         "by. Prepare the corpus again with --whole_word_mask, or drop --whole_word_mask.")
    if whole_word_mask and segment_chinese is not None and metadata["segment_chinese"] != segment_chinese:
        raise InputError(f"{flag} was prepared with Chinese word segmentation "
                         f"{'on' if metadata['segment_chinese'] else 'off'} (--chinese_word_segmentation "
                         f"{metadata['chinese_word_segmentation']}), this run has it "
                         f"{'on' if segment_chinese else 'off'}. Use the same --chinese_word_segmentation, or "
                         "prepare the corpus again.")
    if tokenizer is not None:
        prepared_with, ours = metadata["tokenizer"], tokenizer_fingerprint(tokenizer)
        if prepared_with["fingerprint"] != ours:
            raise InputError(
                f"{flag} was prepared with the tokenizer of {prepared_with['name_or_path']} (fingerprint "
                f"{prepared_with['fingerprint']}, {prepared_with['vocab_size']} tokens); this run's tokenizer "
                f"({tokenizer.name_or_path}, fingerprint {ours}, {len(tokenizer)} tokens) gives other token ids. "
                "Prepare the corpus again with this run's --model_name_or_path (and --add_tokens), or train with "
                "the model it was prepared for.")
    return metadata


def load_prepared(folder: str, tokenizer, max_seq_length: int, *, line_by_line: bool = False,
                  whole_word_mask: bool = False, segment_chinese: bool = False) -> Dataset:
    """The prepared training examples of ``folder``, memory-mapped; refused, naming the difference, when they were
    made with another tokenizer, block length, --line_by_line, or word ids than this run needs."""
    metadata = check_prepared(folder, max_seq_length=max_seq_length, line_by_line=line_by_line,
                              whole_word_mask=whole_word_mask, segment_chinese=segment_chinese, tokenizer=tokenizer)
    prepared_with = metadata["tokenizer"]
    shards = [Dataset.from_file(str(Path(folder) / shard["file"])) for shard in metadata["shards"]]
    dataset = concatenate_datasets(shards) if len(shards) > 1 else shards[0]
    if not whole_word_mask and "word_ids" in dataset.column_names:  # prepared for whole words; unused here
        dataset = dataset.remove_columns("word_ids")
    logger.info("Training on %s: %d %s of %d tokens, prepared with %s, memory-mapped.", folder, len(dataset),
                "examples" if line_by_line else "blocks", max_seq_length, prepared_with["name_or_path"])
    return dataset
