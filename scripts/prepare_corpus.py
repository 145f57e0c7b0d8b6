#!/usr/bin/env python
"""Tokenize once: the training text tokenized and packed into memory-mapped shards on disk, for
``run_mlm.py --tokenized_dataset``, so no training run (and no process of a torchrun job) tokenizes the corpus again.

    python scripts/prepare_corpus.py --model_name_or_path bert-base-uncased --train_file 'corpus/*.txt' \\
        --max_seq_length 512 --whole_word_mask --output_dir prepared/
    torchrun --nproc_per_node 8 run_mlm.py --model_name_or_path bert-base-uncased --tokenized_dataset prepared/ \\
        --whole_word_mask --validation_file dev.txt --max_steps 100000 --output_dir out

Takes run_mlm.py's model, data and masking flags (the same command with another --output_dir prepares what that
run would train on). Reads --train_file (or --dataset_name's train split) once, in order, as --streaming does;
tokenizes with --preprocessing_num_workers processes (default: every core); packs as run_mlm.py packs (or keeps
lines, --line_by_line); writes Arrow shards of at most --max_shard_mb and, last, prepared_corpus.json (tokenizer
fingerprint, block length, masking settings, counts, each shard's name and size). Evaluation text
(--validation_file) and general text (--mix_train_file) are small and tokenized by run_mlm.py; they are not
prepared. Nothing is held out: the whole --train_file is prepared.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from arguments import (
    NSP_NEEDS_THE_WHOLE_CORPUS,
    DataArguments,
    InputError,
    MaskingArguments,
    ModelArguments,
    parse_args,
)
from mlm_pretraining.data.prepared import METADATA_FILE, SHARD_NAME, prepare_corpus
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.data.whole_word import check_tokenizer, use_chinese_segmentation
from mlm_pretraining.errors import run_cli
from mlm_pretraining.flag_values import read_token_file
from mlm_pretraining.logs import get_logger, setup_logging
from mlm_pretraining.model.loading import (
    load_model,
    load_tokenizer,
    model_class_for,
    resolve_max_seq_length,
)
from mlm_pretraining.model.vocab import add_domain_tokens

logger = get_logger("prepare_corpus")


@dataclass
class PrepareArguments:
    """Where the prepared corpus goes."""

    output_dir: str | None = field(default=None, metadata={"help": "Folder for the shards and prepared_corpus.json "
                                                            "(give it to run_mlm.py --tokenized_dataset)."})
    max_shard_mb: float = field(default=512, metadata={"help": "Start a new shard file once one reaches this many "
                                                       "MB (files are memory-mapped, so size matters little; smaller "
                                                       "shards copy and resume copying more easily)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a corpus already prepared in "
                                                                "--output_dir (its shards and metadata)."})

    def __post_init__(self):
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder the prepared corpus is written to.")
        folder = Path(self.output_dir)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--output_dir '{self.output_dir}' is a file, not a folder; give a folder path.")
        if self.max_shard_mb <= 0:
            raise InputError(f"--max_shard_mb must be positive, got {self.max_shard_mb}.")
        earlier = _prepared_files(folder)
        if earlier and not self.overwrite_output_dir:
            raise InputError(f"--output_dir '{self.output_dir}' already holds a prepared corpus "
                             f"({earlier[0].name}, ...). Choose another folder, or pass --overwrite_output_dir to replace it.")


def _prepared_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    pattern = SHARD_NAME.replace("{:05d}", "*")
    return sorted([*folder.glob(METADATA_FILE), *folder.glob(pattern)])


def main(argv: list[str] | None = None) -> dict:
    """Prepare the corpus; return its metadata (as written to prepared_corpus.json)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, mask_args, prepare_args = parse_args(
        argv, groups=(ModelArguments, DataArguments, MaskingArguments, PrepareArguments))
    setup_logging()
    if data_args.nsp:
        raise InputError(NSP_NEEDS_THE_WHOLE_CORPUS.format(flag="scripts/prepare_corpus.py"))
    if data_args.tokenized_dataset:
        raise InputError("--tokenized_dataset is a prepared corpus already; give the text to prepare with "
                         "--train_file or --dataset_name.")
    if not data_args.train_file and not data_args.dataset_name:
        raise InputError("Give the training text to prepare with --train_file (or --dataset_name).")
    if data_args.validation_file or data_args.mix_train_file:
        logger.info("--validation_file and --mix_train_file are not prepared: run_mlm.py tokenizes them (small) "
                    "when it runs.")
    # Read in order, as --streaming does: a corpus of any size, never all in memory.
    as_stream = dataclasses.replace(data_args, streaming=True, validation_file=None, mix_train_file=None)
    source = read_corpus(as_stream, model_args.cache_dir)["train"]
    tokenizer = load_tokenizer(model_args)
    # The model gives the length limit and takes the --add_tokens rows, so the text is cut as in training.
    model = load_model(model_args, tokenizer, model_class_for(model_args))
    if model_args.add_tokens:
        add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    del model
    if mask_args.whole_word_mask:
        check_tokenizer(tokenizer)
    segment_chinese = mask_args.whole_word_mask and use_chinese_segmentation(tokenizer,
                                                                             mask_args.chinese_word_segmentation)
    for path in _prepared_files(Path(prepare_args.output_dir)):  # --overwrite_output_dir: only what we wrote
        path.unlink()
    description = {"source": {"train_file": data_args.train_file, "dataset_name": data_args.dataset_name,
                              "text_column": source.column,
                              "text_bytes": sum(os.path.getsize(f) for f in source.files)},
                   "command": shlex.join(["python", "scripts/prepare_corpus.py", *argv])}
    metadata = prepare_corpus(source, tokenizer, prepare_args.output_dir, max_seq_length=max_seq_length,
                              line_by_line=data_args.line_by_line, whole_word_mask=mask_args.whole_word_mask,
                              segment_chinese=segment_chinese,
                              chinese_word_segmentation=mask_args.chinese_word_segmentation,
                              num_workers=data_args.preprocessing_num_workers or os.cpu_count() or 1,
                              max_shard_bytes=int(prepare_args.max_shard_mb * 2**20), description=description)
    print(f"Prepared {metadata['num_blocks']:,} {'examples' if data_args.line_by_line else 'blocks'} of "
          f"{max_seq_length} tokens ({metadata['num_tokens']:,} tokens from {metadata['num_texts']:,} texts) in "
          f"{len(metadata['shards'])} shard(s), {metadata['seconds']} s, in {prepare_args.output_dir}.\n"
          f"Train on it: python run_mlm.py --model_name_or_path {model_args.model_name_or_path} --tokenized_dataset "
          f"{prepare_args.output_dir}{' --whole_word_mask' if mask_args.whole_word_mask else ''} --output_dir ...")
    return metadata


if __name__ == "__main__":
    run_cli(main, "prepare_corpus.py")
