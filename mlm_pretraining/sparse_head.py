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

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _distilbert_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    # DistilBERT keeps its head as four attributes of the model rather than one module.
    return lambda hidden: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))


# Masked-LM classes whose head maps each position's hidden state independently to vocabulary logits, and where it is.
HEADS: dict[str, Callable] = {
    "BertForMaskedLM": lambda model: model.cls,
    "RobertaForMaskedLM": lambda model: model.lm_head,
    "XLMRobertaForMaskedLM": lambda model: model.lm_head,
    "CamembertForMaskedLM": lambda model: model.lm_head,
    "DistilBertForMaskedLM": _distilbert_head,
    "ModernBertForMaskedLM": lambda model: (lambda hidden: model.decoder(model.head(hidden))),
}


def supports_sparse_prediction(model) -> bool:
    """Whether :func:`enable_sparse_prediction` knows where this model's head is."""
    return type(model).__name__ in HEADS


def enable_sparse_prediction(model) -> bool:
    """Make ``model`` score only labelled positions whenever it is called with ``labels``; return whether it could.

    Models of other classes are left as they are (the full head runs, with the same loss), and this is logged.
    """
    name = type(model).__name__
    if name not in HEADS:
        logger.info("Sparse prediction is not available for %s (known: %s); using the model's full head, which "
                    "gives the same loss but projects every position onto the vocabulary.", name, ", ".join(HEADS))
        return False
    head = HEADS[name](model)
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
    model.sparse_prediction = False


def _sparse_forward_for(head: Callable[[torch.Tensor], torch.Tensor]):
    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        """Encoder on every position, head and loss on the labelled ones; logits are ``(n_labelled, vocab)``."""
        if labels is None:
            return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        kwargs.pop("return_dict", None)
        outputs = self.base_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = outputs[0]
        labels = labels.to(hidden.device)
        chosen = labels != IGNORE_INDEX
        logits = head(hidden[chosen])
        targets = labels[chosen]
        # The Trainer passes the number of labelled tokens in the whole (accumulated, all-device) batch; dividing
        # the sum by it is the exact mean over that batch. Alone, it is the mean over this batch, as the full head.
        total = F.cross_entropy(logits, targets, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
        loss = total / torch.as_tensor(count, device=total.device, dtype=total.dtype).clamp(min=1)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)

    return forward
