#!/usr/bin/env python
"""List frequent corpus words that the tokenizer splits into many pieces: candidates for --add_tokens.

    python scripts/suggest_vocab.py --train_file ../shared/data/chemprot/train.jsonl --min_frequency 20 \\
        --min_pieces 3 --top_n 200 --output_file domain_tokens.txt
    python run_mlm.py --train_file ... --add_tokens domain_tokens.txt --output_dir out/domain
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arguments import (
    EMBEDDED_MODEL,
    DataArguments,
    InputError,
    ModelArguments,
    parse_args,
)
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.errors import run_cli
from mlm_pretraining.model.loading import load_tokenizer
from mlm_pretraining.model.vocab import count_words, suggest_tokens


@dataclass
class SuggestArguments:
    """The corpus, the tokenizer, and what counts as a word worth adding."""

    train_file: list[str] = field(default_factory=list, metadata={"help": "Corpus files, folders or globs "
                                                                   "(.txt/.csv/.json/.jsonl), as for run_mlm.py."})
    text_column_name: str | None = field(default=None, metadata={"help": "Text column of .csv/.json files."})
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={"help": "Model whose tokenizer is used."})
    min_frequency: int = field(default=20, metadata={"help": "Only words seen at least this often."})
    min_pieces: int = field(default=3, metadata={"help": "Only words split into at least this many pieces."})
    top_n: int = field(default=100, metadata={"help": "List at most this many words, most frequent first."})
    output_file: str | None = field(default=None, metadata={"help": "Write the words here, one a line: a file for "
                                                             "run_mlm.py --add_tokens."})

    def __post_init__(self):
        if not self.train_file:
            raise InputError("--train_file is required: the corpus to count words in.")
        for name in ("min_frequency", "top_n"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        if self.min_pieces < 2:
            raise InputError(f"--min_pieces must be at least 2 (one piece is already a token), got {self.min_pieces}.")


def main(argv: list[str] | None = None) -> list[tuple[str, int, list[str]]]:
    """Print the suggestions as a table (and write --output_file); return them."""
    (args,) = parse_args(argv, groups=(SuggestArguments,))
    raw = read_corpus(DataArguments(train_file=args.train_file, text_column_name=args.text_column_name,
                                          validation_split_percentage=0))
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=args.model_name_or_path))
    counts = count_words(raw["train"]["text"], tokenizer)
    suggestions = suggest_tokens(counts, tokenizer, min_frequency=args.min_frequency, min_pieces=args.min_pieces,
                                 top_n=args.top_n)
    print(f"{len(suggestions)} word(s) seen >= {args.min_frequency} times and split into >= {args.min_pieces} "
          f"pieces ({len(counts)} distinct words in the corpus):\n")
    print("| word | frequency | pieces | tokens saved |\n|---|---|---|---|")
    for word, frequency, pieces in suggestions:
        print(f"| {word} | {frequency} | {' '.join(pieces)} | {frequency * (len(pieces) - 1)} |")
    if args.output_file:
        Path(args.output_file).write_text("".join(f"{word}\n" for word, _, _ in suggestions), encoding="utf-8")
        print(f"\nWrote {len(suggestions)} word(s) to {args.output_file}; use it with --add_tokens.")
    return suggestions


if __name__ == "__main__":
    run_cli(main, "suggest_vocab.py")
