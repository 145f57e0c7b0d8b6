#!/usr/bin/env python
"""Continue masked-language-model pretraining of a BERT-family encoder on your own text.

    python run_mlm.py --model_name_or_path bert-base-uncased --train_file corpus.txt --output_dir out
    python run_mlm.py examples/quickstart.yaml                 # every flag from one YAML/JSON file
    torchrun --nproc_per_node 8 run_mlm.py ...                 # several GPUs

Rerunning the same command resumes from the last checkpoint in --output_dir.
"""

from __future__ import annotations

import logging
import sys

import datasets
import transformers
from transformers import set_seed

from arguments import InputError, parse_args
from checkpoints import find_resume_checkpoint
from collators import MLMCollator
from data import load_raw_datasets, prepare_datasets
from metrics import MaskedAccuracy, perplexity, preprocess_logits_for_metrics
from mlm_trainer import MLMTrainer
from modeling import load_model, load_tokenizer, resolve_max_seq_length
from plotting import TrainingCurveCallback
from vocab import add_domain_tokens, read_token_file

logger = logging.getLogger("run_mlm")


def setup_logging(training_args) -> None:
    """One log format for us, transformers and datasets; replicas log warnings only."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("data"), logging.getLogger("modeling"),
                       logging.getLogger("checkpoints"), logging.getLogger("vocab"), logging.getLogger("plotting")):
        lib_logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def evaluate(trainer, prefix: str) -> dict[str, float]:
    """Evaluate with fixed masks; add perplexity = exp(loss); log and save under ``prefix``."""
    metrics = trainer.evaluate(metric_key_prefix=prefix)
    metrics[f"{prefix}_perplexity"] = perplexity(metrics[f"{prefix}_loss"])
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics("eval", metrics, combined=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, mask_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.info("Training arguments: %s", training_args)
    set_seed(training_args.seed)
    resume_from = find_resume_checkpoint(training_args)

    # The corpus is read and checked before the model loads, so a bad file fails fast.
    raw = load_raw_datasets(data_args, model_args.cache_dir)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, tokenizer)
    if model_args.add_tokens:  # before tokenizing, so the corpus is cut with the new words
        add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    with training_args.main_process_first(desc="tokenizing"):
        processed = prepare_datasets(raw, tokenizer, data_args, max_seq_length)
    train_dataset = processed.get("train") if training_args.do_train else None
    eval_dataset = processed.get("validation") if training_args.do_eval else None
    if training_args.do_train and train_dataset is None:
        raise InputError("Training needs --train_file (or --dataset_name with a train split).")
    if training_args.do_eval and eval_dataset is None:
        logger.warning("No evaluation text (--validation_file, or --validation_split_percentage > 0): "
                       "skipping evaluation.")

    # Training masks are drawn afresh every step; evaluation masks are fixed by the seed.
    pad_to_multiple_of = data_args.pad_to_multiple_of or (8 if data_args.line_by_line else None)
    masking = dict(mlm_probability=mask_args.mlm_probability, mask_replace_prob=mask_args.mask_replace_prob,
                   random_replace_prob=mask_args.random_replace_prob, pad_to_multiple_of=pad_to_multiple_of)
    trainer = MLMTrainer(
        model=model,
        args=training_args,
        data_collator=MLMCollator(tokenizer, **masking),
        eval_data_collator=MLMCollator(tokenizer, **masking, seed=training_args.seed),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=MaskedAccuracy(),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        callbacks=[TrainingCurveCallback()],  # output_dir/training_curves.png
    )

    results: dict[str, float] = {}
    if eval_dataset is not None and training_args.do_train and resume_from is None:
        results.update(evaluate(trainer, "eval_before"))
    if train_dataset is not None:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model()  # model and tokenizer, loadable with AutoModelForMaskedLM / pipeline("fill-mask")
        metrics = dict(train_result.metrics, train_samples=len(train_dataset))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        results.update(metrics)
    if eval_dataset is not None:
        results.update(evaluate(trainer, "eval"))
        results["eval_samples"] = len(eval_dataset)
    if train_dataset is not None:
        trainer.save_state()  # after the last evaluation, so plot_curves.py finds it in trainer_state.json
    return results


if __name__ == "__main__":
    try:
        main()
    except InputError as err:
        print(f"run_mlm.py: error: {err}", file=sys.stderr)
        sys.exit(2)
