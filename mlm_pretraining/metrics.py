"""Evaluation metrics for masked-LM: masked-token accuracy (batch by batch, flat memory), perplexity, and
next-sentence-prediction accuracy with the MLM loss on its own when the model also trains NSP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def preprocess_logits_for_metrics(logits, labels):
    """Reduce logits to predicted ids on the device, so evaluation never keeps full-vocabulary logits.

    Accepts the full head's ``(batch, length, vocab)`` logits, or a sparse head's ``(n_masked, vocab)`` logits
    (one row per label that is not -100, in order), which are scattered back to ``(batch, length)``.
    With NSP (BertForPreTraining) ``logits`` is ``(prediction_logits, seq_relationship_logits)`` and ``labels``
    is ``(labels, next_sentence_label)``; then the result is ``(mlm_predictions, nsp_predictions, mlm_loss)``
    where ``mlm_loss`` holds each row's summed cross-entropy over its masked tokens.
    """
    if isinstance(labels, (tuple, list)):
        mlm_logits, nsp_logits = logits[0], logits[1]
        labels = labels[0]
        return (_mlm_predictions(mlm_logits, labels), nsp_logits.argmax(dim=-1), _row_mlm_loss(mlm_logits, labels))
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return _mlm_predictions(logits, labels)


def _mlm_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    predictions = logits.argmax(dim=-1)
    if predictions.shape == labels.shape:
        return predictions
    full = torch.full_like(labels, -100)
    full[labels != -100] = predictions.to(full.dtype)
    return full


def _row_mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each row's masked tokens, from full or sparse logits."""
    chosen = labels != -100
    masked_logits = logits[chosen] if logits.dim() == 3 else logits
    losses = F.cross_entropy(masked_logits.float(), labels[chosen], reduction="none")
    rows = chosen.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], device=losses.device).index_add_(0, rows, losses)


class MLMMetrics:
    """``compute_metrics`` for the Trainer with ``batch_eval_metrics``: masked-token accuracy and perplexity.

    Counts accumulate batch by batch (memory stays flat however many sequences are evaluated) and are reported
    and reset on the last batch. Perplexity is exp of the mean of the per-sample losses the Trainer passes with
    ``include_for_metrics=["loss"]``, the same mean it reports as ``eval_loss``. With NSP the model's loss adds
    the NSP loss, so it also reports ``nsp_accuracy`` and ``mlm_loss`` (mean over masked tokens), and perplexity
    is exp(``mlm_loss``).
    """

    def __init__(self):
        self._reset()

    def _reset(self):
        self.correct = self.total = 0
        self.nsp_correct = self.nsp_total = 0
        self.mlm_loss_sum = 0.0
        self.loss_sum, self.loss_count = 0.0, 0

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        nsp = isinstance(labels, (tuple, list))
        if nsp:
            predictions, nsp_predictions, mlm_loss = predictions
            labels, nsp_labels = labels
            nsp_labels = torch.as_tensor(nsp_labels)
            self.nsp_correct += int((torch.as_tensor(nsp_predictions).view(-1) == nsp_labels.view(-1)).sum())
            self.nsp_total += nsp_labels.numel()
            self.mlm_loss_sum += float(torch.as_tensor(mlm_loss).sum())
        predictions = torch.as_tensor(predictions)
        labels = torch.as_tensor(labels)
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
        if self.nsp_total:
            result["nsp_accuracy"] = self.nsp_correct / self.nsp_total
            result["mlm_loss"] = self.mlm_loss_sum / max(self.total, 1)
            result["perplexity"] = perplexity(result["mlm_loss"])
        elif self.loss_count:
            result["perplexity"] = perplexity(self.loss_sum / self.loss_count)
        self._reset()
        return result


def perplexity(loss: float) -> float:
    """exp(loss), or inf when that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
