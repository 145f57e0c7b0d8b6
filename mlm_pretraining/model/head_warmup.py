"""Head warm-up: train only the weights the checkpoint did not have (a new MLM head, rows added by --add_tokens) for
the first steps, so gradients from a random head do not flow into a pretrained encoder, then train everything.

This is linear probing before fine-tuning (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"),
applied to the masked-LM head: a sentence-embedding checkpoint such as MiniLM ships without one. Which weights are
new comes from ``from_pretrained(..., output_loading_info=True)``'s missing keys; a missing key whose parameter is
tied to a loaded one (BERT's decoder weight is the input embedding matrix) is not new.

Freezing is exact: a frozen parameter has no gradient at the optimizer step, so AdamW leaves it untouched (no
weight decay, no moment update); frozen rows of a partly new matrix get a zero gradient (so they neither count in
gradient clipping nor move Adam's moments) and are restored after each step (so weight decay cannot move them).
Everything depends on the global step alone, so a run resumed during or after the warm-up continues exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from mlm_pretraining.flag_values import parse_warmup_steps

logger = logging.getLogger(__name__)

# --head_warmup_steps auto: this share of the run's optimizer steps, at most AUTO_CAP. Measured on the shipped MiniLM
# (citation_intent text, 8 x 64-token blocks, constant learning rate 1e-4 after a 9-step ramp, encoder frozen):
# training loss 10.7, 9.5, 8.4, 7.9, 7.7, 7.8 at steps 10-60, so the fast part of the head's fit is over within
# ~50 steps at a masked-LM learning rate (a run's own learning-rate ramp slows that start); a tenth of the run
# covers it in runs of 500+ steps, and the cap keeps long runs from idling the encoder. At 1e-3 the loss is 9.2, 7.6,
# 7.05, 6.95, 7.0 at steps 10-50: the same plateau near 7, what a frozen encoder allows; the rest is learnt together
# with the encoder. (A long learning-rate ramp, e.g. 6 % of 100k steps, keeps the rate low through the first 300.)
AUTO_SHARE = 0.1
AUTO_CAP = 300


@dataclass
class NewWeights:
    """The weights a checkpoint did not provide: whole parameters, and new rows of otherwise loaded matrices."""

    parameters: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    rows: dict[str, tuple[torch.nn.Parameter, list[int]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.parameters or self.rows)

    def describe(self) -> str:
        """One phrase naming what is new, e.g. 'cls.predictions.bias, cls.predictions.transform.* (5 tensors)'."""
        groups = sorted({name.rsplit(".", 2)[0] + ".*" if name.count(".") > 2 else name for name in self.parameters})
        parts = [f"{', '.join(groups)} ({len(self.parameters)} tensors)"] if self.parameters else []
        for name, (_, ids) in self.rows.items():
            parts.append(f"{len(ids)} new rows of {name}")
        return "; ".join(parts)


def find_new_weights(model, missing_keys, added_token_ids=()) -> NewWeights:
    """The parameters of ``model`` listed in ``missing_keys`` (from ``output_loading_info``) and not tied to a loaded
    parameter, plus the rows ``added_token_ids`` of its input and output embeddings and output bias."""
    missing = set(missing_keys)
    named = list(model.named_parameters(remove_duplicate=False))
    loaded_ids = {id(p) for name, p in named if name not in missing}
    new: dict[str, torch.nn.Parameter] = {}
    for name, param in named:
        if name in missing and id(param) not in loaded_ids and id(param) not in {id(p) for p in new.values()}:
            new[name] = param
    result = NewWeights(parameters=new)
    ids = sorted(int(i) for i in added_token_ids)
    if ids:
        new_ids = {id(p) for p in new.values()}
        output = model.get_output_embeddings()
        candidates = [model.get_input_embeddings().weight]
        if output is not None:
            candidates += [output.weight, getattr(output, "bias", None)]
        names: dict[int, str] = {}
        for name, param in named:  # a tied parameter goes by its first (owner's) name
            names.setdefault(id(param), name)
        for param in candidates:
            if param is not None and id(param) not in new_ids and names.get(id(param)) not in result.rows:
                result.rows[names[id(param)]] = (param, ids)
    return result



def resolve_warmup_steps(setting: str | int, new_weights: NewWeights, max_steps: int) -> int:
    """The warm-up length: 'auto' is 0 when nothing is new, else AUTO_SHARE of ``max_steps`` (at least 1), capped
    at AUTO_CAP; an explicit number is used as given (0 when nothing is new: there is nothing to warm up)."""
    if not new_weights:
        return 0
    if setting == "auto":
        return max(1, min(AUTO_CAP, math.ceil(AUTO_SHARE * max_steps)))
    return int(setting)


class HeadWarmupCallback(TrainerCallback):
    """For the first ``steps`` optimizer steps train only ``new_weights``; from then on train everything.

    ``evaluate_at_end``: evaluate when the warm-up ends. The encoder is still the base's then, with a fitted head,
    so these are the base model's own masked-LM scores (before training, a random head scores near vocabulary-size
    perplexity): the fair 'before' for measuring adaptation and forgetting.
    """

    def __init__(self, model, new_weights: NewWeights, steps: str | int = "auto", evaluate_at_end: bool = False):
        self.model = model
        self.new_weights = new_weights
        self.setting = parse_warmup_steps(steps)
        self.steps = 0
        new = {id(p) for p in new_weights.parameters.values()} | {id(p) for p, _ in new_weights.rows.values()}
        self.frozen = [p for p in model.parameters() if id(p) not in new and p.requires_grad]
        self.row_masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.saved_rows: list[torch.Tensor] = []
        self.hooks: list = []
        self.toggled = False
        self.evaluate_at_end = evaluate_at_end

    def warming_up(self, state) -> bool:
        return state.global_step < self.steps

    def on_train_begin(self, args, state, control, **kwargs):
        # After the optimizer is built (it holds every parameter, so the encoder trains once unfrozen) and after a
        # resumed run has loaded its checkpoint and state.
        self.steps = resolve_warmup_steps(self.setting, self.new_weights, state.max_steps)
        if not self.new_weights:
            logger.info("The checkpoint has every weight of the masked-LM model (a trained head): no head warm-up.")
        elif self.steps == 0:
            logger.info("Newly initialised: %s; --head_warmup_steps 0: training everything from the start.",
                        self.new_weights.describe())
        elif state.global_step >= self.steps:  # resumed after the warm-up
            logger.info("Newly initialised at the start: %s; their warm-up (steps 1-%d, --head_warmup_steps %s) "
                        "ended before step %d, where this run resumes: training every weight.",
                        self.new_weights.describe(), self.steps, self.setting, state.global_step)
        else:
            logger.info("Newly initialised: %s; training only these until step %d of %d (--head_warmup_steps %s)%s, "
                        "then everything.", self.new_weights.describe(), self.steps, state.max_steps, self.setting,
                        f", resuming at step {state.global_step}" if state.global_step else "")
        if self.warming_up(state):
            self._freeze(args)

    def _freeze(self, args) -> None:
        # One process: no gradients at all for frozen weights (a cheaper backward, and clipping sees only the new
        # weights). Under DDP the set of parameters with gradients must not change after wrapping, so gradients are
        # computed, reduced, and dropped before the step instead (on_pre_optimizer_step).
        if args.world_size == 1:
            for param in self.frozen:
                param.requires_grad_(False)
            self.toggled = True
        for param, ids in self.new_weights.rows.values():
            mask = torch.zeros(param.shape[0], *([1] * (param.dim() - 1)), dtype=param.dtype, device=param.device)
            mask[ids] = 1
            self.row_masks.append((param, mask))
            self.saved_rows.append(param.detach().clone())
            self.hooks.append(param.register_hook(lambda grad, mask=mask: grad * mask))

    def _unfreeze(self) -> None:
        if self.toggled:
            for param in self.frozen:
                param.requires_grad_(True)
            self.toggled = False
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.row_masks, self.saved_rows = [], [], []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.warming_up(state) and not self.toggled:
            for param in self.frozen:
                param.grad = None  # AdamW skips a parameter without gradient: no decay, no moment update

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.warming_up(state):
            with torch.no_grad():  # weight decay moves rows whose gradient is zero; put the old rows back
                for (param, mask), saved in zip(self.row_masks, self.saved_rows):
                    param.copy_(torch.where(mask.bool(), param, saved))

    def on_step_end(self, args, state, control, **kwargs):
        if self.steps and state.global_step == self.steps:
            self._unfreeze()
            logger.info("Head warm-up done at step %d: training every weight from now on.", state.global_step)
            if self.evaluate_at_end and state.global_step < state.max_steps:  # the last step is evaluated anyway
                control.should_evaluate = True

    def on_train_end(self, args, state, control, **kwargs):
        self._unfreeze()  # a model handed back frozen would surprise whoever trains it next


def warmup_results(trainer) -> dict[str, float]:
    """The evaluation at the end of the head warm-up, from the run's log history (kept across resumes), as
    ``eval_warmup_<metric>`` / ``eval_warmup_<set>_<metric>``: the base encoder with a fitted head, the fair
    baseline for what continued pretraining changed. Empty when there was no warm-up or no evaluation then."""
    warmup = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HeadWarmupCallback)), None)
    if warmup is None or not warmup.steps:
        return {}
    for entry in trainer.state.log_history:
        if entry.get("step") == warmup.steps and any(key.startswith("eval_") for key in entry):
            return {f"eval_warmup_{key[len('eval_'):]}": value for key, value in entry.items()
                    if key.startswith("eval_") and key.endswith(("_loss", "_perplexity", "_accuracy"))}
    return {}
