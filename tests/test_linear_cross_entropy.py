"""mlm_pretraining/linear_cross_entropy.py: the same loss and gradients as F.cross_entropy(F.linear(...)), chunked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from mlm_pretraining.speed.linear_cross_entropy import (
    default_chunk_rows,
    linear_cross_entropy,
)
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction


def problem(n=37, hidden=16, vocab=101, seed=0, bias=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, hidden, generator=generator, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=generator) * 0.5).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,), generator=generator)
    return x, weight, b, targets


def gradients(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk_rows", [1, 5, 37, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_equal_plain_cross_entropy_for_any_chunking(chunk_rows, bias):
    x, weight, b, targets = problem(bias=bias)
    # A scaled loss, as the sparse head divides by the masked-token count and the Trainer rescales it.
    plain = F.cross_entropy(F.linear(x, weight, b), targets, reduction="sum") * 0.37
    fused = linear_cross_entropy(x, weight, b, targets, chunk_rows=chunk_rows) * 0.37
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    assert plain.item() > 10  # a real loss
    for got, want in zip(gradients(fused, (x, weight, b)), gradients(plain, (x, weight, b))):
        assert got.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_only_the_wanted_gradients_are_computed_and_frozen_weights_get_none():
    x, weight, b, targets = problem()
    weight.requires_grad_(False)  # e.g. tied embeddings frozen during the head warm-up
    loss = linear_cross_entropy(x, weight, b, targets, chunk_rows=8)
    loss.backward()
    assert weight.grad is None and x.grad is not None and b.grad is not None
    x2, _, b2, _ = (t.detach().clone().requires_grad_() if t is not None and t.dtype.is_floating_point else t
                    for t in (x, weight, b, targets))
    F.cross_entropy(F.linear(x2, weight, b2), targets, reduction="sum").backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.grad, b2.grad, atol=1e-6, rtol=1e-5)


def test_no_rows_gives_zero_loss_and_zero_gradients():
    x, weight, b, targets = problem(n=0)
    loss = linear_cross_entropy(x, weight, b, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(b.grad) == 0 and x.grad.shape == (0, 16)


def test_without_gradients_it_only_scores():
    x, weight, b, targets = problem()
    with torch.no_grad():
        loss = linear_cross_entropy(x, weight, b, targets, chunk_rows=4)
        plain = F.cross_entropy(F.linear(x, weight, b), targets, reduction="sum")
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_a_second_backward_through_the_same_graph_is_refused():
    x, weight, b, targets = problem()
    loss = linear_cross_entropy(x, weight, b, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_under_autocast_it_is_the_plain_cross_entropy():
    x, weight, b, targets = problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(x, weight, b, targets)
        plain = F.cross_entropy(F.linear(x, weight, b), targets, reduction="sum")
    assert fused.item() == plain.item()


def test_default_chunk_holds_at_most_128_mib_of_logits():
    assert default_chunk_rows(30522) == 1099  # BERT: the ~600 masked tokens of a 32 x 128 batch are one chunk
    assert default_chunk_rows(250002) * 250002 * 4 <= 128 * 2**20  # XLM-R
    assert default_chunk_rows(10**10) == 1


def test_tied_bert_head_in_training_gets_the_full_heads_gradients_on_embeddings_and_both_biases():
    # The decoder weight is the word-embedding matrix and the decoder bias is cls.predictions.bias: their gradients
    # from the fused loss must add up with the embedding lookup's exactly as with the full head.
    config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 97, (4, 20), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.3, ids, -100)
    model.train()
    full = model(input_ids=ids, labels=labels)
    full.loss.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_sparse_prediction(model)
    fused = model(input_ids=ids, labels=labels)
    assert fused.logits is None  # the fused path ran
    fused.loss.backward()
    assert fused.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=1e-6, rtol=1e-4, msg=name)
    assert want["bert.embeddings.word_embeddings.weight"].abs().sum() > 0
    assert want["cls.predictions.bias"].abs().sum() > 0
