"""FSDP2 sharding of a masked-LM model: each encoder layer one unit, everything else (embeddings, head and the weights
tied between them) the root unit.

The model is sharded here, before the Trainer prepares it; accelerate then leaves a model that is already sharded
as it is (its ``fsdp2_prepare_model`` returns it unchanged) and goes on with the optimizer, checkpoints and the
gathered save. We shard it ourselves because accelerate 1.16's own FSDP2 wrapping fails on BERT-family heads: it
makes each of ``_no_split_modules`` a unit, the embeddings module included, which cuts the word embeddings from the
vocabulary projection tied to them (and then shards them a second time), and even with the embeddings left to its
own tied-embeddings group it leaves BERT's and RoBERTa's tied decoder bias (``cls.predictions.bias``, registered on
the head module too) to another group, which torch 2.13 refuses. One root unit holds every tie, whatever the model.
"""

from __future__ import annotations

import logging

import torch

from mlm_pretraining.errors import InputError

logger = logging.getLogger(__name__)


def fsdp_layer_classes(model) -> list[str]:
    """The names of the layer classes ``model`` is sharded by: its transformers ``_no_split_modules`` (BertLayer,
    RobertaLayer, ModernBertEncoderLayer...) but the one holding the input embeddings, else the class of the blocks in
    its largest ``nn.ModuleList`` (DistilBERT's TransformerBlock: it names none)."""
    embeddings = model.get_input_embeddings()
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    layers = sorted({type(module).__name__ for module in model.modules() if type(module).__name__ in no_split
                     and not any(child is embeddings for child in module.modules())})
    if layers:
        return layers
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not stacks:
        raise InputError(f"--fsdp: {type(model).__name__} has no layer stack to shard by; name its layer class in "
                         "--fsdp_config's transformer_layer_cls_to_wrap.")
    return [type(max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))[0]).__name__]


def shard_by_layers(model, layer_classes: list[str], *, reshard_after_forward: bool = True, mp_policy=None,
                    offload_policy=None) -> int:
    """Apply FSDP2 to ``model`` in place, on the default device mesh (every process): each module whose class is
    named in ``layer_classes`` its own unit, then the root. Return the number of layer units.

    ``reshard_after_forward`` applies to the layers (gathered again for the backward, to save memory); the root,
    which holds the embeddings and head, stays gathered from the forward to the backward, as torch decides for a
    root. ``mp_policy`` / ``offload_policy``: the ``fully_shard`` policies (accelerate's plugin has them)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = set(layer_classes)
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise InputError(f"--fsdp: no module of {type(model).__name__} is a {', '.join(sorted(names))} (--fsdp_config "
                         "transformer_layer_cls_to_wrap); name its layer class, e.g. BertLayer, or leave it out.")
    policies = dict(mp_policy=mp_policy or MixedPrecisionPolicy(), offload_policy=offload_policy)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **policies)
    fully_shard(model, **policies)
    return len(layers)
