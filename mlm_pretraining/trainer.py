"""Our Trainer and the one function that builds it, used by run_mlm.py and scripts/benchmarks/benchmark.py alike.

:class:`MLMTrainer` overrides ten methods of transformers' ``Trainer``, each through a documented hook or one named in
internals.py: ``get_eval_dataloader`` (evaluation batches from their own collator, with fixed masks);
``compute_loss`` (the loss averaged over all masked tokens of the optimizer step, across processes and
gradient-accumulation steps); ``train`` and ``get_batch_samples`` (a streamed training set resumes by position: where
a step takes its batches their stream positions are noted, and on resume the stream seeks and the Trainer does not
skip batches; a mask-rate schedule masks each step's batches at its rate; resumed at the end of training, see
``end_of_training``, no step is trained); ``create_scheduler`` (under a budget, a schedule over the share of the
budget spent) and ``training_step`` (under DeepSpeed, whose engine steps the optimizer inside the backward, the
budget's rate for the step set before it); ``log`` (the mask rate and the budget's progress in the logs; no summary of
a training that trained no step); ``evaluate`` (under FSDP2, the model sharded again after it). Two more make the
finished folder what the user gets: ``save_model`` (under FSDP and ZeRO-1/2 the whole model, tied weights once; never
a push) and ``push_to_hub`` (``output_dir`` uploaded once, as it stands). Its ``accelerator``, as the Trainer sets it,
runs --fsdp on CPU processes too (:func:`engage_fsdp_on_cpu`: FSDP2 with gloo, which accelerate engages on GPUs only).
:func:`build_trainer` adds the masking collators, our callbacks and the speed-ups, refuses --fsdp / --deepspeed that
was not engaged, and under --fsdp shards the model (:func:`settle_fsdp`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path

from transformers import IntervalStrategy, Trainer, TrainerState
from transformers.integrations import TensorBoardCallback
from transformers.training_args import ParallelMode
from transformers.utils.hub import hf_api

from collators import STREAM_POSITION, MLMCollator
from mlm_pretraining.budget import BudgetCallback, mask_rate, progress_scheduler
from mlm_pretraining.callbacks import GracefulStopCallback, MaskEpochCallback
from mlm_pretraining.checkpoints import saved_step
from mlm_pretraining.model.head_warmup import HeadWarmupCallback
from mlm_pretraining.model.sharding import fsdp_layer_classes, shard_by_layers
from mlm_pretraining.internals import (
    ACCELERATE_DISTRIBUTED_TYPE,
    ACCELERATE_FSDP_PLUGIN,
    ACCELERATE_MODELS,
    ACCELERATE_PREPARED,
    TENSORBOARD_LOGGING_DIR,
    TRAINER_COLLATOR,
    TRAINER_COUNT_ITEMS,
    TRAINER_COUNT_TOKENS,
    TRAINER_CREATED_SCHEDULER,
    TRAINER_LOAD_RNG_STATE,
    TRAINER_LOSS_KWARGS,
    TRAINER_STATE_FILE,
    TRAINER_TRAINING_VALUES,
    default_logdir,
)
from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.metrics import MLMMetrics, preprocess_logits_for_metrics
from mlm_pretraining.probe import Probe, ProbeCallback
from mlm_pretraining.reporting.plotting import TrainingCurveCallback
from mlm_pretraining.speed import apply_speedups
from mlm_pretraining.data.streaming import PackedStream, StreamPositionCallback

logger = logging.getLogger(__name__)

# What a push leaves out of output_dir, as the Trainer's own push does: checkpoints (resuming state, not the model)
# and files starting with '_'.
HUB_IGNORE_PATTERNS = ["_*", "checkpoint-*"]
# What the last completed push of output_dir uploaded, and where: a rerun of a finished run pushes only when it is not
# this run at this step (an earlier push failed). Never uploaded itself (HUB_IGNORE_PATTERNS).
HUB_PUSH_FILE = "_hub_push.json"


class MLMTrainer(Trainer):
    """A ``Trainer`` that collates evaluation batches with ``eval_data_collator`` (seeded masks), training
    batches with ``data_collator`` (fresh masks every epoch), so every evaluation scores the same masked tokens."""

    def __init__(self, *args, eval_data_collator=None, graceful_stop: GracefulStopCallback | None = None,
                 mlm_probability_end: float | None = None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and kwargs.get("eval_dataset") is None \
                and training_args.eval_strategy != IntervalStrategy.NO:
            # Our periodic-evaluation default needs evaluation text (e.g. a hub dataset without a validation split).
            logger.warning("No evaluation text: no evaluation during training (--eval_strategy no).")
            training_args.eval_strategy = IntervalStrategy.NO
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator or self.data_collator
        self.graceful_stop = graceful_stop
        # A mask-rate schedule: the training collator only pads, get_batch_samples masks at the step's rate.
        self.mlm_probability_end = mlm_probability_end
        self.current_mlm_probability: float | None = None
        self._rng_checkpoint: str | None = None  # restore its RNG states after the first batch (resume by position)
        self.resumed_at_end = False  # train() resumed from a checkpoint at the end of training: no step trained

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train; a streamed run resuming from a checkpoint with a stream position starts the stream there (see
        streaming.py) instead of letting the Trainer replay it. Resumed from a checkpoint at the end of training
        (:meth:`end_of_training`) it loads the checkpoint and trains no step: the Trainer's loop looks at its stops only
        after a step, so it trained one more (or none at an epoch's end, reporting train_loss 0 over 0 steps)."""
        at_end = self.end_of_training(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else None
        self.resumed_at_end = at_end is not None
        if at_end:
            logger.info("Resuming from %s, the end of training (%s): no step left to train.", resume_from_checkpoint,
                        at_end)
        positions = self.stream_positions
        if positions is not None and isinstance(resume_from_checkpoint, str) \
                and positions.resume(resume_from_checkpoint, self.args):
            self.args.ignore_data_skip = True  # the stream is already at the checkpoint's block
            self._rng_checkpoint = resume_from_checkpoint
        self._forget_evaluation_only_preparation()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _forget_evaluation_only_preparation(self) -> None:
        """An evaluation before training (run_mlm.py's 'before' row) leaves the model prepared for evaluation only,
        unwrapped, and marked prepared: under DDP train() would then skip the DDP wrapper and never average the
        gradients. Unmark it so train() wraps it (see internals.ACCELERATE_PREPARED); FSDP and DeepSpeed wrap the
        model for evaluation too and are left as they are."""
        if self.args.parallel_mode != ParallelMode.DISTRIBUTED or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return
        if getattr(self.model, ACCELERATE_PREPARED, False) and not hasattr(self.model, "module"):
            delattr(self.model, ACCELERATE_PREPARED)
            models = getattr(self.accelerator, ACCELERATE_MODELS)
            models[:] = [m for m in models if m is not self.model]

    def end_of_training(self, checkpoint: str) -> str | None:
        """Why ``checkpoint`` is at the end of the training this trainer is set up for (a reason naming the flag, for
        the log), or None while there is more to train. The one rule for a finished run: the Trainer's two stops as
        this run would meet them, the budget spent (:meth:`BudgetCallback.spent`, against this run's budget) or the
        step count reached (--max_steps, the epochs, a token budget's steps, counted as the Trainer's loop counts
        them). A raised --max_steps, --num_train_epochs or budget therefore has more to train."""
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_FILE))
        budget = self.budget
        spent = budget.spent(state) if budget is not None else None
        if spent:
            return spent
        max_steps = self.args.max_steps
        if max_steps <= 0:  # epochs: the Trainer's count, from the dataloader (see internals.TRAINER_TRAINING_VALUES)
            max_steps = getattr(self, TRAINER_TRAINING_VALUES)(self.args, self.get_train_dataloader())[-1]
        if state.global_step < max_steps:
            return None
        if budget is not None and budget.max_train_tokens is not None:  # lengths vary: the loop's cap on the estimate
            return f"step {state.global_step:,}, the step limit {max_steps:,} of --max_train_tokens"
        if self.args.max_steps > 0:
            return f"step {state.global_step:,} of --max_steps {max_steps:,}"
        return (f"step {state.global_step:,} of {max_steps:,}, the end of --num_train_epochs "
                f"{self.args.num_train_epochs:g}")

    @property
    def stream_positions(self) -> StreamPositionCallback | None:
        """The callback keeping a streamed run's position, if the training set is a stream."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, StreamPositionCallback)), None)

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

    @property
    def budget(self) -> BudgetCallback | None:
        """The --max_train_tokens / --max_train_time callback, if any (looked up: a resume may replace it)."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, BudgetCallback)), None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's forward and backward of one micro-batch; under a budget with DeepSpeed, the optimizer step's
        learning rate is set before the backward of its last micro-batch. accelerate's DeepSpeed engine wrapper steps
        the optimizer inside that ``accelerator.backward``, before the Trainer's ``on_pre_optimizer_step``, where
        :class:`BudgetCallback` sets the rate on every other path (one process, DDP, FSDP): there each rate would be
        applied one step late. The rate is the one those paths set: the step's tokens counted (this micro-batch's
        by the Trainer's own count, taken back for the Trainer to make after this call) and agreed across processes.
        A time budget is measured before that backward instead of after it."""
        budget = self.budget
        if budget is not None and self.is_deepspeed_enabled and self.accelerator.sync_gradients:
            counted = self.state.num_input_tokens_seen
            getattr(self, TRAINER_COUNT_TOKENS)(inputs)  # see internals.TRAINER_COUNT_TOKENS
            budget.set_step_rate(self.args, self.state, self.lr_scheduler)
            self.state.num_input_tokens_seen = counted
        return super().training_step(model, inputs, num_items_in_batch)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Under a budget, a schedule that follows the share of the budget spent (see budget.py)."""
        budget = self.budget
        if budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = progress_scheduler(self.args, optimizer or self.optimizer, budget.warmup_fraction(self.args))
        setattr(self, TRAINER_CREATED_SCHEDULER, True)  # a later train() makes a fresh one, as for its own
        return self.lr_scheduler

    def training_progress(self) -> float:
        """The share of training done before the coming step: the budget spent, else steps / max_steps."""
        budget = self.budget
        if budget is not None:
            return budget.progress_before_step(self.state)
        return self.state.global_step / max(1, self.state.max_steps)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Note a stream's positions (and drop them from the batches): these are the blocks the step trains on, the
        dataloader may have read further. With a mask-rate schedule, mask the step's batches at the rate for this
        step. They are masked here, in the main process, after the Trainer picked the step (the collator may run
        ahead of it, prefetching, or in worker processes); masks stay functions of (seed, epoch, tokens) and the
        step, so resumed and multi-process runs mask as an uninterrupted single process does. Resumed at the end of
        training (see :meth:`train`) the first step takes no batches and stops training: the Trainer's loop asks for a
        step's batches before it looks at its stops, and trains none of an empty list (where no batch was skipped, as
        for a stream, it then warns that the epoch had no sample)."""
        if self.resumed_at_end:
            self.control.should_training_stop = True
            return [], None
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        positions = self.stream_positions
        if positions is not None:  # the blocks this step trains on: the stream stands after them
            for batch in batches:
                positions.consume(batch.pop(STREAM_POSITION, None))
        if self._rng_checkpoint is not None:  # see internals.TRAINER_LOAD_RNG_STATE
            getattr(self, TRAINER_LOAD_RNG_STATE)(self._rng_checkpoint)
            self._rng_checkpoint = None
        if self.mlm_probability_end is None:
            return batches, num_items_in_batch
        self.current_mlm_probability = mask_rate(self.data_collator.mlm_probability, self.mlm_probability_end,
                                                 self.training_progress())
        batches = [self.data_collator.mask(batch, self.current_mlm_probability) for batch in batches]
        # The count of masked tokens the loss is normalised by, now that there are labels.
        return batches, getattr(self, TRAINER_COUNT_ITEMS)(batches, device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also get the mask rate (with a schedule) and the budget's progress and ETA. A training resumed
        at its end logs no summary: its train_loss would be 0 over 0 steps, which is no measurement."""
        if self.resumed_at_end and "train_loss" in logs:
            return
        if "loss" in logs:
            if self.current_mlm_probability is not None:
                logs["mlm_probability"] = self.current_mlm_probability
            budget = self.budget
            if budget is not None:
                logs["budget_progress"] = budget.progress
                eta = budget.eta_seconds(self.state)
                if eta is not None:
                    logs["budget_eta_seconds"] = round(eta, 1)
                logger.info("Budget: %s", budget.describe(self.state))
        super().log(logs, start_time)

    @property
    def accelerator(self):
        """The Trainer's accelerator, made by its ``create_accelerator_and_postprocess``."""
        return self._accelerator

    @accelerator.setter
    def accelerator(self, accelerator) -> None:
        # The Trainer reads whether FSDP is on from the accelerator's state right after making it, and sets up and
        # checks the run by it: FSDP engaged on CPU processes as the accelerator is set makes the same FSDP run as on
        # GPUs from there on (see engage_fsdp_on_cpu).
        engage_fsdp_on_cpu(accelerator.state, self.args)
        self._accelerator = accelerator

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """The Trainer's evaluation; under FSDP2 the model's units are sharded again afterwards. A unit that stays
        gathered after its forward (the root: embeddings and head) is only sharded again by a backward, which
        evaluation has not, and the optimizer built next, the checkpoints and the final save need the shards."""
        metrics = super().evaluate(*args, **kwargs)
        if self.is_fsdp_enabled:
            from torch.distributed.fsdp import FSDPModule

            for module in self.model.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        return metrics

    def get_eval_dataloader(self, eval_dataset=None):
        """The Trainer's evaluation dataloader, collated by the fixed-mask evaluation collator."""
        train_collator = getattr(self, TRAINER_COLLATOR)
        setattr(self, TRAINER_COLLATOR, self.eval_data_collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            setattr(self, TRAINER_COLLATOR, train_collator)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model for ``from_pretrained``, as the Trainer does, except: under FSDP and DeepSpeed ZeRO-1/2 the
        whole model is gathered and written with its tied weights once (under FSDP whatever ``fsdp_config``'s
        ``state_dict_type``: the Trainer writes no weights at all for SHARDED_STATE_DICT, which is meant for
        checkpoints, and checkpoints keep it); and nothing is pushed here, since run_mlm.py pushes the finished folder
        once, with the base's pooler, our card and results (:meth:`push_to_hub`)."""
        zero = (self.accelerator.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
                if self.is_deepspeed_enabled else None)
        if _internal_call or not (self.is_fsdp_enabled or zero in (0, 1, 2)):  # the Trainer's (ZeRO-3's included)
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir or self.args.output_dir
        # A collective under FSDP: every process gathers its shards. The gathered copies of tied weights (BERT's
        # decoder and word embeddings) are separate tensors; made one again, save_pretrained writes each once.
        state_dict = self.accelerator.get_state_dict(self.model_wrapped if zero is not None else self.model)
        tied = collections.defaultdict(list)
        for name, param in self.accelerator.unwrap_model(self.model).named_parameters(remove_duplicate=False):
            tied[id(param)].append(name)
        for first, *others in tied.values():
            for name in others:
                if first in state_dict and name in state_dict:
                    state_dict[name] = state_dict[first]
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
            self.processing_class.save_pretrained(output_dir)
            logger.info("The whole model gathered from %d processes and saved to %s.", self.args.world_size,
                        output_dir)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None, **kwargs):
        """Upload ``output_dir`` as it stands to ``--hub_model_id``, from process 0 (others return None).

        The Trainer's push saves the model again and writes its own model card first, which would replace the model
        holding the base's pooler and our card; this one uploads the folder the user has, checkpoints left out. It
        queues behind any checkpoint push of ``--hub_strategy`` on transformers' one upload thread, so the finished
        folder lands last."""
        if not self.is_world_process_zero():
            return None
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        upload = hf_api().run_as_future(
            hf_api().upload_folder, repo_id=self.hub_model_id, folder_path=self.args.output_dir,
            commit_message=commit_message, token=token if token is not None else self.args.hub_token,
            revision=revision or self.args.hub_revision, ignore_patterns=HUB_IGNORE_PATTERNS)
        if not blocking:
            return upload
        commit = upload.result()
        logger.info("Pushed %s to %s", self.args.output_dir, getattr(commit, "commit_url", self.hub_model_id))
        write_text_atomically(Path(self.args.output_dir, HUB_PUSH_FILE), json.dumps(
            {"repo_id": self.hub_model_id, "revision": revision or self.args.hub_revision,
             "global_step": saved_step(self.args.output_dir), "commit_url": getattr(commit, "commit_url", None)},
            indent=2) + "\n")
        return commit

    def pushed(self) -> bool:
        """Whether the finished run in ``output_dir`` was pushed to this run's repository (and revision) after it
        reached its last step: a rerun of a finished run whose push failed pushes it then."""
        try:
            record = json.loads(Path(self.args.output_dir, HUB_PUSH_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        repo = self.hub_model_id or self.args.hub_model_id
        return (repo is not None and record.get("repo_id") == repo and record.get("revision") == self.args.hub_revision
                and record.get("global_step") == saved_step(self.args.output_dir))

    @property
    def stopped_by_signal(self) -> int | None:
        """The signal (SIGTERM, SIGINT) that ended training early, after saving a checkpoint; else None."""
        return self.graceful_stop.received if self.graceful_stop is not None else None


def build_trainer(model, tokenizer, speed_args, mask_args, training_args, *, train_dataset=None, eval_dataset=None,
                  pad_to_multiple_of: int | None = None, callbacks=(), new_weights=None,
                  probe: Probe | None = None) -> MLMTrainer:
    """Our Trainer for ``model``: masking collators (training masks new each epoch, evaluation masks fixed, both
    functions of (seed, [epoch,] tokens)), metrics, callbacks (mask epoch, graceful stop, training-curve PNG, the
    stream position of a streamed ``train_dataset``, plus ``callbacks``, e.g. budget.BudgetCallback) and the
    speed-ups ``speed_args`` asks for (sparse prediction head, fast CPU dropout, freed CPU memory kept for reuse). With
    --mlm_probability_end training masks follow the schedule and evaluation masks use the end rate, so perplexities
    stay comparable over a run. ``new_weights`` (:func:`mlm_pretraining.model.head_warmup.find_new_weights`) adds the head
    warm-up of --head_warmup_steps; ``probe`` (:func:`mlm_pretraining.probe.read_probe`) a task probe at every
    evaluation."""
    apply_speedups(model, speed_args, on_cpu=training_args.device.type == "cpu")
    masking = dict(mlm_probability=mask_args.mlm_probability, mask_replace_prob=mask_args.mask_replace_prob,
                   random_replace_prob=mask_args.random_replace_prob, pad_to_multiple_of=pad_to_multiple_of,
                   whole_word_mask=mask_args.whole_word_mask)
    mlm_probability_end = mask_args.mlm_probability_end
    train_collator = MLMCollator(tokenizer, **masking, seed=training_args.seed,
                                 defer_masking=mlm_probability_end is not None)
    if mlm_probability_end is not None:
        masking["mlm_probability"] = mlm_probability_end
    graceful_stop = GracefulStopCallback()
    probe_callback = []
    if probe is not None:  # listed before the curve's callback, which draws at the same evaluation, with its point
        probe_callback = [ProbeCallback(probe, list(eval_dataset)[-1] if isinstance(eval_dataset, dict) else None)]
    if isinstance(train_dataset, PackedStream):
        callbacks = [*callbacks, StreamPositionCallback(train_dataset)]
    if new_weights is not None:
        callbacks = [*callbacks, HeadWarmupCallback(model, new_weights, training_args.head_warmup_steps,
                                                    evaluate_at_end=eval_dataset is not None)]
    trainer = MLMTrainer(
        model=model,
        args=training_args,
        data_collator=train_collator,
        eval_data_collator=MLMCollator(tokenizer, **masking, seed=training_args.seed),
        graceful_stop=graceful_stop,
        mlm_probability_end=mlm_probability_end,
        callbacks=[MaskEpochCallback(train_collator), graceful_stop, *probe_callback, TrainingCurveCallback(),
                   *callbacks],
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=MLMMetrics(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    for callback in probe_callback:  # its scores logged as the Trainer logs (TensorBoard, log history)
        callback.log = trainer.log
    for callback in trainer.callback_handler.callbacks:  # see internals.TENSORBOARD_LOGGING_DIR
        if isinstance(callback, TensorBoardCallback) and getattr(callback, TENSORBOARD_LOGGING_DIR) is None:
            setattr(callback, TENSORBOARD_LOGGING_DIR, os.path.join(training_args.output_dir, default_logdir()))
    check_engaged(trainer)
    if training_args.fsdp:
        settle_fsdp(trainer, new_weights)
    return trainer


def engage_fsdp_on_cpu(state, args) -> bool:
    """Engage FSDP2 on CPU processes where ``args`` ask for it (--fsdp, fsdp_config version 2), as accelerate engages
    it on GPUs; whether it did.

    accelerate makes a run with an FSDP plugin an FSDP run only for GPU-type distributed setups: for CPU processes
    (distributed type MULTI_CPU) it leaves the plugin unused, and the Trainer would train plain DDP, each process
    holding the whole model. PyTorch's FSDP2 runs on a CPU device mesh with gloo all the same, so this makes that one
    decision the other way, setting the state's fields as accelerate's GPU branch sets them (see
    internals.ACCELERATE_DISTRIBUTED_TYPE). Mixed precision stays off: FSDP trains in fp32 on CPUs (arguments.py
    refuses --bf16 there). FSDP1 and CPU backends other than gloo (mpi, ccl) are left as accelerate leaves them,
    untested here, and :func:`check_engaged` refuses them.
    """
    if args.fsdp_plugin_args is None or getattr(state, ACCELERATE_FSDP_PLUGIN, None) is not None:
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if getattr(state, ACCELERATE_DISTRIBUTED_TYPE) != DistributedType.MULTI_CPU or state.backend != "gloo" \
            or int(args.fsdp_plugin_args.get("fsdp_version", 1)) != 2:
        return False
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)  # as the Trainer makes it for the Accelerator
    setattr(state, ACCELERATE_DISTRIBUTED_TYPE, DistributedType.FSDP)
    setattr(state, ACCELERATE_FSDP_PLUGIN, plugin)
    setattr(PartialState(), ACCELERATE_DISTRIBUTED_TYPE, DistributedType.FSDP)  # the type TrainingArguments reads
    return True


def check_engaged(trainer: MLMTrainer) -> None:
    """Refuse --fsdp or --deepspeed where it was not engaged, rather than train as plain DDP in silence, every process
    holding the whole model and optimizer state: accelerate engages both on GPUs (and other accelerators) only, and
    :func:`engage_fsdp_on_cpu` FSDP2 on CPU processes with gloo."""
    state = trainer.accelerator.state
    where = (f"these {trainer.args.world_size} processes (distributed type {state.distributed_type.value}, backend "
             f"{state.backend}, device {trainer.args.device.type})")
    if trainer.args.fsdp and not trainer.is_fsdp_enabled:
        raise InputError(
            f"--fsdp: FSDP was not engaged on {where}: it runs on GPUs and other accelerators, and on CPU processes "
            "as FSDP2 (fsdp_config version 2) with gloo only; here every process would hold the whole model, as "
            "plain DDP. Drop --fsdp (torchrun alone trains with DDP, on CPUs too), or use fsdp_config version 2 and "
            "--ddp_backend gloo on CPUs, or run on GPUs.")
    if trainer.args.deepspeed and not trainer.is_deepspeed_enabled:
        raise InputError(
            f"--deepspeed: accelerate did not engage DeepSpeed on {where}; it runs DeepSpeed on GPUs and other "
            "accelerators only, and here every process would hold the whole model, as plain DDP. Drop --deepspeed "
            "(torchrun alone trains with DDP, on CPUs too), or run on GPUs.")


def settle_fsdp(trainer: MLMTrainer, new_weights=None) -> None:
    """Shard the model for FSDP2 (model/sharding.py: each encoder layer a unit, unless --fsdp_config names
    transformer_layer_cls_to_wrap; the embeddings, head and their tied weights the root), before the Trainer builds
    the optimizer. Refuse a head warm-up, whose frozen-weight bookkeeping holds the parameters sharding replaces."""
    if new_weights and trainer.args.head_warmup_steps not in ("0", 0):
        raise InputError(
            f"--fsdp with weights the checkpoint lacks ({new_weights.describe()}): the head warm-up cannot freeze "
            "weights FSDP has sharded. Pass --head_warmup_steps 0 (train every weight from the start), or warm the "
            "head up without --fsdp first and continue from that model.")
    plugin = trainer.accelerator.state.fsdp_plugin
    layer_classes = plugin.transformer_cls_names_to_wrap or fsdp_layer_classes(trainer.model)
    if plugin.fsdp_version == 1:  # deprecated in transformers; accelerate wraps, the ties all in its root unit
        plugin.transformer_cls_names_to_wrap = layer_classes
    else:
        units = shard_by_layers(trainer.model, layer_classes, reshard_after_forward=plugin.reshard_after_forward,
                                mp_policy=plugin.mixed_precision_policy, offload_policy=plugin.cpu_offload)
        # accelerate still looks the wrap classes up by name, and sharding renamed them (FSDPBertLayer).
        plugin.transformer_cls_names_to_wrap = []
        shard = sum(p.to_local().numel() for p in trainer.model.parameters())
        total = sum(p.numel() for p in trainer.model.parameters())
        logger.info("FSDP2 on %d processes: %d units of %s and the root (embeddings, head, tied weights); this "
                    "process holds %s of the %s parameters. Checkpoints %s, the final folder one whole model.",
                    trainer.args.world_size, units, ", ".join(layer_classes), f"{shard:,}", f"{total:,}",
                    str(plugin.state_dict_type).rsplit(".", 1)[-1])
