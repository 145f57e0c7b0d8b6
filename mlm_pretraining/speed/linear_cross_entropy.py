"""The head's vocabulary projection and its cross-entropy in one step, a chunk of rows at a time, with the gradients
computed in the forward pass: the same loss and gradients as ``F.cross_entropy(F.linear(x, W, b), y, "sum")``.

Done the plain way, the masked rows' logits ([n, vocab]: 75 MB for 600 masked tokens of BERT's 30,522) are
written by the projection, copied into a log-softmax, kept for the backward pass, then met by a zero-filled gradient
of the same size, a log-softmax backward and the projection's backward: some ten passes over fresh blocks of that
size. Here each chunk of at most ``chunk_rows`` rows is projected, turned into log-probabilities (one row-wise pass,
in cache), exponentiated in place into softmax − one-hot, and used at once for the three gradient products
(input rows, weight, bias); the loss is the sum of the targets' −log-probabilities. No [n, vocab] block outlives its
chunk, the backward pass only scales the stored gradients by the incoming one, and no extra matrix product is spent
on recomputing logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The profiler range around the fused loss, so a profile (scripts/mlm_lab/profiling.py) counts its ops as
# cross-entropy.
CROSS_ENTROPY_SCOPE = "linear_cross_entropy"


# Logits per chunk at most this many bytes (128 MiB: about 1,100 rows of BERT's 30,522-token vocabulary, so the
# ~600 masked tokens of a 32 × 128 batch are one chunk, while a large batch never holds all its logits at once).
CHUNK_BYTES = 128 * 2**20


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that a chunk's fp32 logits take at most CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T + bias`` ([n, vocab] logits) against ``targets`` ([n] class ids,
    all valid), in float32, without holding all the logits at once. Under autocast (mixed precision) it is the plain
    ``F.cross_entropy(F.linear(...))``, so autocast's casting rules apply unchanged."""
    if torch.is_autocast_enabled(hidden.device.type):
        return F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets,
                                     chunk_rows or default_chunk_rows(weight.shape[0]))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        wants_bias = wants_bias and bias is not None
        with torch.profiler.record_function(CROSS_ENTROPY_SCOPE):
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = hidden.new_empty(hidden.shape) if wants_hidden else None
            grad_weight = grad_bias = None
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = hidden[start:start + chunk_rows]
                chunk_targets = targets[start:start + chunk_rows, None]
                logits = torch.addmm(bias, rows, weight.t()) if bias is not None else rows @ weight.t()
                log_probs = torch.log_softmax(logits, dim=1, dtype=torch.float32)
                del logits
                loss -= log_probs.gather(1, chunk_targets).sum()
                if not (wants_hidden or wants_weight or wants_bias):
                    continue
                # d(loss)/d(logits) = softmax − one-hot, written over the log-probabilities.
                grad_logits = log_probs.exp_().scatter_add_(
                    1, chunk_targets, torch.full(chunk_targets.shape, -1.0, device=hidden.device))
                grad_logits = grad_logits.to(weight.dtype)
                if wants_hidden:
                    torch.mm(grad_logits, weight, out=grad_hidden[start:start + chunk_rows])
                if wants_weight:
                    grad_weight = grad_logits.t().mm(rows) if grad_weight is None else \
                        grad_weight.addmm_(grad_logits.t(), rows)
                if wants_bias:
                    grad_bias = grad_logits.sum(0) if grad_bias is None else grad_bias.add_(grad_logits.sum(0))
            if wants_weight and grad_weight is None:  # no rows
                grad_weight = torch.zeros_like(weight)
            if wants_bias and grad_bias is None:
                grad_bias = torch.zeros_like(bias)
        ctx.gradients = (grad_hidden, grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.gradients is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice through the same graph (retain_graph); "
                               "its gradients are computed in the forward pass and used once.")
        gradients, ctx.gradients = ctx.gradients, None
        # The stored gradients are the summed loss's; the incoming gradient only scales them (by 1 / n, say).
        grad_hidden, grad_weight, grad_bias = (None if g is None else g.mul_(grad_loss) for g in gradients)
        return grad_hidden, grad_weight, grad_bias, None, None
