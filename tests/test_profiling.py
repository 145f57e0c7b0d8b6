"""mlm_pretraining/profiling.py: ops land in the right class, forward and backward, and the shares of a profiled
step sum to 100 %."""

from __future__ import annotations

import time

import pytest
import torch
from mlm_lab.profiling import (
    ATTENTION,
    COPIES,
    CROSS_ENTROPY,
    DROPOUT,
    ELEMENTWISE,
    MATMUL,
    OP_CLASSES,
    OPTIMIZER,
    OTHER,
    SOFTMAX,
    StepProfiler,
    classify_events,
    classify_op,
    op_class_seconds,
    op_class_table,
    shares,
)
from transformers import BertConfig, BertForMaskedLM

from mlm_pretraining.speed.fast_dropout import enable_fast_dropout
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction


@pytest.mark.parametrize("name, scopes, expected", [
    ("aten::addmm", ["aten::linear"], MATMUL),
    ("aten::mm", ["MmBackward0"], MATMUL),
    ("aten::bmm", [], ATTENTION),
    ("aten::mm", ["aten::matmul", "aten::_scaled_dot_product_attention_math"], ATTENTION),
    ("aten::_softmax", ["aten::softmax"], SOFTMAX),
    ("aten::_log_softmax", ["aten::cross_entropy_loss"], CROSS_ENTROPY),
    ("aten::exp_", ["linear_cross_entropy"], CROSS_ENTROPY),
    ("aten::addmm", ["linear_cross_entropy"], MATMUL),  # the head's matrix products stay matrix products
    ("aten::mul", ["fast_dropout"], DROPOUT),
    ("aten::bernoulli_", ["aten::native_dropout"], DROPOUT),
    ("aten::copy_", ["aten::clone", "aten::reshape"], COPIES),
    ("aten::fill_", ["aten::zero_"], COPIES),
    ("aten::gelu_backward", [], ELEMENTWISE),
    ("aten::native_layer_norm", [], ELEMENTWISE),
    ("aten::_fused_adamw_", [], OPTIMIZER),
    ("aten::mul_", ["aten::_foreach_mul_"], OPTIMIZER),  # gradient clipping
    ("aten::add_", ["Optimizer.step#AdamW.step"], OPTIMIZER),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", [], OTHER),
])
def test_ops_are_classified_by_name_and_scope(name, scopes, expected):
    assert classify_op(name, scopes) == expected


def tiny_bert():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, max_position_embeddings=64))


def profiled_step(model, optimizer):
    ids = torch.randint(5, 500, (8, 32))
    labels = torch.where(torch.rand(ids.shape) < 0.15, ids, -100)
    with torch.profiler.profile() as profiler:
        start = time.perf_counter()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        wall = time.perf_counter() - start
    return op_class_seconds(profiler.events(), wall), wall


def test_a_profiled_training_step_puts_time_in_every_class_it_runs_and_the_shares_sum_to_one():
    model = tiny_bert()
    enable_sparse_prediction(model)
    enable_fast_dropout(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    profiled_step(model, optimizer)  # warm-up
    seconds, wall = profiled_step(model, optimizer)
    assert set(seconds) == set(OP_CLASSES)
    assert sum(seconds.values()) == pytest.approx(max(wall, sum(seconds.values())))
    assert sum(shares(seconds).values()) == pytest.approx(1.0)
    for name in (MATMUL, ATTENTION, SOFTMAX, CROSS_ENTROPY, DROPOUT, ELEMENTWISE, OPTIMIZER):
        assert seconds[name] > 0, name


def test_backward_ops_take_the_class_of_the_forward_op_that_made_them():
    # A multiply inside the dropout range: its backward multiply is dropout too; a plain multiply's is elementwise.
    x = torch.randn(256, 256, requires_grad=True)
    with torch.profiler.profile() as profiler:
        with torch.profiler.record_function("fast_dropout"):
            dropped = x * torch.rand(256, 256)
        (dropped * 3.0).sum().backward()
    backward_muls = [name for event, name in classify_events(profiler.events())
                     if event.name == "aten::mul" and event.cpu_parent is not None
                     and event.cpu_parent.name == "MulBackward0"]
    assert sorted(backward_muls) == sorted([DROPOUT, ELEMENTWISE])


def test_time_in_no_op_is_other_and_a_table_totals_100_percent():
    with torch.profiler.profile() as profiler:
        start = time.perf_counter()
        torch.randn(300, 300) @ torch.randn(300, 300)
        time.sleep(0.05)  # Python time, in no op
        wall = time.perf_counter() - start
    seconds = op_class_seconds(profiler.events(), wall)
    assert seconds[OTHER] >= 0.04
    assert sum(seconds.values()) == pytest.approx(wall)
    table = op_class_table({"a": seconds, "b": {name: 1.0 for name in OP_CLASSES}})
    total_row = next(line for line in table.splitlines() if "total" in line)
    assert total_row.count("100.0%") == 2
    assert "11.1%" in next(line for line in table.splitlines() if "optimizer" in line)  # 1 of 9 seconds


def test_step_profiler_profiles_the_steps_it_is_told(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_bert()
    ids = torch.randint(5, 500, (24, 16))
    data = [{"input_ids": row, "labels": row} for row in ids]
    profiler = StepProfiler(first_step=1, steps=2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[profiler]).train()
    assert profiler.wall_seconds > 0 and profiler.seconds is not None
    assert sum(profiler.seconds.values()) == pytest.approx(profiler.wall_seconds, rel=1e-6)
    per_step = profiler.per_step()
    assert sum(per_step.values()) == pytest.approx(profiler.wall_seconds / 2, rel=1e-6)
    assert per_step[MATMUL] > 0 and per_step[OPTIMIZER] > 0
