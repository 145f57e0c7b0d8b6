"""The Trainer, with two changes: evaluation batches come from their own collator (fixed masks), and the training
loss is averaged over all masked tokens of the optimizer step, across processes and gradient-accumulation steps."""

from __future__ import annotations

from transformers import Trainer


class MLMTrainer(Trainer):
    """A ``Trainer`` that collates evaluation batches with ``eval_data_collator`` (seeded masks), training
    batches with ``data_collator`` (fresh masks every step), so every evaluation scores the same masked tokens."""

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator or self.data_collator
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
