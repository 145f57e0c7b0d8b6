"""Turning text into model examples: tokens (cached), then packed blocks, single lines or NSP pairs; general text
mixed in; a streamed training split packed on the fly. Reading the text is text.py's job."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    Sequence,
    Value,
    interleave_datasets,
)

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

    raw = DatasetDict({split: ds for split, ds in raw.items() if isinstance(ds, Dataset)})  # streams: on the fly
    if not raw:
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
                     seed: int = 42, return_tokenized: bool = False) -> dict:
    """Tokenize, then pack (default), keep lines or build NSP pairs (--nsp, drawn with ``seed``); mix general
    text into training (--mix_train_file, --mix_share); apply --max_train_samples / --max_eval_samples.
    ``whole_word_mask`` adds the 'word_ids' column. A streamed 'train' split becomes a :class:`PackedStream`.
    ``return_tokenized`` returns ``(examples, tokenized texts)``, for the corpus report."""
    from mlm_pretraining.streaming import (
        PackedStream,  # streaming builds on this module's packing rules
    )

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
        out[split] = ds
    if isinstance(raw.get("train"), IterableDataset):
        out["train"] = PackedStream(raw["train"], "text", tokenizer, max_seq_length, line_by_line=args.line_by_line,
                                    max_samples=args.max_train_samples)
    if "mix" in out:
        mix = out.pop("mix")
        if "train" in out:
            out["train"] = mix_in(out["train"], mix, args.mix_share, seed)
    for split, ds in out.items():
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        if limit is not None and isinstance(ds, Dataset):
            out[split] = ds.select(range(min(limit, len(ds))))
    return (out, tokenized) if return_tokenized else out


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
