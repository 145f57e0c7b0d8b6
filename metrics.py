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


class MLMMetrics:
    """``compute_metrics`` for the Trainer with ``batch_eval_metrics``: masked-token accuracy and perplexity.

    Counts accumulate batch by batch (memory stays flat however many sequences are evaluated) and are reported
    and reset on the last batch. Perplexity is exp of the mean of the per-sample losses the Trainer passes with
    ``include_for_metrics=["loss"]``, the same mean it reports as ``eval_loss``.
    """

    def __init__(self):
        self._reset()

    def _reset(self):
        self.correct = self.total = 0
        self.loss_sum, self.loss_count = 0.0, 0

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        predictions = torch.as_tensor(eval_pred.predictions)
        labels = torch.as_tensor(eval_pred.label_ids)
        chosen = labels != -100
        self.correct += int((predictions[chosen] == labels[chosen]).sum())
        self.total += int(chosen.sum())
        losses = getattr(eval_pred, "losses", None)
        if losses is not None:
            losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
            self.loss_sum += float(losses.sum())
            self.loss_count += losses.numel()
        if not compute_result:
            return {}
        result = {"accuracy": self.correct / max(self.total, 1), "masked_tokens": float(self.total)}
        if self.loss_count:
            result["perplexity"] = perplexity(self.loss_sum / self.loss_count)
        self._reset()
        return result


def perplexity(loss: float) -> float:
    """exp(loss), or inf when that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
