"""Training budgets and the mask-rate schedule.

``--max_train_tokens`` and ``--max_train_time`` end training when a budget of real tokens or wall-clock time is
spent, with the learning-rate schedule (warm-up and decay) laid out over that budget, as cramming and
academic-budget BERT do: the schedule's *progress* is the share of the budget spent (steps done over the planned
steps when every block is full, real tokens seen over the budget when lengths vary, elapsed over allowed time),
and the optimizer step that spends the budget runs at the schedule's end value. :class:`BudgetCallback` measures
the progress (agreed across processes), hands it to :class:`ProgressScheduler` before each optimizer step, stops
with a checkpoint when the budget is spent and keeps the elapsed time in the checkpoint, so a resumed run has what
is left of the budget, not a new one; :meth:`BudgetCallback.spent` says whether a checkpoint spent it (one that did is
the end of training: MLMTrainer trains no further step from it).

``--mlm_probability_end`` makes the masking rate fall (or rise) linearly from ``--mlm_probability`` over the same
progress (Ankner et al. 2023: 30 % -> 15 %); :func:`mask_rate` gives the rate of a step's batches.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

import torch
from transformers import TrainerCallback, get_scheduler
from transformers.trainer_callback import ExportableState

from mlm_pretraining.errors import InputError
from mlm_pretraining.flag_values import parse_duration

logger = logging.getLogger(__name__)

# A clock that only moves forward; tests replace it (budget.clock = fake) to test deadlines without waiting.
clock = time.monotonic

# --max_train_time with no --max_steps: the loop runs until the deadline, so its step limit is out of reach.
UNBOUNDED_STEPS = 10**9

# Schedules are transformers' step-based lambdas evaluated at progress x RESOLUTION "steps".
RESOLUTION = 1_000_000




def mask_rate(start: float, end: float | None, progress: float) -> float:
    """The masking rate at ``progress`` (0 to 1) of training: linear from ``start`` to ``end``, or ``start``."""
    if end is None:
        return start
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def packed_steps(max_train_tokens: int, max_seq_length: int, global_batch_size: int) -> int:
    """Optimizer steps that train ``max_train_tokens`` when every sequence is a full block of ``max_seq_length``."""
    return math.ceil(max_train_tokens / (max_seq_length * global_batch_size))


def estimated_steps(max_train_tokens: int, lengths, global_batch_size: int) -> int:
    """Optimizer steps expected to train ``max_train_tokens`` for examples of these token ``lengths``."""
    lengths = [int(n) for n in lengths]
    mean = sum(lengths) / max(1, len(lengths))
    if mean <= 0:
        raise InputError("--max_train_tokens: the training examples hold no tokens.")
    return max(1, math.ceil(max_train_tokens / (mean * global_batch_size)))


class ProgressScheduler(torch.optim.lr_scheduler.LRScheduler):
    """A learning-rate schedule driven by the share of the budget spent (``set_progress``), not by a step count.

    ``lr_lambdas`` are transformers' schedule functions over ``RESOLUTION`` steps, so every schedule type keeps
    its shape (warm-up, decay, floor). The Trainer's own ``step()`` after each optimizer step keeps the value.
    """

    def __init__(self, optimizer, lr_lambdas):
        self.lr_lambdas = list(lr_lambdas)
        self.progress = 0.0
        super().__init__(optimizer)

    def _values(self) -> list[float]:
        step = self.progress * RESOLUTION
        return [base * fn(step) for base, fn in zip(self.base_lrs, self.lr_lambdas)]

    def get_lr(self) -> list[float]:
        return self._values()

    def set_progress(self, progress: float) -> None:
        """Set the learning rates for ``progress`` (clipped to [0, 1]) of the budget."""
        self.progress = min(max(float(progress), 0.0), 1.0)
        values = self._values()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = values

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}


def progress_scheduler(args, optimizer, warmup_fraction: float) -> ProgressScheduler:
    """A :class:`ProgressScheduler` of ``args.lr_scheduler_type``, warming up over ``warmup_fraction`` of it."""
    template = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                             num_warmup_steps=warmup_fraction * RESOLUTION, num_training_steps=RESOLUTION,
                             scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    if not hasattr(template, "lr_lambdas"):
        raise InputError(f"--lr_scheduler_type {args.lr_scheduler_type} does not follow a schedule over training, "
                         "so it cannot be laid out over --max_train_tokens or --max_train_time; use linear, cosine, "
                         "cosine_with_min_lr, warmup_stable_decay, constant_with_warmup, ...")
    for group in optimizer.param_groups:  # undo the template's first step: the new schedule starts from lr
        group["lr"] = group["initial_lr"]
    return ProgressScheduler(optimizer, template.lr_lambdas)


def _all_ranks_max(value: float, args) -> float:
    """``value`` agreed across processes (the largest), so every rank takes the same decisions."""
    if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.float64, device=args.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor.item())
    return value


class BudgetCallback(TrainerCallback, ExportableState):
    """Spend a training budget: real tokens (``max_train_tokens``) or wall-clock seconds (``max_train_seconds``).

    ``planned_steps`` is the step count the budget is expected to take: exact for packed blocks
    (``exact_steps``: progress is then steps done / planned steps), an estimate for sequences of varying length
    (progress is real tokens seen / budget, counted by the Trainer over all processes), None for time (progress
    is elapsed / budget). Before each optimizer step the progress is measured, agreed across processes and given
    to the :class:`ProgressScheduler`; the step that reaches 1 trains at the schedule's end value, then training
    stops with a checkpoint. Elapsed time is stored in the checkpoint's trainer_state.json (``stateful_callbacks``)
    and restored on resume. Time counts from the start of training (evaluations and checkpoints during training
    included).
    """

    def __init__(self, max_train_tokens: int | None = None, max_train_seconds: float | None = None,
                 planned_steps: int | None = None, exact_steps: bool = False):
        if (max_train_tokens is None) == (max_train_seconds is None):
            raise ValueError("BudgetCallback needs exactly one of max_train_tokens and max_train_seconds")
        self.max_train_tokens = max_train_tokens
        self.max_train_seconds = max_train_seconds
        self.planned_steps = planned_steps
        self.exact_steps = exact_steps
        self.elapsed_before = 0.0  # seconds spent by earlier runs of this training (restored on resume)
        self.progress = 0.0  # at the last optimizer step, agreed across processes
        self._progress_before_step = 0.0  # at the step before: a share of the budget crossed triggers a log, eval, save
        self._start: float | None = None
        self._session_start: tuple[float, float] | None = None  # (clock, progress) when this run began
        self._rate_set_at_step: int | None = None  # the global_step whose learning rate set_step_rate last set

    def state(self) -> dict:
        return {"args": {"max_train_tokens": self.max_train_tokens, "max_train_seconds": self.max_train_seconds,
                         "planned_steps": self.planned_steps, "exact_steps": self.exact_steps},
                "attributes": {"elapsed_before": self.elapsed(), "progress": self.progress}}

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs of a resumed training included."""
        return self.elapsed_before + (clock() - self._start if self._start is not None else 0.0)

    def warmup_fraction(self, args) -> float:
        """The share of the budget for warm-up: --warmup_steps as a ratio, or in steps over the planned steps."""
        if args.warmup_steps < 1:
            return float(args.warmup_steps)
        if self.planned_steps is None:  # arguments.py refuses this; kept for callers building their own
            raise InputError("--max_train_time needs --warmup_steps as a ratio of the budget (below 1), e.g. 0.06.")
        return min(1.0, args.get_warmup_steps(self.planned_steps) / self.planned_steps)

    def _measure(self, state, *, step_done: bool) -> float:
        if self.max_train_seconds is not None:
            return self.elapsed() / self.max_train_seconds
        if self.exact_steps:
            return (state.global_step + int(step_done)) / self.planned_steps
        return state.num_input_tokens_seen / self.max_train_tokens

    def progress_before_step(self, state) -> float:
        """The budget spent before the step about to start (decides that step's mask rate). Steps and tokens come
        from the Trainer's state, so they are the same on every process and after a resume; time is the value
        agreed at the last optimizer step."""
        if self.max_train_seconds is not None:
            return self.progress
        return min(1.0, self._measure(state, step_done=False))

    def on_train_begin(self, args, state, control, **kwargs):
        attributes = self._stored_attributes(state)
        self.elapsed_before = float(attributes.get("elapsed_before", 0.0))
        self.progress = float(attributes.get("progress", 0.0))
        self._progress_before_step = self.progress
        self._rate_set_at_step = None
        self._start = clock()
        self._session_start = (self._start, self._measure(state, step_done=False))
        if self.elapsed_before and self.max_train_seconds is not None:
            logger.info("Resuming a time budget: %s of %s already spent.", _hms(self.elapsed_before),
                        _hms(self.max_train_seconds))

    def _stored_attributes(self, state) -> dict:
        """What this callback kept in ``state`` (a checkpoint's trainer_state.json): elapsed time and progress."""
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        return (stored or {}).get("attributes", {})

    def spent(self, state) -> str | None:
        """How this budget is spent at the training ``state`` (a checkpoint's), for the log; None while some is left.
        Measured against this budget, not the one the state trained under, so a raised budget has more to train.
        Part of the rule for a finished run, MLMTrainer.end_of_training."""
        if self.max_train_seconds is not None:
            elapsed = float(self._stored_attributes(state).get("elapsed_before", 0.0))
            if elapsed < self.max_train_seconds:
                return None
            return f"--max_train_time {_hms(self.max_train_seconds)} spent ({_hms(elapsed)})"
        if self._measure(state, step_done=False) < 1.0:
            return None
        if self.exact_steps:
            return f"--max_train_tokens {self.max_train_tokens:,} spent in {self.planned_steps:,} steps"
        return f"--max_train_tokens {self.max_train_tokens:,} spent ({state.num_input_tokens_seen:,} tokens seen)"

    def set_step_rate(self, args, state, lr_scheduler=None) -> None:
        """Measure the budget spent once the coming optimizer step is done (its tokens counted in ``state``), agreed
        across processes, and set that step's learning rate from it: the step that spends the budget gets progress 1,
        the schedule's end value. Once a step, before the weights change: from :meth:`on_pre_optimizer_step`, or
        earlier from ``MLMTrainer.training_step`` under DeepSpeed, whose engine steps the optimizer inside the
        backward of the step's last micro-batch."""
        self.progress = min(1.0, _all_ranks_max(self._measure(state, step_done=True), args))
        if isinstance(lr_scheduler, ProgressScheduler):
            lr_scheduler.set_progress(self.progress)
        self._rate_set_at_step = state.global_step

    def on_pre_optimizer_step(self, args, state, control, lr_scheduler=None, **kwargs):
        # After this step's forward/backward (its tokens are counted), before the weights change.
        if self._rate_set_at_step != state.global_step:  # not set already (DeepSpeed: set before the backward)
            self.set_step_rate(args, state, lr_scheduler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_train_seconds is not None:  # the step count is unknown: a share of the budget, not of the steps
            for kind, flag in (("logging", "should_log"), ("eval", "should_evaluate"), ("save", "should_save")):
                share = getattr(args, f"{kind}_steps")
                strategy = getattr(args, f"{kind}_strategy")
                if share is not None and 0 < share < 1 and strategy == "steps" and \
                        int(self.progress / share) > int(self._progress_before_step / share):
                    setattr(control, flag, True)
            self._progress_before_step = self.progress
        if self.progress >= 1.0:
            control.should_training_stop = True
            control.should_log = True
            if args.save_strategy != "no":
                control.should_save = True
            logger.info("Budget spent at step %d: %s.", state.global_step, self.describe(state))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.elapsed_before, self._start = self.elapsed(), None

    def eta_seconds(self, state) -> float | None:
        """Seconds left, at this run's pace so far (time: what is left of the budget)."""
        if self.max_train_seconds is not None:
            return max(0.0, self.max_train_seconds - self.elapsed())
        if self._session_start is None:
            return None
        started, progress_then = self._session_start
        done, spent = self._measure(state, step_done=False) - progress_then, clock() - started
        if done <= 0 or spent <= 0:
            return None
        return max(0.0, (1.0 - min(1.0, progress_then + done)) * spent / done)

    def describe(self, state) -> str:
        """One line for the log: budget spent, tokens seen, ETA."""
        eta = self.eta_seconds(state)
        eta_text = _hms(eta) if eta is not None else "unknown"
        if self.max_train_seconds is not None:
            return (f"{_hms(self.elapsed())} of {_hms(self.max_train_seconds)} "
                    f"({100 * min(1.0, self.progress):.1f}%), ETA {eta_text}")
        seen = state.num_input_tokens_seen
        return (f"{seen:,} of {self.max_train_tokens:,} tokens ({100 * min(1.0, seen / self.max_train_tokens):.1f}%),"
                f" step {state.global_step:,} of {'' if self.exact_steps else '~'}{self.planned_steps:,}, "
                f"ETA {eta_text}")


def _hms(seconds: float | None) -> str:
    return str(timedelta(seconds=round(seconds or 0)))


def plan_budget(training_args, data_args, train_dataset, max_seq_length: int) -> BudgetCallback | None:
    """The :class:`BudgetCallback` for --max_train_tokens / --max_train_time, or None; sets
    ``training_args.max_steps`` to the planned steps (tokens) or out of reach (time) before the Trainer is built,
    so the Trainer's loop and progress bar use it."""
    tokens, duration = training_args.max_train_tokens, training_args.max_train_time
    if tokens is None and duration is None:
        return None
    if duration is not None:
        if training_args.max_steps <= 0:
            training_args.max_steps = UNBOUNDED_STEPS
        return BudgetCallback(max_train_seconds=parse_duration(duration))
    global_batch = (training_args.train_batch_size * training_args.world_size
                    * training_args.gradient_accumulation_steps)
    packed = not (data_args.line_by_line or data_args.nsp)
    if packed:  # every block is full: the step count is exact
        steps = packed_steps(tokens, max_seq_length, global_batch)
        logger.info("--max_train_tokens %s: %s steps of %s blocks x %s tokens.", f"{tokens:,}", f"{steps:,}",
                    global_batch, max_seq_length)
    else:
        if "length" in train_dataset.column_names:
            lengths = train_dataset["length"]
        else:  # NSP pairs: measured on a sample
            lengths = [len(ids) for ids in train_dataset.select(range(min(10_000, len(train_dataset))))["input_ids"]]
        steps = estimated_steps(tokens, lengths, global_batch)
        # The loop may run past the estimate (it stops on the token count); the schedule follows the tokens seen.
        logger.info("--max_train_tokens %s: about %s steps (an estimate from the mean example length); training "
                    "stops when the real tokens seen reach the budget.", f"{tokens:,}", f"{steps:,}")
    training_args.max_steps = steps if packed else max(2 * steps, steps + 100)
    return BudgetCallback(max_train_tokens=tokens, planned_steps=steps, exact_steps=packed)
