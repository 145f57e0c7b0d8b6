"""Dropout with cheap random numbers on the CPU: the same masks' distribution, about a third of the cost.

On a CPU, PyTorch's dropout draws one random number per element with ``bernoulli_`` (~7–12 ns each on an
AVX2 core); in BERT training that is ~15 % of a step, most of it in the attention probabilities (batch × heads ×
length² elements per layer). Here a mask is 32 random bits per element from NumPy's SFC64 generator
(~2 ns), compared with ``round(keep × 2³²)``: each element is kept with probability ``1 − p`` to within 2⁻³²
and scaled by ``1 / (1 − p)``, as ``torch.nn.functional.dropout`` does; the mask is made directly as that float
multiplier (0 or ``1 / (1 − p)``) in NumPy, in blocks drawn in parallel by as many threads as torch's
own, and applied by one multiply forward and one backward. Each mask's generators are seeded from torch's default
generator, so ``torch.manual_seed``/``set_seed`` make runs repeatable and the Trainer's saved RNG state resumes
them exactly; the mask does not depend on the number of threads.

:func:`enable_fast_dropout` applies it to a model without touching its code, weights or saved config: its
``nn.Dropout`` modules get this forward, and attention goes through :func:`attention_forward`, registered with
transformers' ``AttentionInterface``; in evaluation (no dropout) and for CUDA tensors both hand over to PyTorch's own
kernels (SDPA), which are already fast there.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn
from transformers import AttentionInterface, AttentionMaskInterface

from mlm_pretraining.internals import (
    ATTENTION_IMPLEMENTATION,
    sdpa_attention_forward,
    sdpa_mask,
)

logger = logging.getLogger(__name__)

# The profiler range around our dropout, so a profile (scripts/mlm_lab/profiling.py) counts its ops as dropout.
DROPOUT_SCOPE = "fast_dropout"

ATTENTION_NAME = "sdpa_fast_dropout"
_SEED_HIGH = 2**63 - 1


# Masks are drawn in blocks of this many elements, block i from its own SFC64 stream (SeedSequence(seed, (i,))),
# so that torch's intra-op threads can draw the blocks in parallel (NumPy releases the GIL while it draws and
# compares) and the mask is the same whatever the number of threads.
BLOCK = 2**20
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _threads() -> ThreadPoolExecutor:
    """A pool with torch's intra-op thread count (idle while the mask is drawn), made again if that count changed."""
    global _pool
    size = torch.get_num_threads()
    if _pool is None or _pool[0] != size:
        if _pool is not None:
            _pool[1].shutdown(wait=False)
        _pool = (size, ThreadPoolExecutor(max_workers=size, thread_name_prefix="fast_dropout"))
    return _pool[1]


def _forget_pool_after_fork() -> None:  # a forked child (a DataLoader worker) has none of the parent's threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _draw(numel: int, p: float, generator: torch.Generator | None, scale: float | None) -> np.ndarray | None:
    """``numel`` keep decisions, each True with probability ``1 − p`` (bool), or with ``scale`` as multipliers
    (float32: ``scale`` where kept, else 0); None when every element is kept. One draw from ``generator``
    (torch's default CPU generator if None) seeds the SFC64 streams of the blocks."""
    seed = int(torch.randint(0, _SEED_HIGH, (), generator=generator))
    threshold = round((1.0 - p) * 2**32)
    if threshold >= 2**32:  # p so small that every element is kept
        return None
    threshold = np.uint32(threshold)
    out = np.empty(numel, dtype=np.bool_ if scale is None else np.float32)

    def fill(block: int) -> None:
        start, stop = block * BLOCK, min(numel, (block + 1) * BLOCK)
        stream = np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(block,)))
        bits = stream.random_raw((stop - start + 1) // 2).view(np.uint32)[:stop - start]
        if scale is None:
            np.less(bits, threshold, out=out[start:stop])
        else:
            np.multiply(bits < threshold, np.float32(scale), out=out[start:stop])

    blocks = range(-(-numel // BLOCK))
    if len(blocks) > 1 and torch.get_num_threads() > 1:
        list(_threads().map(fill, blocks))
    else:
        for block in blocks:
            fill(block)
    return out


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool CPU tensor of ``shape`` whose elements are True with probability ``1 − p``, independently."""
    kept = _draw(int(np.prod(shape)), p, generator, scale=None)
    return torch.ones(shape, dtype=torch.bool) if kept is None else torch.from_numpy(kept).view(shape)


def keep_multiplier(shape: torch.Size | tuple[int, ...], p: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """A float32 CPU tensor of ``shape``: ``1 / (1 − p)`` where :func:`keep_mask` would be True from the same
    generator state, else 0: dropout's mask and scaling in one tensor, made in NumPy as the bits are compared
    (converting a bool mask in torch and scaling it cost about three times as much)."""
    scale = 1.0 / (1.0 - p)
    multiplier = _draw(int(np.prod(shape)), p, generator, scale=scale)
    if multiplier is None:
        return torch.full(tuple(shape), float(np.float32(scale)))
    return torch.from_numpy(multiplier).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with masks from :func:`keep_multiplier` on the CPU (PyTorch's own elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    # A float multiplier (0 or 1 / (1 − p)): one multiply forward and one backward, where a bool mask would be
    # converted to float in both.
    with torch.profiler.record_function(DROPOUT_SCOPE):
        return x * keep_multiplier(x.shape, p).to(x.dtype)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state, same evaluation behaviour) drawing its masks with :func:`keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # rare; keep PyTorch's in-place semantics rather than imitate them
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Scaled dot-product attention with dropout on the probabilities drawn by :func:`keep_multiplier`.

    Inputs and output as transformers' ``sdpa_attention_forward`` (queries ``[batch, heads, q, d]``, output
    ``[batch, q, heads, d]``); without dropout, off the CPU, or for causal, grouped-query or position-biased
    attention, it *is* that function.
    """
    is_causal = kwargs.get("is_causal")
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    plain = not causal and query.shape[1] == key.shape[1] and kwargs.get("position_bias") is None
    if dropout == 0.0 or dropout >= 1.0 or query.device.type != "cpu" or not plain:  # SDPA's own cases
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    # Scaling the queries rather than the scores: head_dim / k_len of the work, forward and backward.
    q = (query * scaling).reshape(batch * heads, q_len, head_dim)
    k = key.reshape(batch * heads, k_len, head_dim)
    v = value.reshape(batch * heads, k_len, value.shape[-1])
    scores = torch.bmm(q, k.transpose(1, 2)).view(batch, heads, q_len, k_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend; a finite minimum keeps fully masked rows NaN-free
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    with torch.profiler.record_function(DROPOUT_SCOPE):
        probs = probs * keep_multiplier(probs.shape, dropout).to(probs.dtype)
    output = torch.bmm(probs.view(batch * heads, q_len, k_len), v)
    return output.view(batch, heads, q_len, -1).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def enable_fast_dropout(model: nn.Module) -> int:
    """Give ``model``'s dropout fast masks on the CPU; return how many ``nn.Dropout`` modules were switched.

    Attention switches too when the model uses transformers' SDPA attention (BERT, RoBERTa, DistilBERT, ...).
    Nothing saved changes: ``nn.Dropout`` has no state, and the attention choice is restored in ``config.json`` by
    transformers, which does not save ``_attn_implementation``.
    """
    switched = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            switched += 1
    if getattr(model.config, ATTENTION_IMPLEMENTATION, None) == "sdpa":
        model.set_attn_implementation(ATTENTION_NAME)
    logger.info("Fast dropout on the CPU: %d dropout modules%s.", switched,
                ", attention probabilities" if getattr(model.config, ATTENTION_IMPLEMENTATION) == ATTENTION_NAME
                else "")
    return switched
