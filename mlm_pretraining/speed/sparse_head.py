"""The sparse prediction head: score only the masked positions, so ~85 % of the vocabulary projection is skipped.

Only about 15 % of positions carry a label, yet a masked-LM head projects every position onto the whole vocabulary
(for MiniLM that is as many FLOPs as the six encoder layers). :func:`enable_sparse_prediction` gives one model
instance a forward that runs the encoder, gathers the hidden states at the labelled positions and applies the
model's *own* head modules to those rows only. The loss is the same cross-entropy over the same tokens, the
parameters and the state dict are untouched (``save_pretrained`` writes a normal ``AutoModelForMaskedLM``
checkpoint), and a call without ``labels`` (inference, fill-mask) runs the original forward and returns full logits.

In training (gradients on, ``model.training``) the head runs without its vocabulary projection, and the projection
and the cross-entropy are done together by :func:`~mlm_pretraining.linear_cross_entropy.linear_cross_entropy`
(chunked, gradients in the forward pass), so no [masked tokens, vocab] logits block is kept; such a call returns
no logits. In evaluation the head runs whole and returns the masked rows' logits, for the accuracy metric.

Under FSDP2 the model is sharded after this (trainer.settle_fsdp): ``fully_shard`` swaps the instance's class for a
subclass made on the fly (FSDPBertForMaskedLM), so the head is looked up by the model's own class
(:func:`_model_class`), and the sparse forward runs as the model's forward, inside the root unit's forward hooks: the
head modules and the projection's weight read there are the root's parameters as FSDP gathered them for this forward
(embeddings, head and their ties are the root unit), and the gradients of the fused loss land on those gathered
parameters, which FSDP reduce-scatters after the backward as it does the full head's.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_outputs import MaskedLMOutput

from mlm_pretraining.internals import (
    MLM_DECODER_ATTRIBUTES,
    MLM_HEAD_ATTRIBUTES,
    MODERNBERT_SPARSE_SWITCH,
)
from mlm_pretraining.speed.linear_cross_entropy import linear_cross_entropy

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _fsdp_module() -> type | None:
    """FSDP2's unit class (torch.distributed.fsdp.FSDPModule), or None where torch has no distributed package."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _model_class(model) -> type:
    """The model's own class: FSDP2's ``fully_shard`` makes the instance's class a subclass of it made on the fly
    (FSDPBertForMaskedLM, bases FSDPModule and BertForMaskedLM), which the tables of internals do not name. Only that
    wrapping is seen through: a user's subclass of BertForMaskedLM may change the head, and is not taken for one."""
    unit = _fsdp_module()
    if unit is None:
        return type(model)
    return next(cls for cls in type(model).__mro__ if not issubclass(cls, unit))


def _projection_in_a_unit_of_its_own(model) -> bool:
    """Whether the vocabulary projection, or a module between the model and it, is an FSDP2 unit of its own (an
    untied head named in --fsdp_config's transformer_layer_cls_to_wrap). Its weight is then gathered only while that
    unit's forward runs and is a shard again after it, so it cannot be taken out and fused with the loss. Our own
    sharding (model/sharding.py) leaves the head in the root unit, whose forward hooks enclose the whole sparse
    forward."""
    unit = _fsdp_module()
    if unit is None or not isinstance(model, unit):
        return False
    module = model
    for name in MLM_DECODER_ATTRIBUTES[_model_class(model).__name__].split("."):
        module = getattr(module, name)
        if isinstance(module, unit):
            return True
    return False


def _head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's head as one function of hidden states: its modules (internals.MLM_HEAD_ATTRIBUTES) in order,
    looked up at each call (so :func:`_without_decoder` can take the projection out)."""
    names = MLM_HEAD_ATTRIBUTES[_model_class(model).__name__]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        for name in names:
            hidden = getattr(model, name)(hidden)
        return hidden

    return head


@contextmanager
def _without_decoder(model) -> Iterator[nn.Module]:
    """While open, the head's vocabulary projection (internals.MLM_DECODER_ATTRIBUTES) is an identity, so the head
    returns the features the projection would take; yields the projection module."""
    parent_path, _, name = MLM_DECODER_ATTRIBUTES[_model_class(model).__name__].rpartition(".")
    parent = model.get_submodule(parent_path)
    decoder = getattr(parent, name)
    setattr(parent, name, nn.Identity())
    try:
        yield decoder
    finally:
        setattr(parent, name, decoder)


# Masked-LM classes whose head maps each position's hidden state independently to vocabulary logits.
HEADS = tuple(MLM_HEAD_ATTRIBUTES)
# Classes with a sparse prediction of their own, switched by an attribute their forward reads (from their config).
OWN_SPARSE_PREDICTION = ("ModernBertForMaskedLM",)


def enable_sparse_prediction(model) -> bool:
    """Make ``model`` score only labelled positions whenever it is called with ``labels``; return whether it could.

    Models of other classes are left as they are (the full head runs, with the same loss), and this is logged.
    """
    name = _model_class(model).__name__
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


def _sparse_forward_for(head: Callable[[torch.Tensor], torch.Tensor]):
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """Encoder on every position, head and loss on the labelled ones; logits are ``(n_labelled, vocab)`` in
        evaluation, None in training (the projection is fused with the loss; unless FSDP2 shards the projection in
        a unit of its own: then the head runs whole, through that unit's forward, on the labelled rows).

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
        targets = labels[chosen]
        logits = None
        if self.training and torch.is_grad_enabled() and not _projection_in_a_unit_of_its_own(self):
            # Under FSDP2 this runs inside the root unit's forward (see the module's docstring): ``decoder.weight`` is
            # the root's parameter as gathered for this forward, and its gradient, computed here, lands on it.
            with _without_decoder(self) as decoder:
                features = head(hidden[chosen])
            weight = decoder.weight
            if weight.dim() == 2 and weight.shape[1] == features.shape[-1]:
                loss = linear_cross_entropy(features, weight, decoder.bias, targets)
            else:  # a weight only its module can use (e.g. partitioned by DeepSpeed ZeRO-3): the plain way
                loss = F.cross_entropy(decoder(features), targets, reduction="sum")
        else:
            logits = head(hidden[chosen])
            loss = F.cross_entropy(logits, targets, reduction="sum")
        loss = loss / max(targets.numel(), 1)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)

    return forward
