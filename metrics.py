"""Evaluation metrics for masked-LM: masked-token accuracy (batch by batch, flat memory) and perplexity."""

from __future__ import annotations

import math

import torch


def preprocess_logits_for_metrics(logits, labels: torch.Tensor) -> torch.Tensor:
    """Reduce logits to predicted ids on the device, so evaluation never keeps full-vocabulary logits.

    Accepts the full head's ``(batch, length, vocab)`` logits, or a sparse head's ``(n_masked, vocab)`` logits
    (one row per label that is not -100, in order), which are scattered back to ``(batch, length)``.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    predictions = logits.argmax(dim=-1)
    if predictions.shape == labels.shape:
        return predictions
    full = torch.full_like(labels, -100)
    full[labels != -100] = predictions.to(full.dtype)
    return full


class MaskedAccuracy:
    """``compute_metrics`` for the Trainer with ``batch_eval_metrics``: accumulates counts, reports at the end."""

    def __init__(self):
        self.correct = 0
        self.total = 0

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        predictions = torch.as_tensor(eval_pred.predictions)
        labels = torch.as_tensor(eval_pred.label_ids)
        chosen = labels != -100
        self.correct += int((predictions[chosen] == labels[chosen]).sum())
        self.total += int(chosen.sum())
        if not compute_result:
            return {}
        result = {"accuracy": self.correct / max(self.total, 1), "masked_tokens": float(self.total)}
        self.correct = self.total = 0
        return result


def perplexity(loss: float) -> float:
    """exp(loss), or inf when that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
