"""Masking for masked-language-model training: a pure function on tensors and the collator around it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Keys a feature may carry that are per-token sequences, with the value used to pad them.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "word_ids")
# A streamed block's position in the corpus (streaming.PackedStream), passed through as a (batch, fields) tensor for
# the Trainer to note and remove when a training step takes the batch; never a model input.
STREAM_POSITION = "stream_position"


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_token_id: int,
    random_token_ids: torch.Tensor,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    word_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose tokens for masked-LM and corrupt them; return ``(masked_input_ids, labels)``.

    ``input_ids`` and ``special_tokens_mask`` are ``(batch, length)``; positions where ``special_tokens_mask``
    is true (special tokens and padding) are never chosen. Masking is done per *unit*: a unit is a token, or,
    when ``word_ids`` is given, a word (all positions sharing a non-negative word id within a row). Each unit is
    chosen with ``mlm_probability``; a chosen unit becomes ``mask_token_id`` with ``mask_replace_prob``, a token
    drawn uniformly from ``random_token_ids`` with ``random_replace_prob``, and stays unchanged otherwise.
    Every row with at least one candidate gets at least one chosen unit, so no batch row has an empty loss.
    ``labels`` hold the original id at chosen positions and -100 everywhere else. The inputs are not modified.
    """
    if input_ids.dim() != 2 or special_tokens_mask.shape != input_ids.shape:
        raise ValueError("mask_tokens expects input_ids and special_tokens_mask of the same (batch, length) shape")
    batch, length = input_ids.shape
    candidates = ~special_tokens_mask.bool()
    positions = torch.arange(length).expand(batch, length)
    units = positions if word_ids is None else word_ids.long()
    candidates &= units >= 0
    # One unit id per (row, unit), so units in different rows never share a draw.
    row_offset = torch.arange(batch)[:, None] * length
    unit_index = torch.where(candidates, units.clamp(0, length - 1) + row_offset, 0)

    # Draw for every possible unit slot so the random stream does not depend on the content.
    chosen_unit = torch.rand(batch * length, generator=generator) < mlm_probability
    action_draw = torch.rand(batch * length, generator=generator)
    rescue_draw = torch.rand(batch, length, generator=generator)
    random_pick = torch.randint(len(random_token_ids), (batch, length), generator=generator)

    chosen = candidates & chosen_unit[unit_index]
    # A row with candidates but no chosen unit gets one unit, picked uniformly among its candidate tokens.
    needs_rescue = candidates.any(dim=1) & ~chosen.any(dim=1)
    if needs_rescue.any():
        rescue_pos = torch.where(candidates, rescue_draw, -1.0).argmax(dim=1)
        rescue_units = unit_index[torch.arange(batch), rescue_pos][needs_rescue]
        chosen_unit[rescue_units] = True
        chosen = candidates & chosen_unit[unit_index]

    labels = torch.where(chosen, input_ids, -100)
    action = action_draw[unit_index]
    to_mask = chosen & (action < mask_replace_prob)
    to_random = chosen & (action >= mask_replace_prob) & (action < mask_replace_prob + random_replace_prob)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_token_ids.to(input_ids.dtype)[random_pick[to_random]]
    return masked, labels


def _content_seed(seed: int, ids: Sequence[int], epoch: int | None = None) -> int:
    """A seed that depends only on ``seed``, ``epoch`` and the token ids, so a sequence gets the same mask in every
    batch, whatever else is in the batch and however the batch is split across processes."""
    key = str(seed) if epoch is None else f"{seed}:{epoch}"
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8, key=key.encode())
    return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def pad_features(features: Sequence[Mapping[str, Any]], pad_values: Mapping[str, int], pad_to_multiple_of: int | None):
    """Right-pad each per-token key present in every feature to the batch's longest row; return tensors."""
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch = {}
    for key, pad in pad_values.items():
        if not all(key in f for f in features):
            continue
        out = torch.full((len(features), width), pad, dtype=torch.long)
        for row, f in enumerate(features):
            out[row, : lengths[row]] = torch.as_tensor(np.asarray(f[key]), dtype=torch.long)
        batch[key] = out
    lengths = torch.tensor(lengths)
    batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return batch



def check_mask_probabilities(mlm_probability: float, mask_replace_prob: float, random_replace_prob: float) -> None:
    """The one rule for the masking rates (the collator's arguments and the flags of the same names): a ValueError
    naming the flag otherwise."""
    if not 0 < mlm_probability < 1:
        raise ValueError(f"--mlm_probability must be between 0 and 1 (exclusive), got {mlm_probability}.")
    for name, value in (("mask_replace_prob", mask_replace_prob), ("random_replace_prob", random_replace_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"--{name} must be between 0 and 1, got {value}.")
    if mask_replace_prob + random_replace_prob > 1 + 1e-9:
        raise ValueError("--mask_replace_prob + --random_replace_prob must be at most 1 (the rest stay unchanged), "
                         f"got {mask_replace_prob} + {random_replace_prob}.")


class MLMCollator:
    """Pads a list of features and masks them for masked-LM with :func:`mask_tokens`.

    Features are mappings with ``input_ids`` and optionally ``attention_mask``, ``token_type_ids``,
    ``special_tokens_mask``, ``word_ids`` (used when ``whole_word_mask``), ``next_sentence_label`` and
    ``stream_position`` (passed through).
    With ``seed=None`` masks are drawn afresh from torch's global generator at every call (dynamic masking,
    checkpointed with the Trainer's RNG state, but different when the same batch is split across processes). With
    an integer ``seed`` each sequence's mask is a function of the seed, :attr:`epoch` and its token ids alone: the
    same in every batch, every process and every resumed run. ``epoch=None`` (evaluation) gives fixed masks;
    training sets ``epoch`` at each epoch start (see ``callbacks.MaskEpochCallback``) so masks change every epoch;
    a feature's own ``mask_epoch`` (streaming: the pass over the stream) takes precedence.
    With ``defer_masking`` a call only pads (:meth:`pad`); the caller masks with :meth:`mask` at the rate it
    chooses (a mask-rate schedule: ``trainer.MLMTrainer.get_batch_samples``).
    """

    def __init__(
        self,
        tokenizer,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        seed: int | None = None,
        whole_word_mask: bool = False,
        defer_masking: bool = False,
    ):
        if tokenizer.mask_token_id is None:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) has no mask token, so it cannot be used for masked-LM. "
                "Pick a masked-LM model (BERT, RoBERTa, DistilBERT, ModernBERT, ...) or a tokenizer with a mask token."
            )
        check_mask_probabilities(mlm_probability, mask_replace_prob, random_replace_prob)
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.whole_word_mask = whole_word_mask
        self.defer_masking = defer_masking
        self.epoch: int | None = None
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_token_ids = vocab[~torch.isin(vocab, self.special_ids)]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_values = {"input_ids": pad_id, "token_type_ids": 0, "special_tokens_mask": 1, "word_ids": -1}

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(features)
        return batch if self.defer_masking else self.mask(batch)

    def pad(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """The padded batch before masking: with 'special_tokens_mask' (never masked), 'word_ids' (whole-word
        masking) and, when seeded, 'mask_seed' (one per row, from (seed, epoch, tokens)); :meth:`mask` uses and
        removes them."""
        batch = pad_features(features, self.pad_values, self.pad_to_multiple_of)
        special = (batch["attention_mask"] == 0) | torch.isin(batch["input_ids"], self.special_ids)
        if "special_tokens_mask" in batch:
            special |= batch["special_tokens_mask"].bool()
        batch["special_tokens_mask"] = special
        word_ids = batch.pop("word_ids", None)
        if self.whole_word_mask and word_ids is None:
            raise ValueError("whole_word_mask needs 'word_ids' in every feature (see data.py, tokenize with word ids)")
        if self.whole_word_mask:
            batch["word_ids"] = word_ids
        if self.seed is not None:
            batch["mask_seed"] = torch.tensor(
                [_content_seed(self.seed, f["input_ids"], f.get("mask_epoch", self.epoch)) for f in features],
                dtype=torch.long)
        if all("next_sentence_label" in f for f in features):
            batch["next_sentence_label"] = torch.tensor([int(f["next_sentence_label"]) for f in features])
        if all(STREAM_POSITION in f for f in features):
            batch[STREAM_POSITION] = torch.tensor([f[STREAM_POSITION] for f in features], dtype=torch.long)
        return batch

    def mask(self, batch: dict[str, torch.Tensor], mlm_probability: float | None = None) -> dict[str, torch.Tensor]:
        """Mask a batch from :meth:`pad` at ``mlm_probability`` (default: the collator's); adds 'labels'.

        Masking runs on the CPU (the generators are CPU ones); the results go back to the batch's device.
        """
        kwargs = dict(
            mask_token_id=self.tokenizer.mask_token_id,
            random_token_ids=self.random_token_ids,
            mlm_probability=self.mlm_probability if mlm_probability is None else mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        device = batch["input_ids"].device
        input_ids = batch["input_ids"].cpu()
        special = batch.pop("special_tokens_mask").cpu().bool()
        word_ids = batch.pop("word_ids", None)
        word_ids = None if word_ids is None else word_ids.cpu()
        seeds = batch.pop("mask_seed", None)
        if seeds is None:
            masked, labels = mask_tokens(input_ids, special, word_ids=word_ids, **kwargs)
        else:
            # Each row is masked on its own, unpadded, so its mask cannot depend on the rest of the batch.
            masked, labels = input_ids.clone(), torch.full_like(input_ids, -100)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            for row, (seed, n) in enumerate(zip(seeds.tolist(), lengths)):
                row_masked, row_labels = mask_tokens(
                    input_ids[row : row + 1, :n],
                    special[row : row + 1, :n],
                    word_ids=None if word_ids is None else word_ids[row : row + 1, :n],
                    generator=torch.Generator().manual_seed(seed),
                    **kwargs,
                )
                masked[row, :n], labels[row, :n] = row_masked[0], row_labels[0]
        batch["input_ids"], batch["labels"] = masked.to(device), labels.to(device)
        return batch
