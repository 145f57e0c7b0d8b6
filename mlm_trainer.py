"""The Trainer, with one change: evaluation batches come from their own collator (fixed masks)."""

from __future__ import annotations

from transformers import Trainer


class MLMTrainer(Trainer):
    """A ``Trainer`` that collates evaluation batches with ``eval_data_collator`` (seeded masks), training
    batches with ``data_collator`` (fresh masks every step), so every evaluation scores the same masked tokens."""

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator or self.data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator
