"""Downstream sequence classification: its arguments, its labelled files (read by data/labelled.py), label ids, F1
metrics, and the fine-tuning run itself (:func:`fine_tune`, used by scripts/run_classification.py and
scripts/benchmarks/compare_finetuning.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import SequentialSampler
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    IntervalStrategy,
    Trainer,
    TrainingArguments,
    set_seed,
)

from arguments import FineTuneSpeedArguments
from mlm_pretraining.data.labelled import label_list, read_labelled
from mlm_pretraining.errors import InputError, as_list
from mlm_pretraining.flag_values import read_token_file
from mlm_pretraining.hardware import has_gpu
from mlm_pretraining.internals import PREFIX_CHECKPOINT_DIR
from mlm_pretraining.model.loading import (
    load_model,
    load_tokenizer,
    resolve_max_seq_length,
)
from mlm_pretraining.model.vocab import add_domain_tokens
from mlm_pretraining.speed import apply_speedups

logger = logging.getLogger(__name__)

# Held-out dev sets and --max_*_samples subsets are drawn with this seed, so every --seed sees the same data.
SPLIT_SEED = 0
# What a model folder needs: weights (pickles count here: loading refuses them with its own message) and, unless
# --tokenizer_name names another, a tokenizer. A folder without tokenizer files still loads, as a tokenizer of the
# five special tokens that reads every word as [UNK]: it must be refused before, not noticed in the scores.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")


@dataclass
class ClassificationDataArguments:
    """Which labelled files to train, select and test on, and which columns hold text and label."""

    train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Labelled training data: .csv/.tsv/.json/.jsonl files, folders or globs, one example a "
                  "row with a text and a label column."},
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Dev data for model selection (the epoch with the best "
                                "--metric_for_best_model is kept), in the same forms as --train_file."}
    )
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Test data, scored once with the selected model (optional)."}
    )
    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the text. Default: 'text', or the only string column besides the label."},
    )
    label_column_name: str = field(
        default="label", metadata={"help": "Column holding the label (strings or integers)."}
    )
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Without --validation_file, hold out this percentage of the training rows (a fixed "
                  "random draw, the same for every --seed) as the dev set."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate texts to this many tokens, special tokens included. Default: the model's limit, "
                  "at most 512. Batches are padded only to their longest text."},
    )
    pad_to_multiple_of: int = field(
        default=8,
        metadata={"help": "Pad each batch to its longest text, rounded up to a multiple of N tokens (8 suits "
                  "vectorised CPU kernels and tensor cores); 1 pads to the longest text exactly."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a fixed random subset of N training rows (for quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Select on a fixed random subset of N dev rows (for quick runs)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Test on a fixed random subset of N test rows (for quick runs)."}
    )

    def __post_init__(self):
        self.train_file = as_list(self.train_file)
        self.validation_file = as_list(self.validation_file)
        self.test_file = as_list(self.test_file)
        if not self.train_file:
            raise InputError("--train_file is required: the labelled training data.")
        if not self.label_column_name:
            raise InputError("--label_column_name must name a column.")
        if not self.validation_file and not 0 < self.validation_split_percentage < 100:
            raise InputError(
                "Model selection needs a dev set: give --validation_file, or a --validation_split_percentage in "
                f"(0, 100) to hold out part of the training data (got {self.validation_split_percentage})."
            )
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise InputError(f"--max_seq_length must be at least 8, got {self.max_seq_length}.")
        if self.pad_to_multiple_of < 1:
            raise InputError(f"--pad_to_multiple_of must be a positive integer (1: no rounding), "
                             f"got {self.pad_to_multiple_of}.")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value}.")


@dataclass
class ClassificationTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults that learn a small, imbalanced task: up to 10 epochs at 5e-5
    with 6 % warm-up, the dev set scored every epoch, early stopping on dev macro-F1, the best epoch kept, batches
    of similar lengths."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the fine-tuned model, its tokenizer and the results JSON are written."}
    )
    # 2e-5 (the paper's) stays near the majority-class baseline for several epochs on 1,700 examples with the
    # shipped MiniLM; 5e-5 learns citation intent within the epochs early stopping allows.
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    num_train_epochs: float = field(
        default=10.0, metadata={"help": "Most training epochs; --early_stopping_patience may end training sooner."}
    )
    warmup_steps: float = field(
        default=0.06, metadata={"help": "Warm-up: a number of steps, or below 1 a fraction of all steps."}
    )
    eval_strategy: str = field(
        default="epoch", metadata={"help": "When to score the dev set: 'epoch', 'steps' (every --eval_steps)."}
    )
    save_strategy: str = field(
        default="best",
        metadata={"help": "When to checkpoint: 'best' (only when the dev metric improves: no writes for worse "
                  "epochs), or 'epoch'/'steps' matching --eval_strategy."},
    )
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Keep the checkpoint that scored best on dev (by --metric_for_best_model)."}
    )
    metric_for_best_model: str | None = field(
        default="macro_f1", metadata={"help": "Dev metric that selects the model: macro_f1, micro_f1, accuracy, loss."}
    )
    early_stopping_patience: int = field(
        default=3,
        metadata={"help": "Stop when the dev --metric_for_best_model has not improved (by more than "
                  "--early_stopping_threshold) for this many evaluations in a row; 0 trains all epochs."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest change of the dev metric that counts as an improvement."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Order of training examples: 'group_by_length' (random, but each batch drawn from texts "
                  "of similar length, so little padding), 'random', 'sequential' or 'batch_rebalance'.",
                  "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]},
    )
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept on disk (the best one is always kept)."}
    )
    save_only_model: bool = field(
        default=True, metadata={"help": "Checkpoints hold the weights only (no optimizer state): smaller and faster; "
                                "enough for model selection, not for resuming."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Loggers to report to, e.g. 'tensorboard'; none by default."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder for the fine-tuned model and its results.")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise InputError(f"--num_train_epochs must be positive (or --max_steps given), got "
                             f"{self.num_train_epochs:g}: without training the scores would be the untrained "
                             "classifier's.")
        if self.early_stopping_patience < 0:
            raise InputError(f"--early_stopping_patience must be 0 (off) or a positive number of evaluations, "
                             f"got {self.early_stopping_patience}.")
        if self.early_stopping_threshold < 0:
            raise InputError(f"--early_stopping_threshold must be 0 or more, got {self.early_stopping_threshold}.")
        try:
            no_eval = IntervalStrategy(self.eval_strategy) == IntervalStrategy.NO
        except ValueError:
            raise InputError(f"--eval_strategy must be one of epoch, steps, no; got '{self.eval_strategy}'.") from None
        if no_eval and (self.load_best_model_at_end or self.early_stopping_patience):
            raise InputError("--eval_strategy no leaves nothing to select or stop on: add --load_best_model_at_end "
                             "false --early_stopping_patience 0 --save_strategy epoch (or score the dev set with "
                             "--eval_strategy epoch).")
        if self.early_stopping_patience and not self.metric_for_best_model:
            raise InputError("--early_stopping_patience needs --metric_for_best_model (e.g. macro_f1), or 0 to "
                             "train every epoch.")
        # transformers refuses --bf16 without a bf16 GPU unless --use_cpu is given; with no GPU, the CPU it is (as
        # run_mlm.py does).
        if self.bf16 and not self.use_cpu and not has_gpu():
            self.use_cpu = True
            logger.info("--bf16 on a machine without a GPU: fine-tuning on the CPU (--use_cpu True).")
        super().__post_init__()


def load_labelled_datasets(args: ClassificationDataArguments, cache_dir: str | None = None) -> DatasetDict:
    """Read train/validation/test files into a DatasetDict with 'text' and 'label' (still raw labels) columns.

    Each split may be its own file type (.csv/.tsv or .json/.jsonl). Without --validation_file, the dev set is a
    fixed random --validation_split_percentage of the training rows.
    """
    raw = {}
    for split, flag, patterns in (("train", "--train_file", args.train_file),
                                  ("validation", "--validation_file", args.validation_file),
                                  ("test", "--test_file", args.test_file)):
        if patterns:
            raw[split] = read_labelled(patterns, flag, text_column_name=args.text_column_name,
                                       label_column_name=args.label_column_name, cache_dir=cache_dir)
    raw = DatasetDict(raw)
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=SPLIT_SEED)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
        logger.info("No --validation_file: holding out %d of the training rows as the dev set.", len(raw["validation"]))
    return raw


def take_subsets(raw: DatasetDict, args: ClassificationDataArguments) -> DatasetDict:
    """Fixed random subsets of --max_train_samples / --max_eval_samples / --max_test_samples rows.

    Applied after :func:`label_list`, so the label set is the whole training data's even when a subset misses a
    rare label.
    """
    raw = DatasetDict(raw)
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples),
                         ("test", args.max_test_samples)):
        if split in raw and limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=SPLIT_SEED).select(range(limit))
    return raw


def label_maps(labels: list) -> tuple[dict[int, str], dict[str, int]]:
    """``id2label`` and ``label2id`` for the model config (names are strings, as configs store them)."""
    id2label = {i: str(label) for i, label in enumerate(labels)}
    return id2label, {name: i for i, name in id2label.items()}


def encode_labels(raw: DatasetDict, labels: list) -> DatasetDict:
    """Replace raw labels by their ids; a dev or test label never seen in training is an error."""
    ids = {label: i for i, label in enumerate(labels)}
    for split, ds in raw.items():
        unseen = sorted({str(v) for v in ds["label"] if v not in ids})
        if unseen:
            raise InputError(f"The {split} data has label(s) not in the training data: {', '.join(unseen[:10])}. "
                             f"Training labels: {', '.join(map(str, labels))}.")
    return DatasetDict({split: ds.map(lambda batch: {"label": [ids[v] for v in batch["label"]]}, batched=True,
                                      desc=f"Encoding {split} labels")
                        for split, ds in raw.items()})


def classification_metrics(predictions, labels) -> dict[str, float]:
    """Accuracy, macro-F1 (unweighted mean over the classes present in labels or predictions) and micro-F1.

    For single-label classification micro-F1 equals accuracy; both are reported because papers use either name.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
    }


def compute_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for the Trainer: :func:`classification_metrics` of the predicted class ids (or of the
    argmax of logits, when no :func:`predicted_class` reduced them)."""
    predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    predictions = np.asarray(predictions)
    if predictions.ndim > 1:
        predictions = np.argmax(predictions, axis=-1)
    return classification_metrics(predictions, eval_pred.label_ids)


def predicted_class(logits, labels):
    """``preprocess_logits_for_metrics``: each batch's argmax on the device, so evaluation gathers one id per example
    instead of a row of logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(dim=-1)


def tokenize_labelled(encoded: DatasetDict, tokenizer, max_seq_length: int) -> DatasetDict:
    """Tokenize every split, truncated to ``max_seq_length`` and unpadded (each batch pads itself).

    Dev and test are sorted by length, so evaluation batches hold texts of similar length and little padding; the
    metrics do not depend on the order.
    """
    tokenized = encoded.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_seq_length),
                            batched=True, remove_columns=["text"], desc="Tokenizing")
    for split in ("validation", "test"):
        if split in tokenized:
            lengths = [len(ids) for ids in tokenized[split]["input_ids"]]
            tokenized[split] = tokenized[split].select(np.argsort(lengths, kind="stable"))
    return tokenized


class ClassificationTrainer(Trainer):
    """transformers' ``Trainer``, reading dev and test in their stored order (sorted by length by
    :func:`tokenize_labelled`) whatever --train_sampling_strategy says."""

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 applies group_by_length to evaluation too, and a set of fewer than 4 evaluation batches is
        # then split at random (one "megabatch" per batch); a length-sorted set read in order pads least.
        # Overrides the private Trainer._get_eval_sampler (internals.TRAINER_EVAL_SAMPLER, guarded by test_internals).
        if self.args.world_size <= 1 and eval_dataset is not None and hasattr(eval_dataset, "__len__"):
            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)


def build_classification_trainer(model, tokenizer, data_args: ClassificationDataArguments,
                                 training_args: ClassificationTrainingArguments, *, train_dataset=None,
                                 eval_dataset=None, callbacks=()) -> ClassificationTrainer:
    """The fine-tuning Trainer: dynamic padding to a multiple of --pad_to_multiple_of, early stopping after
    --early_stopping_patience evaluations without improvement, predictions reduced to class ids on the device, and
    accuracy / macro-F1 / micro-F1 as metrics, plus ``callbacks``."""
    if training_args.early_stopping_patience:
        callbacks = [EarlyStoppingCallback(training_args.early_stopping_patience,
                                           training_args.early_stopping_threshold), *callbacks]
    return ClassificationTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=data_args.pad_to_multiple_of),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=predicted_class,
        callbacks=list(callbacks),
    )


def logged_evaluation(log_history: list[dict], step: int, prefix: str = "eval") -> dict[str, float] | None:
    """The metrics the Trainer logged when it scored its eval set at ``step`` (with their epoch); None if it did not."""
    for entry in reversed(log_history):
        if entry.get("step") == step and any(key.startswith(f"{prefix}_") for key in entry):
            metrics = {key: value for key, value in entry.items() if key.startswith(f"{prefix}_")}
            if "epoch" in entry:
                metrics["epoch"] = entry["epoch"]
            return metrics
    return None


def final_model_step(trainer: Trainer) -> int:
    """The optimizer step whose weights the model holds after ``train()``: the best checkpoint's if it was loaded."""
    state = trainer.state
    loaded_best = (trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None
                   and state.best_global_step is not None
                   and Path(state.best_model_checkpoint).name == f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
    return state.best_global_step if loaded_best else state.global_step


def check_model_folder(model_args) -> None:
    """An InputError naming --model_name_or_path, the folder and what it lacks when a local model folder holds no
    weights or (without --tokenizer_name) no tokenizer; a hub id or the embedded model is left to loading."""
    folder = Path(model_args.model_name_or_path)
    if not folder.is_dir():
        return

    def holds(patterns) -> bool:
        return any(path.name != "training_args.bin" for pattern in patterns for path in folder.glob(pattern))

    missing = ([] if holds(WEIGHT_FILES) else ["no model weights (*.safetensors)"]) + (
        [] if model_args.tokenizer_name or holds(TOKENIZER_FILES) else
        [f"no tokenizer ({', '.join(TOKENIZER_FILES)}; or give --tokenizer_name)"])
    if missing:
        checkpoints = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda path: path.stat().st_mtime)
        hint = (f" It holds {checkpoints[-1].name}: the run writing it may not have finished (rerun it), or give a "
                "checkpoint folder." if checkpoints else "")
        raise InputError(f"--model_name_or_path {folder} is a folder with {' and '.join(missing)}.{hint}")


def fine_tune(model_args, data_args: ClassificationDataArguments, training_args: ClassificationTrainingArguments,
              speed_args=None, callbacks=()) -> dict[str, float]:
    """Fine-tune, select on dev, score dev and test; save the model and the metrics; return the metrics.

    ``model_args`` is arguments.ModelArguments, ``speed_args`` arguments.FineTuneSpeedArguments (None: its
    defaults, every CPU speed-up on). The dev metrics are those the Trainer logged when it scored the kept
    model during training (the same weights and dev set, so the same numbers) rather than a second evaluation.
    """
    check_model_folder(model_args)
    set_seed(training_args.seed)  # before the model loads: the new classifier head's initialisation follows --seed

    # Labelled files are read and checked before the model loads, so a bad file fails fast.
    raw = load_labelled_datasets(data_args, model_args.cache_dir)
    labels = label_list(raw["train"])  # from all the training data, before any subset is taken
    encoded = encode_labels(take_subsets(raw, data_args), labels)
    id2label, label2id = label_maps(labels)
    logger.info("%d labels: %s", len(labels), ", ".join(id2label.values()))

    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, tokenizer, AutoModelForSequenceClassification,
                       config_kwargs={"num_labels": len(labels), "id2label": id2label, "label2id": label2id})
    if model_args.add_tokens:
        add_domain_tokens(tokenizer, model, read_token_file(model_args.add_tokens))
    apply_speedups(model, speed_args or FineTuneSpeedArguments(), on_cpu=training_args.device.type == "cpu")
    max_seq_length = resolve_max_seq_length(data_args.max_seq_length, tokenizer, model)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_labelled(encoded, tokenizer, max_seq_length)

    trainer = build_classification_trainer(model, tokenizer, data_args, training_args,
                                           train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                                           callbacks=callbacks)
    train_result = trainer.train()
    trainer.save_model()  # the dev-selected model with its tokenizer and label names
    results = dict(train_result.metrics, train_samples=len(tokenized["train"]),
                   epochs_trained=trainer.state.epoch)
    if trainer.state.best_global_step is not None:
        results["best_global_step"] = trainer.state.best_global_step
    trainer.log_metrics("train", results)
    trainer.save_metrics("train", results)

    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split not in tokenized:
            continue
        metrics = None
        if split == "validation":
            step = final_model_step(trainer)
            metrics = logged_evaluation(trainer.state.log_history, step)
            if metrics is not None:
                logger.info("Dev metrics of the kept model: from its evaluation at step %d.", step)
        if metrics is None:
            metrics = trainer.evaluate(tokenized[split], metric_key_prefix=prefix)
        metrics[f"{prefix}_samples"] = len(tokenized[split])
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)  # {prefix}_results.json and all_results.json
        results.update(metrics)
    trainer.save_state()  # after scoring, so trainer_state.json's log_history holds every evaluation that ran
    return results
