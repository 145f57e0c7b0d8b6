"""Finding the checkpoint a run resumes from: an explicit --resume_from_checkpoint, or the last one in output_dir."""

from __future__ import annotations

import logging
import os

from transformers.trainer_utils import get_last_checkpoint

from arguments import InputError

logger = logging.getLogger(__name__)


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
        return explicit
    if not training_args.do_train or not os.path.isdir(training_args.output_dir):
        return None
    last = get_last_checkpoint(training_args.output_dir)
    if last is None:
        return None
    if training_args.overwrite_output_dir:
        logger.warning("--overwrite_output_dir: ignoring the checkpoints in %s and starting afresh.",
                       training_args.output_dir)
        return None
    logger.info("Resuming from %s (the last checkpoint in --output_dir; --overwrite_output_dir starts afresh).", last)
    return last
