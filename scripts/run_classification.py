#!/usr/bin/env python
"""Fine-tune any checkpoint (a base model, or a run_mlm.py output folder) for sequence classification.

    python scripts/run_classification.py --model_name_or_path out/tapt \\
        --train_file data/train.jsonl --validation_file data/dev.jsonl --test_file data/test.jsonl \\
        --output_dir out/cls --seed 1
    python scripts/run_classification.py config.yaml          # every flag from one YAML/JSON file

Labelled data is .csv/.tsv/.json/.jsonl with a text and a label column (strings or integers). The dev set selects
the best epoch by macro-F1; accuracy, macro-F1 and micro-F1 on dev and test go to output_dir/all_results.json.
"""

from __future__ import annotations

from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    set_seed,
)

from arguments import ModelArguments, parse_args, run_cli
from mlm_pretraining.classification import (
    ClassificationDataArguments,
    ClassificationTrainingArguments,
    compute_metrics,
    encode_labels,
    label_list,
    label_maps,
    load_labelled_datasets,
    take_subsets,
)
from mlm_pretraining.fast_dropout import enable_fast_dropout
from mlm_pretraining.logs import get_logger, setup_logging
from mlm_pretraining.modeling import load_model, load_tokenizer, resolve_max_seq_length
from mlm_pretraining.vocab import add_domain_tokens, read_token_file

logger = get_logger("run_classification")
ARGUMENT_GROUPS = (ModelArguments, ClassificationDataArguments, ClassificationTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fine-tune, select on dev, score dev and test; return (and save) the metrics."""
    model_args, data_args, training_args = parse_args(argv, groups=ARGUMENT_GROUPS)
    setup_logging(training_args)
    set_seed(training_args.seed)  # before the model loads: the new classifier head's initialisation follows --seed

    # Labelled files are read and checked before the model loads, so a bad file fails fast.
    raw = load_labelled_datasets(data_args, model_args.cache_dir)
    labels = label_list(raw["train"])  # from all the training data, before any subset is taken
    encoded = encode_labels(take_subsets(raw, data_args), labels)
    id2label, label2id = label_maps(labels)
    logger.info("%d labels: %s", len(labels), ", ".join(id2label.values()))

    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, tokenizer, AutoModelForSequenceClassification,
                       config_kwargs=dict(num_labels=len(labels), id2label=id2label, label2id=label2id))
    if model_args.add_tokens:
        add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    if model_args.fast_dropout:
        enable_fast_dropout(model)
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = encoded.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_seq_length),
                                batched=True, remove_columns=["text"], desc="Tokenizing")

    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train()
    trainer.save_model()  # the dev-selected model with its tokenizer and label names
    results = dict(train_result.metrics, train_samples=len(tokenized["train"]))
    if trainer.state.best_global_step is not None:
        results["best_global_step"] = trainer.state.best_global_step
    trainer.log_metrics("train", results)
    trainer.save_metrics("train", results)
    trainer.save_state()

    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in tokenized:
            metrics = trainer.evaluate(tokenized[split], metric_key_prefix=prefix)
            metrics[f"{prefix}_samples"] = len(tokenized[split])
            trainer.log_metrics(prefix, metrics)
            trainer.save_metrics(prefix, metrics)  # {prefix}_results.json and all_results.json
            results.update(metrics)
    return results


if __name__ == "__main__":
    run_cli(main, "run_classification.py")
