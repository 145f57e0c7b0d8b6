"""The sparse prediction head: score only the masked positions, so ~85 % of the vocabulary projection is skipped.

Only about 15 % of positions carry a label, yet a masked-LM head projects every position onto the whole vocabulary
(for MiniLM that is as many FLOPs as the six encoder layers). :func:`enable_sparse_prediction` gives one model
instance a forward that runs the encoder, gathers the hidden states at the labelled positions and applies the
model's *own* head modules to those rows only. The loss is the same cross-entropy over the same tokens, the
parameters and the state dict are untouched (``save_pretrained`` writes a normal ``AutoModelForMaskedLM``
checkpoint), and a call without ``labels`` (inference, fill-mask) runs the original forward and returns full logits.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import MaskedLMOutput

from mlm_pretraining.internals import MLM_HEAD_ATTRIBUTES, MODERNBERT_SPARSE_SWITCH

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's head as one function of hidden states: its modules (internals.MLM_HEAD_ATTRIBUTES) in order."""
    modules = [getattr(model, name) for name in MLM_HEAD_ATTRIBUTES[type(model).__name__]]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        for module in modules:
            hidden = module(hidden)
        return hidden

    return head


# Masked-LM classes whose head maps each position's hidden state independently to vocabulary logits.
HEADS = tuple(MLM_HEAD_ATTRIBUTES)
# Classes with a sparse prediction of their own, switched by an attribute their forward reads (from their config).
OWN_SPARSE_PREDICTION = ("ModernBertForMaskedLM",)


def supports_sparse_prediction(model) -> bool:
    """Whether :func:`enable_sparse_prediction` can make this model score only the labelled positions."""
    return type(model).__name__ in HEADS or type(model).__name__ in OWN_SPARSE_PREDICTION


def enable_sparse_prediction(model) -> bool:
    """Make ``model`` score only labelled positions whenever it is called with ``labels``; return whether it could.

    Models of other classes are left as they are (the full head runs, with the same loss), and this is logged.
    """
    name = type(model).__name__
    if name in OWN_SPARSE_PREDICTION:
        # ModernBERT's forward reads `self.sparse_prediction` (set from config.sparse_prediction at init); the
        # instance attribute switches it on without changing the config that save_pretrained writes.
        setattr(model, MODERNBERT_SPARSE_SWITCH, True)
        logger.info("Sparse prediction head on (%s's own): the vocabulary projection runs only at masked "
                    "positions.", name)
        return True
    if name not in HEADS:
        logger.info("Sparse prediction is not available for %s (known: %s); using the model's full head, which "
                    "gives the same loss but projects every position onto the vocabulary.", name,
                    ", ".join(HEADS + OWN_SPARSE_PREDICTION))
        return False
    head = _head(model)
    # Bound on the instance, not the class: other instances, the state dict and saved checkpoints stay as they are,
    # and DDP / accelerate's autocast wrapping still go through `model.forward`.
    model.forward = types.MethodType(_sparse_forward_for(head), model)
    model.sparse_prediction = True
    logger.info("Sparse prediction head on: the vocabulary projection runs only at masked positions.")
    return True


def disable_sparse_prediction(model) -> None:
    """Undo :func:`enable_sparse_prediction` (the class's own forward is used again)."""
    if "forward" in vars(model):
        del model.forward
    model.sparse_prediction = bool(getattr(model.config, "sparse_prediction", False))


def _sparse_forward_for(head: Callable[[torch.Tensor], torch.Tensor]):
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """Encoder on every position, head and loss on the labelled ones; logits are ``(n_labelled, vocab)``.

        The loss is the mean over this batch's labelled tokens, as the full head's; MLMTrainer.compute_loss
        turns it into the mean over the optimizer step (the one place the loss is normalised)."""
        kwargs.pop("num_items_in_batch", None)  # passed by the Trainer to models that take **kwargs; unused here
        if labels is None:
            return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs.pop("return_dict", None)
        outputs = self.base_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = outputs[0]
        labels = labels.to(hidden.device)
        chosen = labels != IGNORE_INDEX
        logits = head(hidden[chosen])
        targets = labels[chosen]
        loss = F.cross_entropy(logits, targets, reduction="sum") / max(targets.numel(), 1)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)

    return forward
