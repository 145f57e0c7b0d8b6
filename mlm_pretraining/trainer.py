"""Our Trainer and the one function that builds it, used by run_mlm.py and scripts/benchmark.py alike.

Two changes to transformers' ``Trainer``: evaluation batches come from their own collator (fixed masks), and the
training loss is averaged over all masked tokens of the optimizer step, across processes and gradient-accumulation
steps. :func:`build_trainer` adds the masking collators, our callbacks and the model-side speed-ups.
"""

from __future__ import annotations

from transformers import Trainer

from collators import MLMCollator
from mlm_pretraining.callbacks import GracefulStopCallback, MaskEpochCallback
from mlm_pretraining.fast_dropout import enable_fast_dropout
from mlm_pretraining.internals import TRAINER_COLLATOR, TRAINER_LOSS_KWARGS
from mlm_pretraining.metrics import MLMMetrics, preprocess_logits_for_metrics
from mlm_pretraining.plotting import TrainingCurveCallback
from mlm_pretraining.sparse_head import enable_sparse_prediction


class MLMTrainer(Trainer):
    """A ``Trainer`` that collates evaluation batches with ``eval_data_collator`` (seeded masks), training
    batches with ``data_collator`` (fresh masks every epoch), so every evaluation scores the same masked tokens."""

    def __init__(self, *args, eval_data_collator=None, graceful_stop: GracefulStopCallback | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator or self.data_collator
        self.graceful_stop = graceful_stop

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The mean loss over all masked tokens of the optimizer step: the one place our loss is normalised.

        BERT-family models return the mean over their own batch's masked tokens and ignore ``num_items_in_batch``
        (the masked tokens of all micro-batches and, with ``average_tokens_across_devices``, all processes), while
        the Trainer treats a loss computed with that count as already normalised over the step (no division by the
        accumulation steps) and multiplies it by the process count (DDP averages gradients). Rescaling the batch
        mean by (masked tokens here) / ``num_items_in_batch`` makes that true, so every masked token weighs the same
        whatever the split into processes and micro-batches: 2 processes x 8 sequences train like 1 x 16.
        """
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is not None and getattr(self, TRAINER_LOSS_KWARGS) and "labels" in inputs \
                and self.args.n_gpu <= 1:  # n_gpu > 1 (DataParallel) keeps the Trainer's own handling
            n_local = (inputs["labels"] != -100).sum()
            loss = loss * (n_local / num_items_in_batch).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset=None):
        """The Trainer's evaluation dataloader, collated by the fixed-mask evaluation collator."""
        train_collator = getattr(self, TRAINER_COLLATOR)
        setattr(self, TRAINER_COLLATOR, self.eval_data_collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            setattr(self, TRAINER_COLLATOR, train_collator)

    @property
    def stopped_by_signal(self) -> int | None:
        """The signal (SIGTERM, SIGINT) that ended training early, after saving a checkpoint; else None."""
        return self.graceful_stop.received if self.graceful_stop is not None else None


def build_trainer(model, tokenizer, model_args, mask_args, training_args, *, train_dataset=None, eval_dataset=None,
                  pad_to_multiple_of: int | None = None, callbacks=()) -> MLMTrainer:
    """Our Trainer for ``model``: masking collators (training masks new each epoch, evaluation masks fixed, both
    functions of (seed, [epoch,] tokens)), metrics, callbacks (mask epoch, graceful stop, training-curve PNG, plus
    ``callbacks``) and the speed-ups the flags ask for (sparse prediction head, fast CPU dropout)."""
    if model_args.sparse_prediction:
        enable_sparse_prediction(model)
    if model_args.fast_dropout:
        enable_fast_dropout(model)
    masking = dict(mlm_probability=mask_args.mlm_probability, mask_replace_prob=mask_args.mask_replace_prob,
                   random_replace_prob=mask_args.random_replace_prob, pad_to_multiple_of=pad_to_multiple_of,
                   whole_word_mask=mask_args.whole_word_mask)
    train_collator = MLMCollator(tokenizer, **masking, seed=training_args.seed)
    graceful_stop = GracefulStopCallback()
    return MLMTrainer(
        model=model,
        args=training_args,
        data_collator=train_collator,
        eval_data_collator=MLMCollator(tokenizer, **masking, seed=training_args.seed),
        graceful_stop=graceful_stop,
        callbacks=[MaskEpochCallback(train_collator), graceful_stop, TrainingCurveCallback(), *callbacks],
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=MLMMetrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
