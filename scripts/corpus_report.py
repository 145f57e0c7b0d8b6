#!/usr/bin/env python
"""What run_mlm.py would train on, without training: texts, characters, tokens, blocks, what packing drops and
truncation cuts, the [UNK] share, pieces per word and the frequent words the tokenizer shatters.

    python scripts/corpus_report.py --train_file corpus.txt --validation_file dev.txt --max_seq_length 128 \\
        --output_dir out/report
    python scripts/corpus_report.py --model_name_or_path bert-base-uncased --train_file data/ --line_by_line \\
        --output_file report.json

Takes run_mlm.py's model, data and masking flags (tokenization is cached, so the training run that follows reuses
it); prints the summary and writes the JSON run_mlm.py writes as output_dir/corpus_report.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arguments import (
    DataArguments,
    InputError,
    MaskingArguments,
    ModelArguments,
    parse_args,
)
from mlm_pretraining.data.sources import prepare_datasets, tokenize_corpus
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.errors import run_cli
from mlm_pretraining.flag_values import read_token_file
from mlm_pretraining.model.loading import (
    load_model,
    load_tokenizer,
    model_class_for,
    resolve_max_seq_length,
)
from mlm_pretraining.model.vocab import add_domain_tokens
from mlm_pretraining.reporting.corpus_report import (
    REPORT_FILE,
    corpus_report,
    format_report,
    write_report,
)


@dataclass
class ReportArguments:
    """Where the report goes."""

    output_dir: str | None = field(default=None, metadata={"help": f"Write {REPORT_FILE} in this folder (the "
                                                            "run's --output_dir, say)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the JSON report to this file instead."})
    seed: int = field(default=42, metadata={"help": "Seed of the --nsp pairs, as run_mlm.py's --seed."})

    def __post_init__(self):
        if not self.output_dir and not self.output_file:
            raise InputError("Give --output_dir (the report goes to its corpus_report.json) or --output_file.")
        if self.output_dir and Path(self.output_dir).is_file():
            raise InputError(f"--output_dir '{self.output_dir}' is a file, not a folder; give a folder path.")


def main(argv: list[str] | None = None) -> dict:
    """Print the corpus report and write it as JSON; return it."""
    model_args, data_args, mask_args, report_args = parse_args(
        argv, groups=(ModelArguments, DataArguments, MaskingArguments, ReportArguments))
    raw = read_corpus(data_args, model_args.cache_dir)  # with --streaming, 'train' is a stream: named, not read
    tokenizer = load_tokenizer(model_args)
    # The model gives the length limit and takes the --add_tokens rows, so words are cut as in training.
    model = load_model(model_args, tokenizer, model_class_for(model_args, nsp=data_args.nsp))
    if model_args.add_tokens:
        add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    words = dict(whole_word_mask=mask_args.whole_word_mask,
                 chinese_word_segmentation=mask_args.chinese_word_segmentation)
    tokenized = tokenize_corpus(raw, tokenizer, data_args, max_seq_length, **words)
    examples = prepare_datasets(raw, tokenizer, data_args, max_seq_length, **words, seed=report_args.seed,
                                tokenized=tokenized)
    report = corpus_report(raw, tokenized, examples, tokenizer, data_args, max_seq_length,
                           model_name=model_args.model_name_or_path)
    path = write_report(report, report_args.output_file or Path(report_args.output_dir) / REPORT_FILE)
    print(format_report(report))
    print(f"\nWrote {path}")
    return report


if __name__ == "__main__":
    run_cli(main, "corpus_report.py")
