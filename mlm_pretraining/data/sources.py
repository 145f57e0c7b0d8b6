"""The front door of the data layer: from the text read by text.py to what the Trainer trains and evaluates on.

One function, :func:`prepare_datasets`, picks the source of the training examples (in memory: tokenized, cached and
packed here; ``--streaming``: a :class:`~mlm_pretraining.data.streaming.PackedStream`; ``--tokenized_dataset``: a
prepared folder, memory-mapped) and cuts every split the same way (packed blocks, single lines or NSP pairs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, interleave_datasets

from mlm_pretraining.data.packing import pack, special_token_template, tokenize
from mlm_pretraining.data.prepared import check_prepared, load_prepared
from mlm_pretraining.data.sentence_pairs import build_pairs
from mlm_pretraining.data.streaming import PackedStream
from mlm_pretraining.data.text import TextStream, read_corpus
from mlm_pretraining.data.whole_word import check_tokenizer, use_chinese_segmentation

if TYPE_CHECKING:
    from arguments import DataArguments

logger = logging.getLogger(__name__)


def read_data(args: DataArguments, whole_word_mask: bool = False, cache_dir: str | None = None) -> DatasetDict:
    """The text to train and evaluate on (:func:`~mlm_pretraining.data.text.read_corpus`), read and checked before
    the model loads; with --tokenized_dataset the prepared folder is checked against this run's flags first, and
    --max_seq_length, when not given, becomes the folder's block length."""
    if args.tokenized_dataset:
        metadata = check_prepared(args.tokenized_dataset, max_seq_length=args.max_seq_length,
                                  line_by_line=args.line_by_line, whole_word_mask=whole_word_mask)
        if args.max_seq_length is None:
            args.max_seq_length = metadata["max_seq_length"]
    return read_corpus(args, cache_dir)


def tokenize_corpus(raw: DatasetDict, tokenizer, args: DataArguments, max_seq_length: int, *,
                    whole_word_mask: bool = False, chinese_word_segmentation: str = "auto") -> DatasetDict:
    """The in-memory splits of ``raw`` tokenized (cached by ``datasets``): whole texts for packing and pairs, truncated
    texts with --line_by_line; ``whole_word_mask`` adds the 'word_ids' column. Streamed and prepared training text
    is not here (:func:`prepare_datasets` reads it)."""
    segment_chinese = _segment_chinese(tokenizer, whole_word_mask, chinese_word_segmentation)
    if whole_word_mask:
        logger.info("Whole-word masking: words from the tokenizer%s.",
                    ", Chinese words from the segmenter" if segment_chinese else "")
    return tokenize(raw, tokenizer, args, max_seq_length, word_ids=whole_word_mask, segment_chinese=segment_chinese)


def prepare_datasets(raw: DatasetDict, tokenizer, args: DataArguments, max_seq_length: int, *,
                     whole_word_mask: bool = False, chinese_word_segmentation: str = "auto", seed: int = 42,
                     tokenized: DatasetDict | None = None) -> dict:
    """{split: examples}: every split tokenized (``tokenized``, from :func:`tokenize_corpus`, when the caller has
    it already), then packed (default), kept as lines or built into NSP pairs (--nsp, drawn with ``seed``), general
    text to mix in ('mix', see :func:`mix_in`) too; --max_train_samples / --max_eval_samples applied. The training
    split comes from its source: in memory; a :class:`PackedStream` with --streaming; the prepared folder of
    --tokenized_dataset, memory-mapped (checked against this tokenizer, length and masking: see prepared.py)."""
    if tokenized is None:
        tokenized = tokenize_corpus(raw, tokenizer, args, max_seq_length, whole_word_mask=whole_word_mask,
                                    chinese_word_segmentation=chinese_word_segmentation)
    segment_chinese = _segment_chinese(tokenizer, whole_word_mask, chinese_word_segmentation)
    prefix, suffix = special_token_template(tokenizer)
    out = {}
    for index, (split, ds) in enumerate(tokenized.items()):
        if args.nsp:
            ds = build_pairs(ds, max_seq_length, prefix, suffix, seed=seed + index, split=split)
        elif not args.line_by_line:
            ds = pack(ds, max_seq_length, prefix, suffix)
        out[split] = ds
    if isinstance(raw.get("train"), TextStream):
        out["train"] = PackedStream(raw["train"], tokenizer, max_seq_length, line_by_line=args.line_by_line,
                                    max_samples=args.max_train_samples, word_ids=whole_word_mask,
                                    segment_chinese=segment_chinese)
    elif getattr(args, "tokenized_dataset", None):
        out["train"] = load_prepared(args.tokenized_dataset, tokenizer, max_seq_length, line_by_line=args.line_by_line,
                                     whole_word_mask=whole_word_mask, segment_chinese=segment_chinese)
    for split, ds in out.items():
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        if limit is not None and isinstance(ds, Dataset):
            out[split] = ds.select(range(min(limit, len(ds))))
    return out


def _segment_chinese(tokenizer, whole_word_mask: bool, mode: str) -> bool:
    """Whether whole words in Chinese text come from the segmenter (see whole_word.py)."""
    if not whole_word_mask:
        return False
    check_tokenizer(tokenizer)
    return use_chinese_segmentation(tokenizer, mode)


def mix_in(train: Dataset, general: Dataset, share: float, seed: int) -> Dataset:
    """Training examples of which ``share`` come from ``general`` text (replayed to limit forgetting).

    All of ``train`` is kept; general examples, shuffled with ``seed``, are added until they make up ``share`` of
    the result (fewer if there are not enough), interleaved at random with ``seed``. The result is an ordinary
    dataset, so epochs, shuffling and exact resume work as without mixing.
    """
    wanted = round(len(train) * share / (1 - share))
    if wanted > len(general):
        logger.warning("--mix_share %.2f wants %d general examples, --mix_train_file has %d: using them all (a share "
                       "of %.3f).", share, wanted, len(general), len(general) / (len(train) + len(general)))
        wanted = len(general)
    general = general.shuffle(seed=seed).select(range(wanted)).flatten_indices()
    mixed = interleave_datasets([train, general], probabilities=[1 - share, share], seed=seed,
                                stopping_strategy="all_exhausted_without_replacement")
    logger.info("Mixed %d general examples into %d training examples (%.1f %%).", wanted, len(train),
                100 * wanted / max(len(mixed), 1))
    return mixed


def evaluation_sets(processed: dict):
    """What the Trainer evaluates: the one evaluation dataset, or {name: dataset} for named sets (the Trainer then
    reports eval_<name>_loss etc.); None when there is none."""
    named = {split[len("validation_"):]: ds for split, ds in processed.items() if split.startswith("validation_")}
    return named or processed.get("validation")


def evaluation_sizes(eval_dataset) -> dict[str, int]:
    """``eval_samples`` (or ``eval_<name>_samples`` per named set) for the results."""
    if isinstance(eval_dataset, dict):
        return {f"eval_{name}_samples": len(ds) for name, ds in eval_dataset.items()}
    return {"eval_samples": len(eval_dataset)}
