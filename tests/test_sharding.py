"""FSDP2 sharding of a masked-LM model (mlm_pretraining.model.sharding): which layers become units, for every model
family the sparse head knows; a sharded model computes what the unsharded one does with its ties intact; and the
accelerate behaviour the design relies on (a model already sharded is left as it is)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from mlm_pretraining.errors import InputError
from mlm_pretraining.model.sharding import fsdp_layer_classes, shard_by_layers

SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**SIZES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


@pytest.mark.parametrize("model, layers", [
    (lambda: tiny_bert(), ["BertLayer"]),  # BertEmbeddings is in its _no_split_modules too: left to the root
    (lambda: RobertaForMaskedLM(RobertaConfig(**SIZES)), ["RobertaLayer"]),
    (lambda: ModernBertForMaskedLM(ModernBertConfig(**SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                    cls_token_id=1, sep_token_id=2)), ["ModernBertEncoderLayer"]),
    # DistilBERT names no _no_split_modules: the blocks of its largest ModuleList
    (lambda: DistilBertForMaskedLM(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
     ["TransformerBlock"]),
])
def test_each_family_is_sharded_by_its_encoder_layers(model, layers):
    assert fsdp_layer_classes(model()) == layers


@pytest.fixture
def process_group():
    """A one-process gloo group, so fully_shard runs in the test process (a device mesh of one CPU)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_sharded_model_computes_the_same_loss_and_gradients_with_its_ties_kept(process_group):
    """Layers are units, the rest the root; the decoder stays tied to the word embeddings and to the head's bias,
    and a training step's loss and gradients equal the unsharded model's."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    reference, sharded = tiny_bert(), tiny_bert()
    assert shard_by_layers(sharded, ["BertLayer"]) == 2
    assert isinstance(sharded, FSDPModule) and isinstance(sharded.bert.encoder.layer[0], FSDPModule)
    assert not isinstance(sharded.bert.embeddings, FSDPModule)  # in the root, with the head it is tied to
    assert sharded.cls.predictions.decoder.weight is sharded.bert.embeddings.word_embeddings.weight
    assert sharded.cls.predictions.decoder.bias is sharded.cls.predictions.bias
    assert all(isinstance(p, DTensor) for p in sharded.parameters())

    ids = torch.randint(5, 99, (2, 12), generator=torch.Generator().manual_seed(1))
    losses = [model(input_ids=ids, labels=ids).loss for model in (reference, sharded)]
    for loss in losses:
        loss.backward()
    assert losses[1].item() == pytest.approx(losses[0].item(), abs=1e-6)
    expected = dict(reference.named_parameters())
    for name, param in sharded.named_parameters():
        assert torch.allclose(param.grad.full_tensor(), expected[name].grad, atol=1e-6), name


def test_accelerate_leaves_a_model_already_sharded_as_it_is(process_group):
    """The design relies on accelerate's FSDP2 preparation returning a sharded model unchanged (so our units stand
    and its own wrapping, which breaks BERT's ties, never runs): this fails, naming the function, if that changes."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    model = tiny_bert()
    shard_by_layers(model, ["BertLayer"])
    parameters = [id(p) for p in model.parameters()]
    assert fsdp2_prepare_model(None, model) is model, "accelerate.utils.fsdp_utils.fsdp2_prepare_model"
    assert [id(p) for p in model.parameters()] == parameters


def test_a_layer_class_the_model_lacks_is_refused():
    with pytest.raises(InputError, match="no module of BertForMaskedLM is a RobertaLayer .*transformer_layer_cls_to"):
        shard_by_layers(tiny_bert(), ["RobertaLayer"])
