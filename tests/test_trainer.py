"""MLMTrainer: the loss is the mean over all masked tokens of an optimizer step, normalised in one place."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from arguments import MLMTrainingArguments
from mlm_pretraining.sparse_head import enable_sparse_prediction
from mlm_pretraining.trainer import MLMTrainer


def micro_batches(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for rows, masked in ((2, 3), (3, 9)):  # unequal masked counts, so a mean of means would differ
        ids = torch.randint(5, 60, (rows, 12), generator=generator)
        labels = torch.full_like(ids, -100)
        positions = torch.randperm(rows * 12, generator=generator)[:masked]
        labels.view(-1)[positions] = ids.view(-1)[positions]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


@pytest.mark.parametrize("sparse", [False, True])
def test_accumulated_micro_batches_give_the_token_mean_of_the_whole_step(tmp_path, sparse):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, hidden_dropout_prob=0, attention_probs_dropout_prob=0))
    model.eval()
    first, second = micro_batches()
    joined = {k: torch.cat([first[k], second[k]]) for k in first}
    whole_step_mean = model(**joined).loss.item()
    mean_of_means = (model(**first).loss.item() + model(**second).loss.item()) / 2
    assert abs(whole_step_mean - mean_of_means) > 1e-3  # the test can tell the two apart
    if sparse:
        enable_sparse_prediction(model)
    trainer = MLMTrainer(model=model, args=MLMTrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                                use_cpu=True))
    count = torch.tensor(int((joined["labels"] != -100).sum()))
    with torch.no_grad():
        losses = [trainer.compute_loss(model, b, num_items_in_batch=count).item() for b in (first, second)]
    assert sum(losses) == pytest.approx(whole_step_mean, abs=1e-5)
    # Without a count (e.g. a model that takes no loss kwargs) the model's own batch mean is kept.
    assert trainer.compute_loss(model, first).item() == pytest.approx(model(**first).loss.item(), abs=1e-6)
