"""Every transformers internal we rely on, named once, each guarded by tests/test_internals.py.

A transformers release that moves or changes one of these must turn a guard test red (naming the symbol), never
make a run silently wrong. Everything else we use is transformers' public API (Trainer hooks and arguments,
callbacks, ``AttentionInterface``/``AttentionMaskInterface``, ``from_pretrained``/``save_pretrained``).
requirements.txt pins transformers to the releases these guards have passed on.
"""

from __future__ import annotations

# Fast dropout delegates to transformers' own SDPA attention function and mask builder in every case it does not
# handle itself (evaluation, GPU, causal or grouped-query attention). Not exported at the top level.
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

# Checkpoint folders are named f"{PREFIX_CHECKPOINT_DIR}-{step}" by the Trainer; we find and check them ourselves.
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# The TensorBoard folder the Trainer's TensorBoardCallback picks (runs/<date>_<host>), see TENSORBOARD_LOGGING_DIR.
from transformers.integrations.integration_utils import default_logdir

__all__ = ["sdpa_attention_forward", "sdpa_mask", "PREFIX_CHECKPOINT_DIR", "TRAINER_STATE_FILE", "OPTIMIZER_FILES",
           "RNG_STATE_GLOB", "ATTENTION_IMPLEMENTATION", "TRAINER_LOSS_KWARGS", "TRAINER_COLLATOR",
           "TRAINER_COUNT_ITEMS", "TRAINER_COUNT_TOKENS", "TRAINER_CREATED_SCHEDULER", "TRAINER_EVAL_SAMPLER",
           "TRAINER_LOAD_RNG_STATE", "TRAINER_TRAINING_VALUES", "MLM_HEAD_ATTRIBUTES", "MLM_DECODER_ATTRIBUTES",
           "MODERNBERT_SPARSE_SWITCH", "ACCELERATE_PREPARED", "ACCELERATE_MODELS", "ACCELERATE_DISTRIBUTED_TYPE",
           "ACCELERATE_FSDP_PLUGIN", "default_logdir", "TENSORBOARD_LOGGING_DIR"]

# Files a complete Trainer checkpoint holds (besides the weights and config.json); trainer_state.json is written last.
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")
RNG_STATE_GLOB = "rng_state*.pth"

# Config attribute naming the attention function a model runs ("sdpa", ...): read to decide whether fast dropout
# can take the attention probabilities over. transformers does not save it in config.json.
ATTENTION_IMPLEMENTATION = "_attn_implementation"

# Trainer attribute: whether the model's forward takes loss kwargs. When True the Trainer counts the masked tokens
# of each optimizer step (num_items_in_batch), multiplies the loss by the process count and skips the division by
# the accumulation steps; MLMTrainer.compute_loss reads it to normalise the loss exactly once.
TRAINER_LOSS_KWARGS = "model_accepts_loss_kwargs"

# Trainer method that counts the labelled tokens of a step's batches (num_items_in_batch): called again after a
# mask-rate schedule masks the batches in get_batch_samples.
TRAINER_COUNT_ITEMS = "_get_num_items_in_batch"

# Trainer method that adds a micro-batch's tokens (all processes) to state.num_input_tokens_seen, the count a token
# budget is spent by; the loop calls it after each training_step. Under DeepSpeed the optimizer steps inside the
# training_step of a step's last micro-batch, so MLMTrainer.training_step counts that micro-batch first, with this
# method (the same rule), to set the step's learning rate, and takes the count back for the Trainer to make.
TRAINER_COUNT_TOKENS = "_track_num_input_tokens"

# Trainer flag set by create_scheduler when the Trainer made the scheduler itself, so that a later train() call
# makes a fresh one rather than reusing it: set too when a budget makes the schedule.
TRAINER_CREATED_SCHEDULER = "_created_lr_scheduler"

# Trainer method get_eval_dataloader takes its sampler from; classification.ClassificationTrainer overrides it to
# read dev and test shortest first (transformers 5 length-groups small evaluation sets at random).
TRAINER_EVAL_SAMPLER = "_get_eval_sampler"

# Trainer method that restores the RNG states of a checkpoint. A streamed run resumed by position sets the public
# TrainingArguments.ignore_data_skip (the stream itself starts at the checkpoint's block, so the Trainer must not skip
# batches too); the Trainer then restores the RNG states before it creates the dataloader iterator, which draws from
# torch's generator. MLMTrainer.get_batch_samples restores them again after the first batch is fetched, where the
# Trainer's own batch-skipping resume does (its rng_to_sync), so dropout draws continue as in an uninterrupted run.
# The same path makes the Trainer count micro-steps from 0 again: for a stream (no length) its epoch is
# micro-steps / (max_steps x accumulation), which streaming.StreamPositionCallback puts right after each step.
TRAINER_LOAD_RNG_STATE = "_load_rng_state"

# Trainer method that works out a training's numbers from the arguments and the training dataloader, the step count
# (max_steps: --max_steps, or the epochs times the optimizer steps per epoch) last. MLMTrainer.end_of_training asks it
# how many steps this run trains, as the Trainer's loop will, to tell a run resumed at its end (publicly named but
# undocumented, and its tuple of seven could change).
TRAINER_TRAINING_VALUES = "set_initial_training_values"

# Trainer attribute that get_eval_dataloader collates with: MLMTrainer swaps in its fixed-mask evaluation collator.
TRAINER_COLLATOR = "data_collator"

# Where each masked-LM class keeps its head (sparse prediction applies these modules to the masked rows only), and
# the ModernBERT forward's own switch, an attribute set from config.sparse_prediction at init.
MLM_HEAD_ATTRIBUTES = {
    "BertForMaskedLM": ("cls",),
    "RobertaForMaskedLM": ("lm_head",),
    "XLMRobertaForMaskedLM": ("lm_head",),
    "CamembertForMaskedLM": ("lm_head",),
    "DistilBertForMaskedLM": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
}
# The head's last step, the vocabulary projection (an nn.Linear whose weight is tied to the input embeddings), by
# dotted path: in training the sparse head runs the head without it and fuses it with the loss
# (linear_cross_entropy.py), so the head must end with exactly ``decoder(features)``.
MLM_DECODER_ATTRIBUTES = {
    "BertForMaskedLM": "cls.predictions.decoder",
    "RobertaForMaskedLM": "lm_head.decoder",
    "XLMRobertaForMaskedLM": "lm_head.decoder",
    "CamembertForMaskedLM": "lm_head.decoder",
    "DistilBertForMaskedLM": "vocab_projector",
}
MODERNBERT_SPARSE_SWITCH = "sparse_prediction"

# accelerate marks a model it prepared with this attribute and keeps it in Accelerator._models; prepare() returns a
# marked model as it is. Trainer.evaluate before train() prepares the model for evaluation only (no DDP wrapper) and
# marks it, so train() would then train it unwrapped: under DDP no gradient would be averaged. MLMTrainer.train
# clears the mark of a model left unwrapped that way (transformers 5.23, accelerate 1.16).
ACCELERATE_PREPARED = "_is_accelerate_prepared"
ACCELERATE_MODELS = "_models"

# TensorBoardCallback attribute holding its folder. The callback sets it (output_dir/default_logdir()) only at
# on_train_begin; an evaluation logged before training (run_mlm.py's 'before' row) opens the writer first, with no
# folder, so in ./runs of the working directory, and training keeps that writer: every periodic evaluation and
# training loss landed outside output_dir. build_trainer sets the folder at once.
TENSORBOARD_LOGGING_DIR = "logging_dir"

# accelerate engages FSDP only for GPU-type distributed setups: for CPU processes (distributed type MULTI_CPU)
# AcceleratorState.__init__ leaves the Trainer's FSDP plugin unused, and the Trainer trains plain DDP. FSDP2 runs on
# CPU processes with gloo all the same, so trainer.engage_fsdp_on_cpu sets what accelerate's GPU branch sets: the
# state's distributed type (FSDP) and its plugin, and the distributed type of the PartialState that TrainingArguments
# reads (accelerate keeps both in shared dicts, read by every later accelerate call). It does so as MLMTrainer's
# accelerator is set: Trainer.create_accelerator_and_postprocess makes the Accelerator, then reads whether FSDP is on
# from its state (Trainer.is_fsdp_enabled, and its checks of an FSDP run). transformers 5.23, accelerate 1.16.
ACCELERATE_DISTRIBUTED_TYPE = "distributed_type"
ACCELERATE_FSDP_PLUGIN = "fsdp_plugin"
