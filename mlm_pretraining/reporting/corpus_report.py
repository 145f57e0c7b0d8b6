"""What is in the corpus, before hours are spent on it: texts, characters, tokens, blocks, what packing drops and
truncation cuts, the [UNK] share, pieces per word, and the frequent words the tokenizer shatters.

Everything is computed from the data already read and tokenized (and cached) for training, never by reading or
tokenizing the text again: characters from the Arrow text column, the rest from the flat token-id column with
NumPy. Words are the tokenizer's own: the 'word_ids' column when whole-word masking stored one, otherwise word
starts read from the token strings (WordPiece continues a word with ``##``, byte-level BPE starts one with ``Ġ``,
SentencePiece with ``▁``), so 25 M tokens take seconds.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

from mlm_pretraining.data.packing import special_token_template
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.model.vocab import suggest_tokens

if TYPE_CHECKING:
    from arguments import DataArguments

logger = logging.getLogger(__name__)

REPORT_FILE = "corpus_report.json"
MIN_PIECES = 3  # a word in 3+ pieces is worth a look for --add_tokens (scripts/suggest_vocab.py's default)
TOP_WORDS = 20
_LETTER, _DIGIT, _OTHER = 0, 1, 2


class WordPieces:
    """Per vocabulary id: is it a special token, does it continue the previous token's word, and (for tokenizers
    whose pre-tokenizer also cuts at letter/punctuation changes, as byte-level BPE does) the character class of its
    first and last character."""

    def __init__(self, tokenizer):
        vocab = tokenizer.get_vocab()
        size = max(max(vocab.values(), default=0) + 1, len(tokenizer))
        self.special = np.zeros(size, bool)
        # [UNK] stands for a word the vocabulary cannot spell, so it counts as a word piece, not a special token.
        self.special[[i for i in tokenizer.all_special_ids if i is not None and 0 <= i < size
                      and i != tokenizer.unk_token_id]] = True
        self.continues = np.zeros(size, bool)
        self.first_class = np.full(size, _OTHER, np.int8)
        self.last_class = np.full(size, _OTHER, np.int8)
        self.bare_marker = np.zeros(size, bool)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", None)
        marker = None if prefix else _word_start_marker(tokenizer)
        # Byte-level BPE (GPT-2, RoBERTa) also starts a word where letters, digits and symbols meet ("dog,");
        # SentencePiece (▁) words run from space to space.
        pre = getattr(backend, "pre_tokenizer", None)
        self.class_changes_start_words = bool(marker) and pre is not None and len(pre.pre_tokenize_str("ab,")) > 1
        added = {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
        for token, i in vocab.items():
            if prefix:
                self.continues[i] = token.startswith(prefix) and len(token) > len(prefix)
            elif marker:
                self.continues[i] = not token.startswith(marker) and i not in added
            bare = token[len(marker):] if marker and token.startswith(marker) else token
            self.bare_marker[i] = bool(marker) and token == marker
            if bare:
                self.first_class[i], self.last_class[i] = _char_class(bare[0]), _char_class(bare[-1])
        self.known = bool(prefix or marker)

    def word_starts(self, ids: np.ndarray, row_starts: np.ndarray) -> np.ndarray:
        """Per token of the flat ``ids``: does a word start here (never at a special token)."""
        previous_special = np.concatenate([[True], self.special[ids[:-1]]])
        starts = ~self.continues[ids] | previous_special | row_starts
        if self.class_changes_start_words:
            previous_class = np.concatenate([[_OTHER], self.last_class[ids[:-1]]])
            starts |= self.first_class[ids] != previous_class
        # A lone marker (the space before a piece it could not merge with) belongs to the word that follows.
        starts &= ~np.concatenate([[False], self.bare_marker[ids[:-1]]]) | row_starts
        return starts & ~self.special[ids]


def _word_start_marker(tokenizer) -> str | None:
    """The character that marks a word's first piece ('Ġ' byte-level BPE, '▁' SentencePiece), or None."""
    text = "hello world"
    try:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    except Exception:  # a tokenizer that cannot say; words then count as single pieces
        return None
    # The second word's first piece starts with the marker: a character that is not in the text.
    return next((t[0] for t in tokens[1:] if t and t[0] not in text), None)


def _char_class(char: str) -> int:
    return _LETTER if char.isalpha() else _DIGIT if char.isdigit() else _OTHER


def _arrow_table(ds):
    """The rows of a ``datasets.Dataset`` as a pyarrow Table (zero-copy unless rows were selected by index)."""
    return ds.with_format("arrow")[:]


def _flat(table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat values, row lengths)."""
    values = pc.list_flatten(table.column(column)).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
    return values, np.nan_to_num(lengths).astype(np.int64)


def split_report(raw, tokenized, examples, tokenizer, pieces: WordPieces, *, mode: str, max_seq_length: int,
                 top_n: int = TOP_WORDS) -> dict:
    """The report of one split: ``raw`` (its 'text' column), ``tokenized`` (its 'input_ids', before packing) and
    ``examples`` (what training or evaluation uses: blocks, lines or pairs; None when it has none of its own)."""
    text = _arrow_table(raw).column("text")
    tokens_table = _arrow_table(tokenized)
    ids, lengths = _flat(tokens_table, "input_ids")
    ids = ids.astype(np.int64, copy=False)
    report: dict = {
        "texts": len(raw),
        "characters": int(pc.sum(pc.utf8_length(text)).as_py() or 0),
        "tokens": len(ids),
        "examples": len(examples) if examples is not None else None,
    }
    if mode == "packed":
        prefix, suffix = special_token_template(tokenizer)
        body = max_seq_length - len(prefix) - len(suffix)
        report["blocks"] = len(ids) // body
        report["tokens_dropped"] = len(ids) - report["blocks"] * body  # only the final partial block
    if mode == "line_by_line" and "untruncated_length" in tokens_table.column_names:
        full = tokens_table.column("untruncated_length").to_numpy(zero_copy_only=False).astype(np.int64)
        report["texts_truncated"] = int((full > lengths).sum())
        report["tokens_truncated"] = int((full - lengths).sum())
        report["tokens"] = int(full.sum())  # the whole texts; word statistics below see the kept tokens
    row_starts = np.zeros(len(ids), bool)
    row_starts[np.cumsum(lengths)[:-1][lengths[1:] > 0]] = True
    if len(ids):
        row_starts[0] = True
    special = pieces.special[ids]
    if "word_ids" in tokens_table.column_names:  # whole-word masking's own words (Chinese segmenter included)
        words, _ = _flat(tokens_table, "word_ids")
        previous = np.concatenate([[-1], words[:-1]])
        starts = (words >= 0) & ((words != previous) | row_starts) & ~special
    else:
        starts = pieces.word_starts(ids, row_starts)
    word_ids = ids[~special]
    starts = starts[~special]
    n_words = int(starts.sum())
    unk = int((ids == tokenizer.unk_token_id).sum()) if tokenizer.unk_token_id is not None else 0
    report.update({
        "unk_tokens": unk,
        "unk_share": unk / max(len(word_ids), 1),
        "words": n_words,
        "word_pieces": len(word_ids),
        "pieces_per_word": len(word_ids) / max(n_words, 1),
        "split_words": _split_words(word_ids, starts, tokenizer, top_n) if pieces.known or "word_ids" in
        tokens_table.column_names else [],
    })
    return report


def _split_words(ids: np.ndarray, starts: np.ndarray, tokenizer, top_n: int) -> list[dict]:
    """The ``top_n`` most frequent words of at least MIN_PIECES pieces (as scripts/suggest_vocab.py would list
    them: with a letter, no [UNK]; most frequent first, then alphabetical)."""
    if not starts.any():
        return []
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, len(ids)))
    long_words = lengths >= MIN_PIECES
    if not long_words.any():
        return []
    # Each long word's piece sequence hashed to one uint64 (a random multiplier per position, sums wrap), so
    # equal words are counted with np.unique instead of a Python loop over millions of words.
    word_of_token = np.repeat(np.arange(len(first)), lengths)
    position = np.arange(len(ids)) - first[word_of_token]
    keep = long_words[word_of_token]
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=int(lengths.max()), dtype=np.uint64) | 1
    with np.errstate(over="ignore"):
        hashed = (ids[keep].astype(np.uint64) + np.uint64(1)) * multipliers[position[keep]]
        sums = np.add.reduceat(hashed, np.flatnonzero(position[keep] == 0))
    _, index, counts = np.unique(sums, return_index=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    long_first, long_lengths = first[long_words], lengths[long_words]
    wanted = top_n * 2
    while True:
        counts_by_word: Counter = Counter()
        for k in order[:wanted]:
            start = long_first[index[k]]
            word = tokenizer.convert_tokens_to_string(
                tokenizer.convert_ids_to_tokens(ids[start:start + long_lengths[index[k]]].tolist())).strip()
            counts_by_word[word] += int(counts[k])
        suggestions = suggest_tokens(counts_by_word, tokenizer, min_frequency=1, min_pieces=MIN_PIECES, top_n=top_n)
        # Enough words kept after suggest_tokens' filter, or no more candidates: the list is final.
        if len(suggestions) >= top_n or wanted >= len(order):
            break
        wanted *= 4
    return [{"word": word, "count": count, "pieces": pieces} for word, count, pieces in suggestions]


def corpus_report(raw, tokenized, examples, tokenizer, args: DataArguments, max_seq_length: int, *,
                  model_name: str | None = None, top_n: int = TOP_WORDS) -> dict:
    """The corpus report as a dict: per split of ``raw`` (text.read_corpus) and ``tokenized`` / ``examples``
    (data.prepare_datasets with ``return_tokenized``) its numbers. A streamed split is only named as streamed
    (the stream is read once, by training); 'mix' (--mix_train_file) counts the general blocks run_mlm.py then mixes
    into 'train' (whose own figures are the domain text's alone)."""
    mode = "nsp" if args.nsp else "line_by_line" if args.line_by_line else "packed"
    pieces = WordPieces(tokenizer)
    splits = {}
    for split, ds in raw.items():
        if split not in tokenized:  # a stream: tokenized on the fly during training
            splits[split] = {"streamed": True}
            continue
        splits[split] = split_report(ds, tokenized[split], examples.get(split), tokenizer, pieces, mode=mode,
                                     max_seq_length=max_seq_length, top_n=top_n)
    if getattr(args, "tokenized_dataset", None) and "train" in examples:  # counted when it was prepared
        splits = {"train": {"prepared": args.tokenized_dataset, "examples": len(examples["train"])}, **splits}
    report = {
        "model": model_name,
        "tokenizer": type(tokenizer).__name__,
        "max_seq_length": max_seq_length,
        "mode": mode,
        "files": {flag: getattr(args, flag) or [] for flag in ("train_file", "validation_file", "mix_train_file")
                  if hasattr(args, flag)},
        "dataset_name": args.dataset_name,
        "splits": splits,
    }
    words = next((s["split_words"] for s in splits.values() if s.get("split_words")), [])
    files = args.train_file  # validation entries may be name=path, which suggest_vocab.py does not take
    if words and files:
        report["suggest_vocab_command"] = shlex.join([
            "python", "scripts/suggest_vocab.py", *(["--model_name_or_path", model_name] if model_name else []),
            "--train_file", *files, *(["--text_column_name", args.text_column_name] if args.text_column_name else []),
            "--min_pieces", str(MIN_PIECES), "--min_frequency", str(min(w["count"] for w in words)),
            "--top_n", str(len(words)), "--output_file", "domain_tokens.txt",
        ])
    return report


SUMMARY_HEADER = ("split", "texts", "characters", "tokens", "examples", "dropped", "truncated", "[UNK]",
                  "pieces/word")
SUMMARY_NOTE = ("tokens: special tokens and text separators included; examples: blocks, lines or pairs used; "
                "dropped: tokens of the final partial block, which packing leaves out; truncated: texts cut to "
                "max_seq_length (--line_by_line; words and [UNK] are then counted in the kept tokens); [UNK]: "
                "share of word pieces.")


def summary_rows(report: dict) -> tuple[list[tuple[str, ...]], list[str]]:
    """The report's totals as rows of strings under SUMMARY_HEADER, and the names of streamed or prepared (uncounted
    here) splits."""
    rows, streamed = [], []
    for split, s in report["splits"].items():
        if s.get("streamed") or s.get("prepared"):
            streamed.append(split)
            continue
        truncated = (f"{s['texts_truncated']:,} ({s['tokens_truncated']:,} tokens)" if "texts_truncated" in s
                     else "-")
        examples = "-" if s["examples"] is None else f"{s['examples']:,}"
        rows.append((split, f"{s['texts']:,}", f"{s['characters']:,}", f"{s['tokens']:,}", examples,
                     f"{s['tokens_dropped']:,}" if "tokens_dropped" in s else "-", truncated,
                     f"{s['unk_tokens']:,} ({100 * s['unk_share']:.2f} %)", f"{s['pieces_per_word']:.3f}"))
    return rows, streamed


def uncounted(split_report: dict) -> str:
    """Why a split has no counts: streamed (read once, by training) or prepared (counted when prepared)."""
    if split_report.get("prepared"):
        return (f"prepared in {split_report['prepared']}, {split_report['examples']:,} examples (its counts are in "
                "its prepared_corpus.json)")
    return "streamed, not counted (the stream is read once, by training)"


def format_report(report: dict) -> str:
    """The report as a readable table, with the shattered words and the command that adds them."""
    lines = [(f"Corpus report ({report['mode'].replace('_', ' ')}, max_seq_length {report['max_seq_length']}, "
             f"tokenizer of {report['model']}):")]
    rows, streamed = summary_rows(report)
    rows = [SUMMARY_HEADER, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(SUMMARY_HEADER))]
    lines += ["  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
              for r in rows]
    lines += [f"  {split}: {uncounted(report['splits'][split])}" for split in streamed]
    lines.append(f"  {SUMMARY_NOTE}")
    for split, s in report["splits"].items():
        if s.get("split_words"):
            shown = ", ".join(f"{w['word']} ({w['count']:,}: {' '.join(w['pieces'])})" for w in s["split_words"])
            lines.append(f"  {split}: most frequent words in {MIN_PIECES}+ pieces: {shown}")
    if report.get("suggest_vocab_command"):
        lines.append(f"  To add them as whole tokens: {report['suggest_vocab_command']}, then run_mlm.py "
                     "--add_tokens domain_tokens.txt")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON at ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def report_corpus(raw, tokenized, examples, tokenizer, args: DataArguments, max_seq_length: int, output_dir: str,
                  **kwargs) -> dict:
    """Build the corpus report (see :func:`corpus_report`), log it and write ``output_dir/corpus_report.json``."""
    report = corpus_report(raw, tokenized, examples, tokenizer, args, max_seq_length, **kwargs)
    logger.info("%s", format_report(report))
    path = write_report(report, Path(output_dir) / REPORT_FILE)
    logger.info("Corpus report written to %s", path)
    return report
