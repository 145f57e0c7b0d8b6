"""Logging set-up shared by run_mlm.py and the scripts: one format, one parent logger for the whole package."""

from __future__ import annotations

import logging
import sys

import datasets
import transformers

PARENT = "mlm_pretraining"


def get_logger(name: str) -> logging.Logger:
    """A logger under the package's parent (``mlm_pretraining.<name>``), for entry points outside the package."""
    return logging.getLogger(f"{PARENT}.{name}")


def setup_logging(training_args=None) -> None:
    """One log format for us, transformers and datasets; replicas of a distributed run log warnings only. Without
    ``training_args`` (a script that does not train): our information, the libraries' warnings. Then the notices
    the argument layer left on ``training_args`` (a default it settled, a flag it changed) are logged."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level() if training_args is not None else logging.WARNING
    logging.getLogger(PARENT).setLevel(logging.INFO if training_args is None or training_args.should_log
                                       else logging.WARNING)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    for notice in getattr(training_args, "notices", ()):
        logging.getLogger(f"{PARENT}.arguments").info(notice)
