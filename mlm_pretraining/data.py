"""Reading the corpus and turning it into model examples: files → datasets → tokens → packed blocks or lines."""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_dataset

from mlm_pretraining.errors import InputError
from mlm_pretraining.sentence_pairs import build_pairs, global_word_ids
from mlm_pretraining.whole_word import (
    check_tokenizer,
    dense_word_ids,
    encode_with_word_ids,
    use_chinese_segmentation,
)

if TYPE_CHECKING:
    from arguments import DataArguments

logger = logging.getLogger(__name__)

# Extension → datasets builder.
BUILDERS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
GLOB_CHARS = set("*?[")


def resolve_data_files(patterns: list[str], flag: str) -> list[str]:
    """Expand files, folders and globs given to ``flag`` into a sorted list of existing, non-empty text files."""
    files: list[str] = []
    for pattern in patterns:
        if GLOB_CHARS & set(pattern):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matched:
                raise InputError(f"{flag}: the pattern '{pattern}' matches no file.")
        elif os.path.isdir(pattern):
            matched = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
            if not matched:
                raise InputError(
                    f"{flag}: the folder '{pattern}' holds no {'/'.join(sorted(set(BUILDERS)))} file."
                )
        elif os.path.isfile(pattern):
            matched = [pattern]
        else:
            raise InputError(f"{flag}: no such file or folder '{pattern}'. Check the path.")
        files.extend(matched)
    for path in files:
        if Path(path).suffix.lower() not in BUILDERS:
            raise InputError(
                f"{flag}: '{path}' has an unsupported extension; use one of {', '.join(sorted(BUILDERS))} "
                "(plain text with one text per line: rename it to .txt)."
            )
        if os.path.getsize(path) == 0:
            raise InputError(f"{flag}: '{path}' is empty.")
        check_file(path, flag)
    builders = {BUILDERS[Path(p).suffix.lower()] for p in files}
    if len(builders) > 1:
        raise InputError(f"{flag}: mixes file types ({', '.join(sorted(builders))}); give files of one type.")
    return files


def check_file(path: str, flag: str) -> None:
    """Fail with the byte offset of invalid UTF-8 and the line of malformed JSON, before any model loads."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                bad = offset + err.start
                with open(path, "rb") as again:
                    line = again.read(bad).count(b"\n") + 1
                raise InputError(
                    f"{flag}: '{path}' is not valid UTF-8 at byte {bad} (line {line}). Convert it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path} > fixed.txt`."
                ) from None
            offset += len(chunk)
    if Path(path).suffix.lower() in (".json", ".jsonl"):
        _check_json(path, flag)


def _check_json(path: str, flag: str) -> None:
    """A JSON array checked whole, or JSON lines checked one by one (blank lines allowed)."""
    with open(path, encoding="utf-8-sig") as handle:
        first = handle.read(4096).lstrip()
    if first.startswith("["):
        try:
            json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except ValueError as err:
            raise InputError(f"{flag}: '{path}' is not valid JSON (line {err.lineno}: {err.msg}).") from None
        return
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError as err:
                    raise InputError(
                        f"{flag}: '{path}' line {line_no} is not valid JSON ({err.msg}). Each line must be one JSON "
                        'object, e.g. {"text": "..."}.'
                    ) from None


def load_raw_datasets(args: DataArguments, cache_dir: str | None = None) -> DatasetDict:
    """Load the corpus as a DatasetDict with 'train' and (when available) 'validation', one 'text' column each."""
    if args.dataset_name:
        raw = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=cache_dir)
    else:
        if not args.train_file and not args.validation_file:
            raise InputError("Give training text with --train_file (or a hub dataset with --dataset_name).")
        data_files = {}
        if args.train_file:
            data_files["train"] = resolve_data_files(args.train_file, "--train_file")
        if args.validation_file:
            data_files["validation"] = resolve_data_files(args.validation_file, "--validation_file")
        builders = {BUILDERS[Path(f).suffix.lower()] for files in data_files.values() for f in files}
        if len(builders) > 1:
            raise InputError("--train_file and --validation_file must be files of the same type.")
        builder = builders.pop()
        options = {"encoding": "utf-8-sig"} if builder in ("text", "csv") else {}
        if builder == "csv" and any(f.lower().endswith(".tsv") for files in data_files.values() for f in files):
            options["sep"] = "\t"
        raw = load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **options)
    # In .txt files blank lines separate documents (for --nsp); elsewhere each row is a document.
    blank_lines_split_documents = not args.dataset_name and builder == "text"
    raw = DatasetDict({split: _select_text(ds, args, split, blank_lines_split_documents) for split, ds in raw.items()
                       if split in ("train", "validation")})
    if "validation" not in raw and "train" in raw and args.validation_split_percentage > 0:
        n = len(raw["train"])
        held_out = max(1, int(n * args.validation_split_percentage / 100))
        if n < 2:
            raise InputError("--train_file has a single text: too few to hold some out for evaluation; give "
                             "--validation_file or --validation_split_percentage 0.")
        raw = DatasetDict(train=raw["train"].select(range(n - held_out)),
                          validation=raw["train"].select(range(n - held_out, n)))
    return raw


def _select_text(ds: Dataset, args: DataArguments, split: str, blank_lines_split_documents: bool = False) -> Dataset:
    """Keep the text column alone, named 'text', without blank texts; fail clearly if there is none.

    With --nsp a 'document_id' column is added first, since the blank lines that separate documents are dropped.
    """
    column = args.text_column_name
    if column is None:
        strings = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        column = "text" if "text" in ds.column_names else (strings[0] if len(strings) == 1 else None)
        if column is None:
            raise InputError(
                f"The {split} data has no 'text' column; choose one with --text_column_name. "
                f"Columns: {', '.join(ds.column_names)}."
            )
    elif column not in ds.column_names:
        raise InputError(
            f"--text_column_name '{column}' is not a column of the {split} data. Columns: {', '.join(ds.column_names)}."
        )
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    if args.nsp:
        ds = ds.add_column("document_id", _document_ids(ds, blank_lines_split_documents))
    ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True,
                   desc=f"Dropping blank {split} texts")
    if len(ds) == 0:
        raise InputError(f"The {split} data holds no text (every row is blank).")
    return ds


def _document_ids(ds: Dataset, blank_lines_split_documents: bool) -> np.ndarray:
    """Per row, its document: the number of blank rows before it, or the row's own index."""
    if not blank_lines_split_documents:
        return np.arange(len(ds))
    texts = pc.fill_null(ds.flatten_indices().data.table.column("text"), "")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).to_numpy(zero_copy_only=False)
    return np.cumsum(blank)


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
        if line_by_line:
            options = dict(truncation=True, max_length=max_seq_length)
        else:
            options = dict(add_special_tokens=False)
        if word_ids:
            encoded = encode_with_word_ids(tokenizer, batch["text"], segment_chinese=segment_chinese, **options)
        else:
            encoded = tokenizer(batch["text"], return_attention_mask=False, return_token_type_ids=False, **options)
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

    if not raw:  # --streaming without --validation_file: nothing to tokenize here
        return DatasetDict()
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


def pack(tokenized: Dataset, max_seq_length: int, prefix: list[int], suffix: list[int]) -> Dataset:
    """Concatenate all token ids and cut them into full blocks of ``max_seq_length`` (special tokens included).

    Only the final partial block of the whole split is dropped. Each block is ``prefix + body + suffix``.
    A 'word_ids' column is packed alongside, renumbered per block; a word cut by a block boundary becomes two.
    """
    body = max_seq_length - len(prefix) - len(suffix)
    column = tokenized.flatten_indices().data.column("input_ids")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    n_blocks = len(flat) // body
    if n_blocks == 0:
        raise InputError(
            f"The text has {len(flat)} tokens, fewer than one block of --max_seq_length {max_seq_length}; "
            "give more text, a smaller --max_seq_length, or --line_by_line."
        )
    blocks = flat[: n_blocks * body].reshape(n_blocks, body)
    blocks = np.hstack([
        np.broadcast_to(np.asarray(prefix, np.int32), (n_blocks, len(prefix))),
        blocks,
        np.broadcast_to(np.asarray(suffix, np.int32), (n_blocks, len(suffix))),
    ])
    array = pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), max_seq_length)
    columns = {"input_ids": array}
    if "word_ids" in tokenized.column_names:
        words = global_word_ids(tokenized.flatten_indices().data.table)[: n_blocks * body].reshape(n_blocks, body)
        words = np.hstack([np.full((n_blocks, len(prefix)), -1), words, np.full((n_blocks, len(suffix)), -1)])
        columns["word_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(dense_word_ids(words).ravel()),
                                                                max_seq_length)
    return Dataset(pa.table(columns))


def prepare_datasets(raw: DatasetDict, tokenizer, args: DataArguments, max_seq_length: int, *,
                     whole_word_mask: bool = False, chinese_word_segmentation: str = "auto",
                     seed: int = 42, return_tokenized: bool = False) -> DatasetDict:
    """Tokenize, then pack (default), keep lines or build NSP pairs (--nsp, drawn with ``seed``); apply
    --max_train_samples / --max_eval_samples. ``whole_word_mask`` adds the 'word_ids' column.
    ``return_tokenized`` returns ``(examples, tokenized texts)``, for the corpus report."""
    if whole_word_mask:
        check_tokenizer(tokenizer)
    segment_chinese = whole_word_mask and use_chinese_segmentation(tokenizer, chinese_word_segmentation)
    if whole_word_mask:
        logger.info("Whole-word masking: words from the tokenizer%s.",
                    ", Chinese words from the segmenter" if segment_chinese else "")
    tokenized = tokenize(raw, tokenizer, args, max_seq_length, word_ids=whole_word_mask,
                         segment_chinese=segment_chinese)
    prefix, suffix = special_token_template(tokenizer)
    out = {}
    for index, (split, ds) in enumerate(tokenized.items()):
        if args.nsp:
            ds = build_pairs(ds, max_seq_length, prefix, suffix, seed=seed + index, split=split)
        elif not args.line_by_line:
            ds = pack(ds, max_seq_length, prefix, suffix)
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        out[split] = ds
    return (DatasetDict(out), tokenized) if return_tokenized else DatasetDict(out)
