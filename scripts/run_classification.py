#!/usr/bin/env python
"""Fine-tune any checkpoint (a base model, or a run_mlm.py output folder) for sequence classification.

    python scripts/run_classification.py --model_name_or_path out/tapt \\
        --train_file data/train.jsonl --validation_file data/dev.jsonl --test_file data/test.jsonl \\
        --output_dir out/cls --seed 1
    python scripts/run_classification.py config.yaml          # every flag from one YAML/JSON file

Labelled data is .csv/.tsv/.json/.jsonl with a text and a label column (strings or integers). Defaults: up to 10
epochs at 5e-5, the dev set scored every epoch, stopping after 3 epochs without a better dev macro-F1, the best epoch
kept; accuracy, macro-F1 and micro-F1 on dev and test go to output_dir/all_results.json.
"""

from __future__ import annotations

from arguments import FineTuneSpeedArguments, ModelArguments, parse_args
from mlm_pretraining.classification import (
    ClassificationDataArguments,
    ClassificationTrainingArguments,
    fine_tune,
)
from mlm_pretraining.errors import run_cli
from mlm_pretraining.logs import setup_logging

ARGUMENT_GROUPS = (ModelArguments, ClassificationDataArguments, FineTuneSpeedArguments, ClassificationTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fine-tune, select on dev, score dev and test; return (and save) the metrics."""
    model_args, data_args, speed_args, training_args = parse_args(argv, groups=ARGUMENT_GROUPS)
    setup_logging(training_args)
    return fine_tune(model_args, data_args, training_args, speed_args)


if __name__ == "__main__":
    run_cli(main, "run_classification.py")
