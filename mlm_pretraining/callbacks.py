"""Trainer callbacks: graceful stop on SIGTERM/SIGINT, and the epoch that keeps training masks reproducible."""

from __future__ import annotations

import logging
import math
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class GracefulStopCallback(TrainerCallback):
    """On SIGTERM or SIGINT, finish the current optimizer step, save a checkpoint there and stop training.

    The handler only sets a flag; the step that is running completes, then ``on_step_end`` asks the Trainer to
    save and stop, so the checkpoint is a consistent one the next run resumes from exactly. A second signal of
    the same kind acts as it would without this callback (Ctrl-C twice interrupts at once). Under torchrun every
    process gets the signal, maybe at different steps, so the flag is agreed on (all-reduce, max) at every step
    end and all ranks stop together. ``received`` holds the signal number after a stop, else None.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts normally
        logger.warning("Received %s: saving a checkpoint at the end of this step, then stopping.",
                       signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = None
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            logger.warning("Not in the main thread: SIGTERM/SIGINT will not save a checkpoint before stopping.")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        received = self.received or 0
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([received], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        if received:
            self.received = received
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous.clear()


class MaskEpochCallback(TrainerCallback):
    """Tell a seeded collator the epoch, so each epoch gets new masks that depend on (seed, epoch, tokens) only.

    Masks then do not depend on which process or batch a sequence lands in, nor on RNG state: a torchrun run
    masks like a single process, and a resumed run like an uninterrupted one. The first epoch of a run is
    ``floor(state.epoch)`` (the epoch a resumed run continues); each later ``on_epoch_begin`` adds one. Not
    compatible with ``--dataloader_persistent_workers`` (workers keep the collator of their first epoch).
    """

    def __init__(self, collator):
        self.collator = collator
        self._epoch: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._epoch = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = math.floor(state.epoch or 0) if self._epoch is None else self._epoch + 1
        self.collator.epoch = self._epoch
