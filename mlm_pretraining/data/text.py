"""The one front door for reading text: files, folders, globs or a hub dataset, in memory or streamed.

Used by run_mlm.py (training, named evaluation sets, replayed general text), the streamed corpus, the corpus
preparation and the classification scripts. Files are handed to ``datasets`` as they are (one builder per split:
.txt → text, .csv/.tsv → csv, .json/.jsonl → json) and read once; only when ``datasets`` fails does
:func:`explain_bad_file` read a file again to say where it is broken (the byte offset of invalid UTF-8, the line
of malformed JSON). A streamed training split is a :class:`TextStream`: texts in order, each with its place in the
corpus, so that reading can start again at a place (resume by position) instead of from the beginning.
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset

from mlm_pretraining.errors import InputError
from mlm_pretraining.flag_values import parse_named_files

if TYPE_CHECKING:
    from arguments import DataArguments

# Extension → datasets builder.
BUILDERS = {".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
GLOB_CHARS = set("*?[")


def resolve_data_files(patterns: list[str], flag: str) -> list[str]:
    """Expand files, folders and globs given to ``flag`` into a sorted list of existing, non-empty text files
    of one type."""
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
    builders = {BUILDERS[Path(p).suffix.lower()] for p in files}
    if len(builders) > 1:
        raise InputError(f"{flag}: mixes file types ({', '.join(sorted(builders))}); give files of one type.")
    return files


def builder_for(files: list[str]) -> str:
    """The ``datasets`` builder that reads these files (all of one type, as :func:`resolve_data_files` checks)."""
    return BUILDERS[Path(files[0]).suffix.lower()]



def load_split(files: list[str], flag: str, *, streaming: bool = False, cache_dir: str | None = None,
               allow_text: bool = True) -> Dataset | IterableDataset:
    """Read already-resolved ``files`` (one type) as one split; a broken file fails naming the file and where."""
    builder = builder_for(files)
    if builder == "text" and not allow_text:
        raise InputError(f"{flag}: labelled data must be .csv/.tsv or .json/.jsonl files (a text and a label "
                         f"column), got '{files[0]}'.")
    options = {"encoding": "utf-8-sig"} if builder in ("text", "csv") else {}
    if builder == "csv" and any(f.lower().endswith(".tsv") for f in files):
        options["sep"] = "\t"
    try:
        ds = load_dataset(builder, data_files={"train": files}, split="train", streaming=streaming,
                          cache_dir=cache_dir, **options)
        if streaming:
            next(iter(ds), None)  # the first rows now, so a broken first file fails before the model loads
    except InputError:
        raise
    except Exception as err:  # datasets wraps parser errors in several types; find the file and the place
        for path in files:
            explain_bad_file(path, flag)
        raise InputError(f"{flag}: could not read {', '.join(files[:3])}: {str(err).splitlines()[0]}") from None
    return ds


def explain_bad_file(path: str, flag: str) -> None:
    """Raise an InputError with the byte offset of invalid UTF-8 or the line of malformed JSON, if ``path`` has
    one; return quietly if it reads cleanly."""
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
        _explain_bad_json(path, flag)


def _explain_bad_json(path: str, flag: str) -> None:
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


def load_hub_dataset(name: str, config: str | None, *, streaming: bool = False, cache_dir: str | None = None):
    """A hub dataset's splits (needs network, or the datasets cache)."""
    try:
        return load_dataset(name, config, streaming=streaming, cache_dir=cache_dir)
    except Exception as err:
        raise InputError(f"--dataset_name {name}: could not load it ({str(err).splitlines()[0]}). Offline "
                         "(HF_HUB_OFFLINE=1) only datasets already in the cache load; or give --train_file.") from None


def text_column(ds: Dataset | IterableDataset, requested: str | None, where: str, exclude: tuple[str, ...] = (),
                flag: str = "--text_column_name") -> str:
    """The column holding the text: ``requested`` (given to ``flag``), else 'text', else the only string column
    (``exclude`` aside)."""
    columns = list(ds.column_names or [])
    strings = [c for c in columns if c not in exclude
               and getattr((ds.features or {}).get(c), "dtype", None) in ("string", "large_string")]
    if not columns and isinstance(ds, IterableDataset):  # a stream of JSON rows may not declare its columns
        first = next(iter(ds), {})
        columns = list(first)
        strings = [c for c, value in first.items() if c not in exclude and isinstance(value, str)]
    if requested is not None:
        if requested not in columns:
            raise InputError(f"{flag} '{requested}' is not a column of {where}. "
                             f"Columns: {', '.join(columns)}.")
        return requested
    if "text" in columns:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise InputError(f"{where} has no 'text' column; choose one with {flag}. Columns: {', '.join(columns)}.")


def select_text(ds: Dataset | IterableDataset, column: str, where: str, keep: tuple[str, ...] = ()):
    """Keep ``column`` (renamed 'text') and ``keep``, without rows whose text is blank; fail if nothing is left."""
    ds = ds.select_columns([column, *keep])
    if column != "text":
        ds = ds.rename_column(column, "text")
    ds = ds.filter(lambda batch: [bool(t and str(t).strip()) for t in batch["text"]], batched=True,
                   **({} if isinstance(ds, IterableDataset) else {"desc": f"Dropping blank texts of {where}"}))
    if isinstance(ds, Dataset) and len(ds) == 0:
        raise InputError(f"{where} holds no text (every row is blank).")
    return ds


# A place in a streamed corpus: (file index, offset, part). For .txt and .jsonl files the offset is the byte offset
# of a line and part the piece of that line a lone carriage return splits off (universal newlines, as datasets
# reads .txt); for other files the offset is the row in the file; for a hub dataset, the row of the whole stream.
Place = tuple[int, int, int]
START: Place = (0, 0, 0)
_BOM = codecs.BOM_UTF8


class TextStream:
    """The training text of --streaming: its non-blank texts in order, each with its :data:`Place`, so that
    reading can start again at any place.

    How far a start at a place has to read first depends on the files: .txt and .jsonl files are read here, line by
    line, and a place is a byte offset, so starting there is a ``file.seek`` (nothing before it is read);
    .csv/.tsv/.json files are read by ``datasets`` one file at a time, so the files before the place are skipped
    unread and the rows of its own file before it are read (not tokenized); a hub dataset's rows before the place
    are read. Texts are the ones the in-memory path trains on: lines split at \\n, \\r\\n and \\r, a UTF-8 BOM
    dropped, blank texts skipped.
    """

    def __init__(self, files: list[str], column: str, where: str, *, hub: IterableDataset | None = None,
                 cache_dir: str | None = None):
        self.files = list(files)
        self.column = column
        self.where = where
        self.hub = hub
        self.cache_dir = cache_dir
        self.builder = "hub" if hub is not None else builder_for(self.files)
        # .txt and .jsonl hold one text (or JSON object) per line: places are byte offsets.
        self.by_line = hub is None and (self.builder == "text"
                                        or all(f.lower().endswith(".jsonl") for f in self.files))

    def __iter__(self) -> Iterator[str]:
        return (text for _, text, _ in self.texts())

    def texts(self, start: Place = START) -> Iterator[tuple[Place, str, Place]]:
        """``(place, text, next place)`` for every non-blank text from ``start`` on; the next place is where
        reading would continue after this text."""
        if self.hub is not None:
            rows = itertools.islice(self.hub, start[1], None)
            for row_index, row in enumerate(rows, start=start[1]):
                text = row.get(self.column)
                if text is not None and str(text).strip():
                    yield (0, row_index, 0), str(text), (0, row_index + 1, 0)
            return
        for index in range(start[0], len(self.files)):
            offset, part = (start[1], start[2]) if index == start[0] else (0, 0)
            if self.by_line:
                yield from self._line_texts(index, offset, part)
            else:
                yield from self._row_texts(index, offset)

    def _line_texts(self, index: int, offset: int, part: int) -> Iterator[tuple[Place, str, Place]]:
        path = self.files[index]
        with open(path, "rb") as handle:
            handle.seek(offset)
            for line in handle:
                start, offset = offset, offset + len(line)
                if start == 0 and line.startswith(_BOM):
                    line = line[len(_BOM):]
                line = line.rstrip(b"\n")
                pieces = line.split(b"\r") if self.builder == "text" else [line]
                for k in range(part, len(pieces)):
                    text = self._decode(pieces[k], path, start)
                    if text is not None and text.strip():
                        after = (index, start, k + 1) if k + 1 < len(pieces) else (index, offset, 0)
                        yield (index, start, k), text, after
                part = 0

    def _decode(self, raw: bytes, path: str, offset: int) -> str | None:
        """A .txt line's text, or a JSON line's text column (None when it is missing or null)."""
        try:
            if self.builder == "text":
                return raw.decode("utf-8")
            if not raw.strip():
                return None
            row = json.loads(raw)
        except UnicodeDecodeError as err:
            raise InputError(f"--train_file: '{path}' is not valid UTF-8 at byte {offset + err.start}. Convert it, "
                             f"e.g. `iconv -f latin1 -t utf-8 {path} > fixed.txt`.") from None
        except ValueError as err:
            raise InputError(f"--train_file: '{path}' has a line that is not valid JSON at byte {offset} ({err}). "
                             'Each line must be one JSON object, e.g. {"text": "..."}.') from None
        if not isinstance(row, dict):
            raise InputError(f"--train_file: '{path}' has a line that is not a JSON object at byte {offset}.")
        text = row.get(self.column)
        if text is not None and not isinstance(text, str):
            raise InputError(f"--train_file: '{path}': the '{self.column}' value of the line at byte {offset} is not "
                             f"text ({type(text).__name__}).")
        return text

    def _row_texts(self, index: int, skip: int) -> Iterator[tuple[Place, str, Place]]:
        rows = load_split([self.files[index]], "--train_file", streaming=True, cache_dir=self.cache_dir)
        for row_index, row in enumerate(itertools.islice(rows, skip, None), start=skip):
            text = row.get(self.column)
            if text is not None and str(text).strip():
                yield (index, row_index, 0), str(text), (index, row_index + 1, 0)


def read_corpus(args: DataArguments, cache_dir: str | None = None) -> DatasetDict:
    """The masked-LM text as a DatasetDict of 'text' columns: 'train' (a stream with --streaming), the evaluation
    set(s) ('validation', or 'validation_<name>' for named --validation_file sets; held out from the training text
    when there is none) and 'mix' (--mix_train_file, general text replayed during training).

    With --nsp each in-memory split also gets a 'document_id' column (blank lines separate documents in .txt
    files; elsewhere each row is a document), added before blank rows are dropped.
    """
    if not args.dataset_name and not args.train_file and not args.validation_file \
            and not getattr(args, "tokenized_dataset", None):
        raise InputError("Give training text with --train_file (or a hub dataset with --dataset_name).")
    raw: dict[str, tuple] = {}  # split -> (dataset, where, documents split by blank lines)
    train_files: list[str] = []
    if args.dataset_name:
        hub = load_hub_dataset(args.dataset_name, args.dataset_config_name, streaming=args.streaming,
                               cache_dir=cache_dir)
        where = f"--dataset_name {args.dataset_name}"
        for split in ("train", "validation"):
            if split in hub and not (split == "validation" and args.validation_file):
                ds = hub[split]
                if split == "validation" and args.streaming:  # evaluation sets are held in memory
                    ds = load_hub_dataset(args.dataset_name, args.dataset_config_name, cache_dir=cache_dir)[split]
                raw[split] = (ds, f"the {split} split of {where}", False)
    elif args.train_file:
        files = train_files = resolve_data_files(args.train_file, "--train_file")
        raw["train"] = (load_split(files, "--train_file", streaming=args.streaming, cache_dir=cache_dir),
                        f"--train_file ({_names(files)})", builder_for(files) == "text")
    for name, entries in parse_named_files(args.validation_file, "--validation_file").items():
        flag = f"--validation_file {name}=" if name else "--validation_file"
        files = resolve_data_files(entries, flag)
        raw[f"validation_{name}" if name else "validation"] = (
            load_split(files, flag, cache_dir=cache_dir), f"{flag} ({_names(files)})", builder_for(files) == "text")
    if getattr(args, "mix_train_file", None):
        files = resolve_data_files(args.mix_train_file, "--mix_train_file")
        raw["mix"] = (load_split(files, "--mix_train_file", cache_dir=cache_dir), f"--mix_train_file ({_names(files)})",
                      builder_for(files) == "text")

    corpus = {}
    for split, (ds, where, plain_text) in raw.items():
        # --text_column_name names a column of tables and JSON; a .txt file's lines are always its text.
        column = text_column(ds, None if plain_text else args.text_column_name, where)
        if isinstance(ds, IterableDataset):  # the streamed training text: read by place, blank texts skipped
            corpus[split] = TextStream(train_files, column, where, hub=None if train_files else ds,
                                       cache_dir=cache_dir)
            continue
        keep: tuple[str, ...] = ()
        if args.nsp and isinstance(ds, Dataset):
            ds = ds.add_column("document_id", _document_ids(ds, column, plain_text))
            keep = ("document_id",)
        corpus[split] = select_text(ds, column, where, keep)

    has_evaluation = any(split.startswith("validation") for split in corpus)
    if not has_evaluation and isinstance(corpus.get("train"), Dataset) and args.validation_split_percentage > 0:
        train = corpus["train"]
        n = len(train)
        if n < 2:
            raise InputError(f"{raw['train'][1]} has a single text: too few to hold some out for evaluation; give "
                             "--validation_file or --validation_split_percentage 0.")
        held_out = max(1, int(n * args.validation_split_percentage / 100))  # the last texts: documents stay whole
        corpus["train"], corpus["validation"] = train.select(range(n - held_out)), train.select(range(n - held_out, n))
    return DatasetDict(corpus)


def _names(files: list[str], at_most: int = 3) -> str:
    return ", ".join(files[:at_most]) + (f" and {len(files) - at_most} more" if len(files) > at_most else "")


def _document_ids(ds: Dataset, column: str, plain_text: bool) -> np.ndarray:
    """Per row, its document: the number of blank rows before it, or the row's own index."""
    if not plain_text:
        return np.arange(len(ds))
    texts = pc.fill_null(ds.flatten_indices().data.table.column(column), "")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).to_numpy(zero_copy_only=False)
    return np.cumsum(blank)
