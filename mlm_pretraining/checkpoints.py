"""Finding the checkpoint a run resumes from: an explicit --resume_from_checkpoint, or the last complete one in
output_dir; a checkpoint half-written by a killed run is skipped, and one of a different model is refused. Whether
the run in output_dir wrote its final files, and the results it saved."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path

from transformers import AutoConfig

from mlm_pretraining.errors import InputError
from mlm_pretraining.internals import (
    OPTIMIZER_FILES,
    PREFIX_CHECKPOINT_DIR,
    RNG_STATE_GLOB,
    TRAINER_STATE_FILE,
)

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Files the Trainer writes into every checkpoint (model weights and rng state are checked separately). Optimizer,
# scheduler and RNG states are torch.save zip archives, whose central directory sits at the end of the file: a
# file cut short by a kill has none.
_TORCH_FILES = OPTIMIZER_FILES
# Config keys that must agree for a checkpoint to belong to the model being trained.
_ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete Trainer checkpoint (a short reason), or None when it is complete.

    Complete means: trainer_state.json (written last) parses; the safetensors weights (single or sharded) have a
    readable header whose tensors fit in the file, with a config.json that parses; optimizer, scheduler and RNG
    states are whole archives. DeepSpeed (global_step*/) and FSDP sharded (*_fsdp*/, optimizer_*/) folders are
    accepted as they are: their own loaders check them.
    """
    folder = Path(folder)
    try:
        json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except ValueError:
        return "trainer_state.json is cut short or corrupt"
    sharded = any(p.is_dir() and (p.name.startswith(("global_step", "optimizer_")) or "_fsdp" in p.name)
                  for p in folder.iterdir())
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not sharded:
        return "no model weights (*.safetensors)"
    if weights:
        try:
            json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return "config.json is missing or corrupt"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    rng = sorted(folder.glob(RNG_STATE_GLOB))
    if not rng:
        return "no RNG state (rng_state*.pth)"
    required = [] if sharded else [folder / name for name in _TORCH_FILES]
    optional = [folder / name for name in _TORCH_FILES if sharded and (folder / name).exists()]
    for path in required + optional + rng:
        if not path.is_file():
            return f"no {path.name}"
        if not zipfile.is_zipfile(path):
            return f"{path.name} is cut short or corrupt"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Check a .safetensors file's header (8-byte length + JSON) and that the tensors it lists fit in the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                return "header cut short"
            header = json.loads(handle.read(header_len))
    except (struct.error, ValueError):
        return "unreadable header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_len + max(ends, default=0) > size:
        return "tensor data cut short"
    return None


def _checkpoints_by_step(output_dir: str) -> list[Path]:
    """checkpoint-N folders in ``output_dir``, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in ``output_dir``; incomplete newer ones are skipped with a warning."""
    for folder in _checkpoints_by_step(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("Skipping %s: incomplete checkpoint (%s), probably from a run killed while saving. "
                       "Resuming from an earlier one; it will be overwritten when training reaches that step.",
                       folder, problem)
    return None


def find_resume_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from, or None to start from the pretrained model."""
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not os.path.isdir(explicit):
            raise InputError(
                f"--resume_from_checkpoint '{explicit}' is not a folder. Give a checkpoint folder such as "
                f"{os.path.join(training_args.output_dir, 'checkpoint-500')}, or leave the flag out to resume from "
                "the last checkpoint in --output_dir."
            )
        problem = checkpoint_problem(explicit)
        if problem:
            raise InputError(
                f"--resume_from_checkpoint '{explicit}' is not a complete checkpoint ({problem}); it was probably "
                "written by a run killed while saving. Give an earlier checkpoint, or leave the flag out to resume "
                "from the last complete checkpoint in --output_dir."
            )
        return explicit
    if not training_args.do_train or not os.path.isdir(training_args.output_dir):
        return None
    if training_args.overwrite_output_dir:
        if _checkpoints_by_step(training_args.output_dir):
            logger.warning("--overwrite_output_dir: ignoring the checkpoints in %s and starting afresh.",
                           training_args.output_dir)
        return None
    last = last_complete_checkpoint(training_args.output_dir)
    if last is not None:
        logger.info("Resuming from %s (the last complete checkpoint in --output_dir; --overwrite_output_dir "
                    "starts afresh).", last)
    return last


def check_checkpoint_matches(checkpoint: str, model_args, explicit: bool) -> None:
    """Refuse to resume from a checkpoint of a different model (architecture or vocabulary), naming both.

    Compares config.json files only, so it runs before any weights load. A model whose config cannot be read is
    left for modeling.load_model to report.
    """
    from mlm_pretraining.model.loading import (
        resolve_model_path,  # here, not at the top: modeling imports the heavy model classes
    )

    config_path = Path(checkpoint) / "config.json"
    if not config_path.is_file():
        return
    model_name = model_args.model_name_or_path
    try:
        ours = AutoConfig.from_pretrained(resolve_model_path(model_args.config_name or model_name),
                                          cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                                          trust_remote_code=model_args.trust_remote_code).to_dict()
    except (OSError, ValueError):
        return
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    differences = [f"{key} {saved.get(key)} vs {ours.get(key)}" for key in _ARCHITECTURE_KEYS
                   if saved.get(key) != ours.get(key)]
    if not differences:
        return
    where = ("--resume_from_checkpoint" if explicit else "--output_dir") + f" '{checkpoint}'"
    fix = ("Give a checkpoint of this model." if explicit else
           "Pick another --output_dir, or pass --overwrite_output_dir to start afresh there (its checkpoints will "
           "be overwritten as new ones are saved).")
    raise InputError(f"{where} holds a checkpoint of a different model than --model_name_or_path {model_name} "
                     f"({'; '.join(differences)}, checkpoint vs model). {fix}")


def finished_without_checkpoints(training_args) -> str | None:
    """``output_dir`` when it holds a run that saved no checkpoint (--save_strategy no) but wrote its final files
    (trainer_state.json, written last), for the same rule as a last checkpoint: a rerun at the end of training has
    nothing to do. None when --overwrite_output_dir or --resume_from_checkpoint is given, or a checkpoint is there."""
    output_dir = training_args.output_dir
    if (not training_args.do_train or training_args.overwrite_output_dir or training_args.resume_from_checkpoint
            or not os.path.isdir(output_dir) or _checkpoints_by_step(output_dir)):
        return None
    return output_dir if saved_step(output_dir) is not None else None  # none, or cut short: not a finished run's


def saved_step(folder: str) -> int | None:
    """The global step in ``folder``'s trainer_state.json (a checkpoint's, or the final one run_mlm.py writes last);
    None when it is missing or cut short."""
    try:
        return json.loads(Path(folder, TRAINER_STATE_FILE).read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError):
        return None


def run_wrote_its_files(output_dir: str, checkpoint: str) -> bool:
    """Whether the run in ``output_dir`` wrote all its final files (model, results, card) after ``checkpoint``: its
    own trainer_state.json, which run_mlm.py writes last, is whole and at the checkpoint's step. A run killed after its
    last checkpoint (in the final evaluation, say) has none, or an earlier run's."""
    done = saved_step(output_dir)
    return done is not None and done == saved_step(checkpoint)


def saved_results(output_dir: str, split: str = "all", prefix: str = "") -> dict[str, float]:
    """The metrics the run in ``output_dir`` saved in ``{split}_results.json`` (those whose name starts with
    ``prefix``); empty when there is none. A resumed run's results and card keep what it did not measure again: the
    before-training evaluation (``eval_before_``), and for a run finished by a rerun its training's metrics."""
    path = Path(output_dir) / f"{split}_results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in results.items() if key.startswith(prefix)}
