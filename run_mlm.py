#!/usr/bin/env python
"""Continue masked-language-model pretraining of a BERT-family encoder on your own text.

    python run_mlm.py --model_name_or_path bert-base-uncased --train_file corpus.txt --output_dir out
    python run_mlm.py examples/quickstart.yaml                 # every flag from one YAML/JSON file
    torchrun --nproc_per_node 8 run_mlm.py ...                 # several GPUs (or: accelerate launch)
    torchrun --nproc_per_node 8 run_mlm.py examples/fsdp.yaml ...  # a model sharded across them (FSDP2)
    python run_mlm.py --tokenized_dataset prepared/ ...        # a corpus tokenized once by scripts/prepare_corpus.py

Rerunning the same command resumes from the last complete checkpoint in --output_dir; on a finished run it changes
nothing and says so. SIGTERM or Ctrl-C saves a checkpoint at the current step and exits with status 128 + the signal
number (143 or 130); rerun to continue.
"""

from __future__ import annotations

import signal
import sys

from transformers import set_seed

from arguments import parse_args
from mlm_pretraining.budget import plan_budget
from mlm_pretraining.checkpoints import (
    check_checkpoint_matches,
    find_resume_checkpoint,
    finished_without_checkpoints,
    run_wrote_its_files,
    saved_results,
)
from mlm_pretraining.data.sources import (
    evaluation_sets,
    evaluation_sizes,
    mix_in,
    prepare_datasets,
    read_data,
    tokenize_corpus,
)
from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.flag_values import read_token_file
from mlm_pretraining.logs import get_logger, setup_logging
from mlm_pretraining.model.base_weights import keep_base_weights
from mlm_pretraining.model.head_warmup import find_new_weights, warmup_results
from mlm_pretraining.model.loading import (
    load_model_with_info,
    load_tokenizer,
    model_class_for,
    resolve_max_seq_length,
    resolve_model_path,
)
from mlm_pretraining.model.vocab import add_domain_tokens
from mlm_pretraining.probe import read_probe
from mlm_pretraining.reporting.corpus_report import report_corpus
from mlm_pretraining.reporting.model_card import write_model_card
from mlm_pretraining.speed.precision import warn_about_precision
from mlm_pretraining.trainer import build_trainer

logger = get_logger("run_mlm")


def evaluate(trainer, prefix: str, earlier: dict[str, float] | None = None) -> dict[str, float]:
    """Evaluate with fixed masks (loss, perplexity, masked-token accuracy; per named set); log the metrics and save
    them, with the ``earlier`` evaluation's, to eval_results.json and all_results.json."""
    metrics = trainer.evaluate(metric_key_prefix=prefix)
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics("eval", {**(earlier or {}), **metrics}, combined=True)
    return metrics


def push(trainer) -> None:
    """Upload the finished folder to the hub; a failure (network, token, repository) says that the model is saved and
    how to retry, instead of a traceback."""
    try:
        trainer.push_to_hub()
    except Exception as err:  # noqa: BLE001 - whatever the hub client raises, the trained model is safe on disk
        raise InputError(f"--push_to_hub: uploading {trainer.args.output_dir} to {trainer.hub_model_id} failed "
                         f"({type(err).__name__}: {err}). The trained model is saved there; rerun the same command "
                         "to push it (nothing is trained again).") from err


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, mask_args, speed_args, probe_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.info("Training arguments: %s", training_args)
    warn_about_precision(training_args)
    set_seed(training_args.seed)
    resume_from = find_resume_checkpoint(training_args)
    if resume_from is not None:
        check_checkpoint_matches(resume_from, model_args, explicit=bool(training_args.resume_from_checkpoint))

    # The corpus is read and checked before the model loads, so a bad file fails fast; under torchrun the main
    # process reads (and caches) first, the others then read the cache. With --streaming 'train' is a stream.
    with training_args.main_process_first(desc="reading the corpus"):
        raw = read_data(data_args, mask_args.whole_word_mask, model_args.cache_dir)
        probe = read_probe(probe_args, model_args.cache_dir)  # --probe_task: the labelled texts it embeds, or None
    tokenizer = load_tokenizer(model_args)
    model, loading_info = load_model_with_info(model_args, tokenizer, model_class_for(model_args, nsp=data_args.nsp))
    added_tokens = []
    if model_args.add_tokens:  # before tokenizing, so the corpus is cut with the new words
        added_tokens = add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    # A new head (or new embedding rows) is trained alone for --head_warmup_steps first.
    new_weights = find_new_weights(model, loading_info["missing_keys"], tokenizer.convert_tokens_to_ids(added_tokens))
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    with training_args.main_process_first(desc="tokenizing"):
        words = dict(whole_word_mask=mask_args.whole_word_mask,
                     chinese_word_segmentation=mask_args.chinese_word_segmentation)
        tokenized = tokenize_corpus(raw, tokenizer, data_args, max_seq_length, **words)
        processed = prepare_datasets(raw, tokenizer, data_args, max_seq_length, **words, seed=training_args.seed,
                                     tokenized=tokenized)
    eval_dataset = evaluation_sets(processed) if training_args.do_eval else None
    if training_args.do_train and "train" not in processed:
        if eval_dataset is None:
            raise InputError("Training needs --train_file (or --dataset_name with a train split); to evaluate a "
                             "checkpoint, give --validation_file with --do_train False.")
        logger.info("No training text: evaluating %s only.", model_args.model_name_or_path)
        training_args.do_train = False
    train_dataset = processed.get("train") if training_args.do_train else None
    if train_dataset is not None and "mix" in processed:  # general text replayed, so less of it is forgotten
        train_dataset = mix_in(train_dataset, processed["mix"], data_args.mix_share, training_args.seed)
    if training_args.do_eval and eval_dataset is None:
        logger.warning("No evaluation text (--validation_file, or --validation_split_percentage > 0): "
                       "skipping evaluation.")

    # --max_train_tokens / --max_train_time: the step count is set before the Trainer (and its scheduler) is built.
    budget = plan_budget(training_args, data_args, train_dataset, max_seq_length) \
        if train_dataset is not None else None
    # Training masks change every epoch, evaluation masks are fixed; both are functions of (seed, [epoch,] tokens),
    # so they are the same however batches are split across processes, and after a resume.
    trainer = build_trainer(model, tokenizer, speed_args, mask_args, training_args,
                            train_dataset=train_dataset, eval_dataset=eval_dataset,
                            pad_to_multiple_of=data_args.pad_to_multiple_of,
                            callbacks=[budget] if budget else [], new_weights=new_weights, probe=probe)

    # A rerun of a finished run (its last checkpoint, or a run saving none its final state, at the end of training by
    # the trainer's one rule) leaves every file as it is; one killed after that checkpoint but before its final files
    # writes them, training no step.
    finished = resume_from or finished_without_checkpoints(training_args)
    at_end = trainer.end_of_training(finished) if finished is not None and train_dataset is not None else None
    if at_end and run_wrote_its_files(training_args.output_dir, finished):
        afresh = "leave out --resume_from_checkpoint" if training_args.resume_from_checkpoint else \
            "add --overwrite_output_dir"
        logger.info("Nothing to do: %s is at the end of training (%s); %s holds the finished run and is left as it "
                    "is. To train longer, raise that flag; to start afresh, %s.", finished, at_end,
                    training_args.output_dir, afresh)
        if training_args.push_to_hub and not trainer.pushed():
            logger.info("It was not pushed to %s yet (the last push failed or was not asked for): pushing it now.",
                        trainer.hub_model_id)
            push(trainer)
        return saved_results(training_args.output_dir)
    if at_end:
        logger.info("%s is at the end of training (%s), but the run stopped before writing its final files: writing "
                    "them, without training.", resume_from, at_end)
    report = None
    if training_args.process_index == 0:  # from the tokenized data, before any hour is spent training
        report = report_corpus(raw, tokenized, processed, tokenizer, data_args, max_seq_length,
                               training_args.output_dir, model_name=model_args.model_name_or_path)
    results: dict[str, float] = {}
    if eval_dataset is not None and training_args.do_train and resume_from is None:
        results.update(evaluate(trainer, "eval_before"))
    elif resume_from is not None:  # measured when the run started; kept for the results and the card
        results.update(saved_results(training_args.output_dir, prefix="eval_before_"))
    if train_dataset is not None:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        if trainer.stopped_by_signal:  # the checkpoint at this step is the whole result; a rerun continues from it
            logger.warning("Stopped by %s at step %d; checkpoint saved in %s. Rerun the same command to continue.",
                           signal.Signals(trainer.stopped_by_signal).name, trainer.state.global_step,
                           training_args.output_dir)
            return dict(train_result.metrics, stopped_by_signal=trainer.stopped_by_signal)
        # Model and tokenizer, loadable with AutoModelForMaskedLM / pipeline("fill-mask"); under FSDP gathered whole.
        trainer.save_model()
        if trainer.is_world_process_zero():  # and the base's weights MLM does not use (BERT's pooler), for fine-tuning
            keep_base_weights(model, resolve_model_path(model_args.model_name_or_path), loading_info["unexpected_keys"],
                              training_args.output_dir, model_args.cache_dir, model_args.model_revision)
        results.update(warmup_results(trainer))  # the base encoder with a fitted head: the fair baseline
        if trainer.resumed_at_end:  # no step trained, so no training metrics: those the run saved, if it got there
            results.update(saved_results(training_args.output_dir, "train"))
        else:
            metrics = dict(train_result.metrics)
            if hasattr(train_dataset, "__len__"):  # a stream has no length
                metrics["train_samples"] = len(train_dataset)
            trainer.log_metrics("train", metrics)
            trainer.save_metrics("train", metrics)
            results.update(metrics)
    if eval_dataset is not None:
        results.update(evaluate(trainer, "eval", earlier={k: v for k, v in results.items() if k.startswith("eval_")}))
        results.update(evaluation_sizes(eval_dataset))
    if train_dataset is not None:
        if training_args.process_index == 0:
            write_model_card(trainer, model_args, data_args, mask_args, results, report, argv)
        # Last: it marks a run that wrote all its files (checkpoints.run_wrote_its_files); after the last evaluation,
        # so plot_curves.py finds it in trainer_state.json.
        trainer.save_state()
        if training_args.push_to_hub:  # once, at the end: the folder as the user has it (pooler, card, results)
            push(trainer)
    return results


if __name__ == "__main__":
    results = run_cli(main, "run_mlm.py")
    # Stopped by a signal, with the checkpoint saved: the shell's status for that signal, so pipelines stop too.
    sys.exit(128 + results["stopped_by_signal"] if results.get("stopped_by_signal") else 0)
