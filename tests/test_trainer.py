"""mlm_pretraining/trainer.py: the loss averaged over the step's masked tokens, evaluation batches from their own
collator (the same masks at every evaluation), and build_trainer's wiring of collators, callbacks and speed-ups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TEXTS, blocks, make_trainer
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from arguments import MLMTrainingArguments, parse_args
from collators import MLMCollator
from mlm_pretraining.callbacks import GracefulStopCallback, MaskEpochCallback
from mlm_pretraining.metrics import MLMMetrics, preprocess_logits_for_metrics
from mlm_pretraining.reporting.plotting import TrainingCurveCallback
from mlm_pretraining.speed.fast_dropout import ATTENTION_NAME
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction
from mlm_pretraining.trainer import MLMTrainer, build_trainer

# --- evaluation masks --------------------------------------------------------------------------------------------

def test_eval_collator_gives_the_same_masks_every_call_and_other_masks_under_another_seed(tiny_model_dir,
                                                                                         tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "a", "--seed", "3")
    collate = trainer.eval_data_collator
    assert collate is not trainer.data_collator  # the training collator's epoch must not reach evaluation
    first = collate(blocks(tiny_tokenizer))
    # What happens between two evaluations: training moves to a later epoch and draws from the global RNG.
    trainer.data_collator.epoch = 5
    torch.manual_seed(1234)
    torch.rand(1000)
    second = collate(blocks(tiny_tokenizer))
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert (first["labels"] != -100).sum() > 20

    other = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "b", "--seed", "4").eval_data_collator
    reseeded = other(blocks(tiny_tokenizer))
    assert not torch.equal(first["labels"], reseeded["labels"])
    assert not torch.equal(first["input_ids"], reseeded["input_ids"])


def test_eval_dataloader_collates_with_the_eval_collator_and_gives_the_training_one_back(tiny_model_dir,
                                                                                       tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path)
    train_collator = trainer.data_collator
    calls = []
    collate = trainer.eval_data_collator
    trainer.eval_data_collator = lambda features: calls.append(len(features)) or collate(features)
    batches = list(trainer.get_eval_dataloader())
    assert calls == [4, 4, 4, 4]
    assert trainer.data_collator is train_collator
    expected = collate(blocks(tiny_tokenizer)[:4])
    assert torch.equal(batches[0]["labels"], expected["labels"])
    assert torch.equal(batches[0]["input_ids"], expected["input_ids"])


def test_eval_collator_defaults_to_the_data_collator(tiny_model_dir, tiny_tokenizer, tmp_path):
    *_, args = parse_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    collator = MLMCollator(tiny_tokenizer, seed=0)
    trainer = MLMTrainer(model=AutoModelForMaskedLM.from_pretrained(tiny_model_dir), args=args,
                         data_collator=collator)
    assert trainer.eval_data_collator is collator and trainer.stopped_by_signal is None


# --- the loss ------------------------------------------------------------------------------------------------------

def masked_batch(tokenizer, seed: int):
    collator = MLMCollator(tokenizer, seed=seed)
    return collator(blocks(tokenizer)[:6])


@pytest.mark.parametrize("sparse", [False, True])
def test_compute_loss_is_the_sum_over_this_batch_divided_by_the_steps_masked_tokens(tiny_model_dir, tiny_tokenizer,
                                                                                    tmp_path, sparse):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, "--sparse_prediction", str(sparse))
    model = trainer.model.eval()  # no dropout: the reference below sees the same logits
    inputs = masked_batch(tiny_tokenizer, seed=1)
    labels = inputs["labels"]
    n_local = int((labels != -100).sum())
    with torch.no_grad():
        logits = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    summed = F.cross_entropy(logits[labels != -100], labels[labels != -100], reduction="sum")
    # Gradient accumulation / several processes: the Trainer passes the masked-token count of the whole step.
    step_count = 3 * n_local + 1
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=torch.tensor(step_count))
        alone = trainer.compute_loss(model, dict(inputs))
    assert loss.item() == pytest.approx(summed.item() / step_count, rel=1e-5)
    assert alone.item() == pytest.approx(summed.item() / n_local, rel=1e-5)  # no count: this batch's mean


def test_accumulated_micro_batch_losses_add_up_to_the_mean_over_all_their_tokens(tiny_model_dir, tiny_tokenizer,
                                                                                 tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, "--sparse_prediction", "False")
    model = trainer.model.eval()
    first, second = masked_batch(tiny_tokenizer, seed=1), masked_batch(tiny_tokenizer, seed=2)
    first["labels"][1:] = -100  # micro-batches with very different numbers of masked tokens
    total = sum(int((b["labels"] != -100).sum()) for b in (first, second))
    joined = {key: torch.cat([first[key], second[key]]) for key in first}
    with torch.no_grad():
        mean_over_all = model(**joined).loss.item()
        accumulated = sum(trainer.compute_loss(model, dict(b), num_items_in_batch=torch.tensor(total)).item()
                          for b in (first, second))
        unweighted = (model(**first).loss.item() + model(**second).loss.item()) / 2
    assert accumulated == pytest.approx(mean_over_all, rel=1e-5)
    assert abs(unweighted - mean_over_all) > 1e-3  # the plain mean of the two means would be another number


# --- build_trainer -----------------------------------------------------------------------------------------------

def test_build_trainer_wires_collators_callbacks_metrics_and_speedups(tiny_model_dir, tiny_tokenizer, tmp_path):
    extra = GracefulStopCallback()  # any callback
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, "--seed", "7", "--mlm_probability", "0.3",
                           "--mask_replace_prob", "0.7", "--random_replace_prob", "0.2", "--whole_word_mask",
                           callbacks=[extra])
    for collator in (trainer.data_collator, trainer.eval_data_collator):
        assert isinstance(collator, MLMCollator)
        assert (collator.seed, collator.mlm_probability, collator.mask_replace_prob, collator.random_replace_prob,
                collator.whole_word_mask, collator.epoch) == (7, 0.3, 0.7, 0.2, True, None)
    callbacks = trainer.callback_handler.callbacks
    epoch_callbacks = [c for c in callbacks if isinstance(c, MaskEpochCallback)]
    assert len(epoch_callbacks) == 1 and epoch_callbacks[0].collator is trainer.data_collator
    assert trainer.graceful_stop in callbacks and extra in callbacks
    assert any(isinstance(c, TrainingCurveCallback) for c in callbacks)
    assert isinstance(trainer.compute_metrics, MLMMetrics)
    assert trainer.preprocess_logits_for_metrics is preprocess_logits_for_metrics
    # Defaults: sparse head and fast CPU dropout on.
    assert trainer.model.sparse_prediction and "forward" in vars(trainer.model)
    assert trainer.model.config._attn_implementation == ATTENTION_NAME
    trainer.graceful_stop.received = 15
    assert trainer.stopped_by_signal == 15


def test_build_trainer_leaves_the_model_alone_when_the_speedups_are_off(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, "--sparse_prediction", "False",
                           "--fast_dropout", "False")
    assert "forward" not in vars(trainer.model) and not getattr(trainer.model, "sparse_prediction", False)
    assert trainer.model.config._attn_implementation != ATTENTION_NAME
    assert not any(type(m).__name__ == "FastDropout" for m in trainer.model.modules())


def unequal_micro_batches(seed: int = 0):
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
def test_sparse_and_full_heads_give_the_token_mean_of_the_whole_step(tmp_path, sparse):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, hidden_dropout_prob=0, attention_probs_dropout_prob=0))
    model.eval()
    first, second = unequal_micro_batches()
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
