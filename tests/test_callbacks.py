"""mlm_pretraining/callbacks.py: a graceful stop on SIGTERM/SIGINT, and the epoch that keeps training masks
reproducible (a new one each epoch, the right one after a resume)."""

from __future__ import annotations

import os
import signal

from transformers import TrainerControl, TrainerState, TrainingArguments

from collators import MLMCollator
from mlm_pretraining.callbacks import GracefulStopCallback, MaskEpochCallback


def test_graceful_stop_callback_sets_save_and_stop(tmp_path):
    callback = GracefulStopCallback()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(), TrainerControl()
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    callback.on_train_begin(args, state, control)
    try:
        assert signal.getsignal(signal.SIGINT) != before
        callback.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGINT)  # handled: no KeyboardInterrupt
        assert callback.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == before  # a second Ctrl-C acts as without us (interrupts at once)
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop
    finally:
        callback.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_graceful_stop_forgets_a_signal_from_an_earlier_training(tmp_path):
    callback = GracefulStopCallback()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback.received = signal.SIGTERM  # an earlier train() in the same process was stopped
    control = TrainerControl()
    callback.on_train_begin(args, TrainerState(), control)
    try:
        callback.on_step_end(args, TrainerState(), control)
        assert callback.received is None and not control.should_training_stop
    finally:
        callback.on_train_end(args, TrainerState(), control)


class FakeCollator:
    epoch = None


def epochs_seen(callback, collator, state_epochs) -> list[int | None]:
    seen = []
    for epoch in state_epochs:
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), None)
        seen.append(collator.epoch)
    return seen


def test_mask_epoch_counts_epochs_from_the_one_training_starts_in():
    collator = FakeCollator()
    callback = MaskEpochCallback(collator)
    callback.on_train_begin(None, TrainerState(), None)
    # The Trainer's state.epoch is fractional and is not yet advanced at on_epoch_begin: count ourselves.
    assert epochs_seen(callback, collator, [0, 0.999, 2.0]) == [0, 1, 2]
    # A run resumed mid epoch 2 (state.epoch 2.4) continues with epoch 2's masks, then 3.
    callback.on_train_begin(None, TrainerState(), None)
    assert epochs_seen(callback, collator, [2.4, 2.4]) == [2, 3]


def test_mask_epoch_changes_the_training_masks(tiny_tokenizer):
    collator = MLMCollator(tiny_tokenizer, seed=0)
    features = [{"input_ids": tiny_tokenizer("the city park was known for its music and the band played")["input_ids"]}
                for _ in range(8)]
    callback = MaskEpochCallback(collator)
    callback.on_train_begin(None, TrainerState(), None)
    masks = []
    for _ in range(2):
        callback.on_epoch_begin(None, TrainerState(epoch=0), None)
        masks.append(collator(features)["labels"])
    assert collator.epoch == 1 and not (masks[0] == masks[1]).all()
    collator.epoch = 0
    assert (collator(features)["labels"] == masks[0]).all()  # epoch 0's masks again: a resume repeats them
