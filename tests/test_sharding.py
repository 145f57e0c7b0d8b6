"""FSDP2 sharding of a masked-LM model (mlm_pretraining.model.sharding): which layers become units, for every model
family the sparse head knows; a sharded model computes what the unsharded one does with its ties intact, with the
sparse prediction head too; and the accelerate behaviour the design relies on (a model already sharded is left as it
is)."""

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
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction

SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_bert(**config) -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**SIZES, **NO_DROPOUT, **config))


def tiny(kind: str):
    """A tiny masked-LM model of each family the sparse head knows, without dropout, the same weights each call."""
    if kind == "bert":
        return tiny_bert()
    torch.manual_seed(0)
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(**SIZES, **NO_DROPOUT, pad_token_id=1))
    if kind == "distilbert":
        return DistilBertForMaskedLM(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                      dropout=0.0, attention_dropout=0.0))
    return ModernBertForMaskedLM(ModernBertConfig(**SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                  cls_token_id=1, sep_token_id=2, embedding_dropout=0.0,
                                                  mlp_dropout=0.0, attention_dropout=0.0))


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


def masked_batch():
    """Token ids and labels at about a fifth of the positions (-100 elsewhere), as the collator makes them."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (2, 12), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.2, ids, -100)
    labels[0, 3] = ids[0, 3]  # never an empty selection
    return ids, labels


def step(model, ids, labels):
    """A training step's loss and gradients (gathered from their shards), by parameter name."""
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {name: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
             for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "modernbert"])
def test_the_sparse_head_on_a_sharded_model_gives_the_full_heads_loss_and_gradients(process_group, kind):
    """As build_trainer does it: the sparse head switched on, then the model sharded (fully_shard renames its class,
    FSDPBertForMaskedLM, which the head's tables do not name). A training step's loss and every gradient, the tied
    projection's included, equal the unsharded model's with its full head: the head ran inside the root unit's
    forward, on the parameters FSDP gathered, and their gradients reached the shards."""
    from torch.distributed.fsdp import FSDPModule

    reference, sharded = tiny(kind), tiny(kind)
    assert enable_sparse_prediction(sharded)
    shard_by_layers(sharded, fsdp_layer_classes(sharded))
    assert isinstance(sharded, FSDPModule) and type(sharded).__name__ == f"FSDP{type(reference).__name__}"
    ids, labels = masked_batch()
    (full, full_grads), (sparse, sparse_grads) = step(reference, ids, labels), step(sharded, ids, labels)
    if kind != "modernbert":  # its own sparse prediction keeps its plain loss and logits
        assert sparse.logits is None  # the projection was fused with the loss, not run as the full head
    assert sparse.loss.item() == pytest.approx(full.loss.item(), abs=1e-6)
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)

    sharded.eval()  # evaluation: the labelled positions' logits, the full head's there
    with torch.no_grad():
        scored, expected = sharded(input_ids=ids, labels=labels), reference.eval()(input_ids=ids, labels=labels)
    torch.testing.assert_close(scored.logits, expected.logits[labels != -100], atol=1e-5, rtol=1e-5)


def test_a_projection_sharded_in_a_unit_of_its_own_runs_through_that_units_forward(process_group):
    """An untied head made a unit of its own (--fsdp_config transformer_layer_cls_to_wrap naming it) holds its
    projection's weight gathered only while that unit runs: taken out and fused with the loss it would be a shard
    (the negative control: that fails), so the sparse head runs the head whole, through the unit's forward, on the
    labelled rows: the full head's loss and gradients."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from mlm_pretraining.speed.linear_cross_entropy import linear_cross_entropy

    reference, sharded = tiny_bert(tie_word_embeddings=False), tiny_bert(tie_word_embeddings=False)
    enable_sparse_prediction(sharded)
    shard_by_layers(sharded, ["BertLayer", "BertOnlyMLMHead"])
    assert isinstance(sharded.cls, FSDPModule)
    decoder = sharded.cls.predictions.decoder
    assert isinstance(decoder.weight, DTensor)  # outside the unit's forward: a shard
    with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
        linear_cross_entropy(torch.ones(3, 32), decoder.weight, decoder.bias, torch.tensor([5, 6, 7]))
    ids, labels = masked_batch()
    (full, full_grads), (sparse, sparse_grads) = step(reference, ids, labels), step(sharded, ids, labels)
    assert sparse.logits.shape == ((labels != -100).sum().item(), 99)  # the masked rows only
    assert sparse.loss.item() == pytest.approx(full.loss.item(), abs=1e-6)
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
