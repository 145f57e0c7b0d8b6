"""Fast CPU dropout: the same distribution as torch's dropout, repeatable under torch's seed, invisible when saved."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from mlm_pretraining import speed
from mlm_pretraining.speed import fast_dropout
from mlm_pretraining.speed.fast_dropout import (
    ATTENTION_NAME,
    FastDropout,
    attention_forward,
    dropout,
    enable_fast_dropout,
    keep_mask,
    keep_multiplier,
)

N = 2_000_000


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_p_on_every_half_of_the_random_words(p):
    torch.manual_seed(0)
    mask = keep_mask((N,), p)
    assert mask.dtype == torch.bool and mask.shape == (N,)
    sigma = math.sqrt(p * (1 - p) / (N / 2))
    # Each 64-bit draw feeds two elements: both halves must be full 32-bit uniforms.
    for half in (mask[0::2], mask[1::2]):
        assert abs(half.float().mean().item() - (1 - p)) < 5 * sigma
    # Neighbours are independent: P(both kept) = (1 − p)².
    both = (mask[:-1] & mask[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / N) * 2


def test_keep_mask_follows_torchs_seed():
    torch.manual_seed(3)
    first = keep_mask((4, 1000), 0.1)
    second = keep_mask((4, 1000), 0.1)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((4, 1000), 0.1), first)
    assert not torch.equal(first, second)
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(keep_mask((4, 1000), 0.1, generator=generator), first)


def test_tiny_p_keeps_everything():
    assert keep_mask((1000,), 1e-12).all()
    assert torch.equal(keep_multiplier((1000,), 1e-12), torch.full((1000,), 1 / (1 - 1e-12)))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_multiplier_is_the_keep_mask_scaled_by_one_over_keep(p):
    generator = torch.Generator().manual_seed(7)
    mask = keep_mask((40, 500), p, generator=generator)
    multiplier = keep_multiplier((40, 500), p, generator=generator.manual_seed(7))
    assert multiplier.dtype == torch.float32 and multiplier.shape == (40, 500)
    assert 0 < mask.float().mean() < 1
    torch.testing.assert_close(multiplier, mask.float() / (1 - p), rtol=0, atol=0)


def test_dropout_zeroes_or_scales_and_its_gradient_uses_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(300, 200, requires_grad=True)
    y = dropout(x, 0.2)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.8, rtol=0, atol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.8, rtol=0, atol=1e-6)


def test_dropout_is_the_identity_in_evaluation_and_at_p_zero_and_zero_at_p_one():
    x = torch.randn(50, 7)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = FastDropout(0.3).eval()
    assert torch.equal(module(x), x)


def test_dropout_matches_torchs_in_mean_and_variance():
    """Over many draws the output has the statistics of torch's dropout: E = x, Var = x² p / (1 − p)."""
    torch.manual_seed(0)
    x = torch.full((400_000,), 2.0)
    p = 0.1
    for out in (dropout(x, p), torch.nn.functional.dropout(x, p)):
        assert abs(out.mean().item() - 2.0) < 5 * math.sqrt(4 * p / (1 - p) / x.numel())
        assert abs(out.var().item() - 4 * p / (1 - p)) < 0.02


def reference_attention(q, k, v, bool_mask, mask, p, scaling):
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~bool_mask, torch.finfo(scores.dtype).min)
    return ((torch.softmax(scores, -1) * mask / (1 - p)) @ v).transpose(1, 2)


def test_attention_equals_the_textbook_formula_with_the_same_mask_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 8, 4)
    q, k, v = (torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3))
    attend = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    attend[1, :, :, 6:] = False  # padded keys in the second sequence
    torch.manual_seed(5)
    out, weights = attention_forward(None, q, k, v, attend, dropout=0.25, scaling=0.5)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(5)
    mask = keep_mask((2, 3, 8, 8), 0.25)
    expected = reference_attention(q, k, v, attend, mask, 0.25, 0.5)
    expected.square().sum().backward()
    assert weights is None and out.shape == (2, 8, 3, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad, rtol=1e-5, atol=1e-6)


def test_attention_with_every_key_masked_stays_finite():
    q = k = v = torch.randn(1, 2, 4, 8)
    nothing = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    out, _ = attention_forward(None, q, k, v, nothing, dropout=0.1)
    assert torch.isfinite(out).all()


def test_attention_leaves_causal_attention_to_sdpa():
    class Decoder(torch.nn.Module):
        is_causal = True

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=generator) for _ in range(3))
    out, _ = attention_forward(Decoder(), q, k, v, None, dropout=0.5)
    # Dropout aside, position 0 of a causal attention sees only itself: its output is v[0] scaled or zero.
    first = out[0, 0]
    assert all(torch.allclose(row, v[0, h, 0] * 2) or not row.any() for h, row in enumerate(first))


def tiny_bert():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=40))


def test_enable_switches_every_dropout_and_attention_and_training_uses_them(monkeypatch):
    model = tiny_bert()
    assert enable_fast_dropout(model) == 7  # embeddings + 2 layers × (attention module, attention out, ffn out)
    assert model.config._attn_implementation == ATTENTION_NAME
    shapes = []
    real = fast_dropout.keep_multiplier
    monkeypatch.setattr(fast_dropout, "keep_multiplier",
                        lambda shape, p, **kw: shapes.append(tuple(shape)) or real(shape, p))
    inputs = torch.randint(5, 60, (3, 16))
    model.train()
    model(input_ids=inputs)
    assert shapes.count((3, 2, 16, 16)) == 2  # attention probabilities, one per layer
    assert shapes.count((3, 16, 32)) == 5  # hidden states: embeddings + 2 per layer


def test_training_is_repeatable_under_the_seed_and_evaluation_is_unchanged():
    plain, fast = tiny_bert(), tiny_bert()
    enable_fast_dropout(fast)
    inputs = torch.randint(5, 60, (3, 16))
    attention_mask = torch.ones_like(inputs)
    attention_mask[2, 10:] = 0
    fast.train()
    torch.manual_seed(1)
    first = fast(input_ids=inputs, attention_mask=attention_mask).logits
    second = fast(input_ids=inputs, attention_mask=attention_mask).logits
    torch.manual_seed(1)
    assert torch.equal(fast(input_ids=inputs, attention_mask=attention_mask).logits, first)
    assert not torch.equal(first, second)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast(input_ids=inputs, attention_mask=attention_mask).logits,
                               plain(input_ids=inputs, attention_mask=attention_mask).logits, rtol=0, atol=1e-6)


def test_saved_model_is_the_plain_checkpoint(tmp_path):
    model = tiny_bert()
    enable_fast_dropout(model)
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert ATTENTION_NAME not in config and "Fast" not in config
    reloaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.config._attn_implementation == "sdpa"
    assert all(type(m).__name__ != "FastDropout" for m in reloaded.modules())
    assert json.loads(config)["hidden_dropout_prob"] == 0.1


def test_run_mlm_uses_it_unless_switched_off(tiny_model_dir, corpus, tmp_path, monkeypatch):
    import run_mlm

    switched = []
    monkeypatch.setattr(speed, "enable_fast_dropout", lambda model: switched.append(enable_fast_dropout(model)))
    flags = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--max_seq_length", "32",
             "--per_device_train_batch_size", "4", "--max_steps", "1", "--do_eval", "false", "--report_to", "none",
             "--save_strategy", "no"]
    run_mlm.main(flags + ["--output_dir", str(tmp_path / "off"), "--fast_dropout", "false"])
    assert switched == []
    run_mlm.main(flags + ["--output_dir", str(tmp_path / "on")])
    assert switched == [7]


def test_masks_do_not_depend_on_the_thread_count_and_blocks_differ():
    numel = fast_dropout.BLOCK * 2 + 12345  # three blocks, the last one partial
    threads = torch.get_num_threads()
    try:
        masks = []
        for count in (1, 2):
            torch.set_num_threads(count)
            masks.append(keep_multiplier((numel,), 0.1, generator=torch.Generator().manual_seed(11)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1])
    first, second = masks[0][:fast_dropout.BLOCK], masks[0][fast_dropout.BLOCK:2 * fast_dropout.BLOCK]
    assert not torch.equal(first, second)  # each block has its own stream
    assert abs((masks[0] > 0).float().mean().item() - 0.9) < 0.002
