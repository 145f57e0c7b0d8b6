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
        # compute_loss below normalises by the step's masked-token count itself (models' own losses are means),
        # which is what the Trainer's scaling assumes when this is True.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's mean loss over this batch's masked tokens, rescaled to sum / (masked tokens in the step).

        transformers counts ``num_items_in_batch`` over all micro-batches and (with ``average_tokens_across_devices``)
        all processes, and scales the loss by the process count; BERT-family models ignore the count and return
        a per-batch mean, which would weight tokens unequally (and multiply the loss by the process count). The
        rescaling makes one optimizer step the same token-weighted mean whatever the split into processes or
        micro-batches: 2 processes x 8 sequences train like 1 process x 16.
        """
        if num_items_in_batch is None or "labels" not in inputs or self.args.n_gpu > 1:  # n_gpu > 1: DataParallel
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        n_local = (inputs["labels"] != -100).sum()
        result = super().compute_loss(model, inputs, return_outputs=return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        loss = loss * (n_local / num_items_in_batch).to(loss.dtype)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is already global
        return (loss, outputs) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

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
