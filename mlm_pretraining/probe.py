"""The task probe (run_mlm.py --probe_task): does continued pretraining make the encoder better for the user's task?

Before training and at every evaluation the current encoder embeds a labelled task's train and dev texts (evaluation
mode, no gradients, one vector per text), a logistic regression is fitted on the train vectors and scored on dev:
``<prefix>_probe_macro_f1``, ``_probe_accuracy``, ``_probe_micro_f1`` and ``_probe_seconds`` join the evaluation's
metrics (``eval_before_...`` before training, ``eval_...`` after), so ``--metric_for_best_model probe_macro_f1``
selects a checkpoint by what the task needs rather than by perplexity. A probe is a linear read-out of frozen
features, not fine-tuning: cheap enough to run at every evaluation, and its changes follow the encoder alone.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import TrainerCallback

from mlm_pretraining.data.labelled import label_list, read_labelled, task_files
from mlm_pretraining.errors import InputError
from mlm_pretraining.model.loading import resolve_max_seq_length

if TYPE_CHECKING:
    from arguments import ProbeArguments

logger = logging.getLogger(__name__)

# The draw of texts and the classifier's seed: fixed, so every --seed, and a resumed run, probe the same way.
PROBE_SEED = 0


@dataclass
class Probe:
    """A labelled task's texts, label ids and how to pool them; :meth:`score` probes an encoder with them."""

    train_texts: list[str]
    train_labels: np.ndarray
    dev_texts: list[str]
    dev_labels: np.ndarray
    labels: list
    pooling: str = "mean"

    def score(self, model, tokenizer, batch_size: int) -> dict[str, float]:
        """``probe_macro_f1``, ``probe_accuracy``, ``probe_micro_f1`` on dev of a logistic regression fitted on
        ``model``'s encoder's train vectors, and ``probe_seconds``, what it cost."""
        start = time.perf_counter()
        encoder = model.base_model  # the encoder without the masked-LM head (BERT, RoBERTa, DistilBERT, ModernBERT)
        # The limit run_classification.py truncates at by default: the probe sees the texts fine-tuning will see.
        options = dict(pooling=self.pooling, batch_size=batch_size,
                       max_length=resolve_max_seq_length(None, tokenizer, model))
        was_training = model.training
        model.eval()
        try:
            train = embed(encoder, tokenizer, self.train_texts, **options)
            dev = embed(encoder, tokenizer, self.dev_texts, **options)
        finally:
            model.train(was_training)
        scores = fit_and_score(train, self.train_labels, dev, self.dev_labels)
        return {**scores, "probe_seconds": round(time.perf_counter() - start, 3)}


def read_probe(args: ProbeArguments, cache_dir: str | None = None) -> Probe | None:
    """The probe's texts and labels from --probe_task or --probe_train_file/--probe_validation_file, checked (columns,
    two classes or more, no dev label unseen in train) and drawn down to --probe_max_train_samples and
    --probe_max_eval_samples; None without a probe. Called before the model loads, so bad input fails first, naming
    the file and the flag."""
    if not args.enabled:
        return None
    if args.probe_task:
        files = task_files(args.probe_task, "--probe_task", splits=("train", "validation"))
        sources = {split: ("--probe_task", [path]) for split, path in files.items()}
    else:
        sources = {"train": ("--probe_train_file", args.probe_train_file),
                   "validation": ("--probe_validation_file", args.probe_validation_file)}
    splits, where = {}, {}
    for split, (flag, patterns) in sources.items():
        splits[split] = read_labelled(patterns, flag, text_column_name=args.probe_text_column_name,
                                      label_column_name=args.probe_label_column_name,
                                      label_flag="--probe_label_column_name", text_flag="--probe_text_column_name",
                                      cache_dir=cache_dir)
        where[split] = f"{flag} ({', '.join(patterns[:3])})"
    labels = label_list(splits["train"], where["train"])
    ids = {label: i for i, label in enumerate(labels)}
    unseen = sorted({str(v) for v in splits["validation"]["label"] if v not in ids})
    if unseen:
        raise InputError(f"{where['validation']} has label(s) the probe's training data lacks: "
                         f"{', '.join(unseen[:10])}. Training labels: {', '.join(map(str, labels))}.")
    limits = {"train": args.probe_max_train_samples, "validation": args.probe_max_eval_samples}
    for split, limit in limits.items():
        if len(splits[split]) > limit:  # a fixed draw, so the cost is bounded and every probe sees the same texts
            splits[split] = splits[split].shuffle(seed=PROBE_SEED).select(range(limit))
    label_list(splits["train"], f"{where['train']}, drawn down to --probe_max_train_samples {limits['train']},")
    probe = Probe(train_texts=list(splits["train"]["text"]),
                  train_labels=np.array([ids[v] for v in splits["train"]["label"]]),
                  dev_texts=list(splits["validation"]["text"]),
                  dev_labels=np.array([ids[v] for v in splits["validation"]["label"]]),
                  labels=labels, pooling=args.probe_pooling)
    logger.info("Probe: %d train and %d dev texts of %d labels (%s pooling).", len(probe.train_texts),
                len(probe.dev_texts), len(labels), probe.pooling)
    return probe


@torch.no_grad()
def embed(encoder, tokenizer, texts: list[str], *, pooling: str, batch_size: int, max_length: int) -> np.ndarray:
    """One float32 vector per text, in the order given: the mean of ``encoder``'s last hidden states over the
    text's real tokens (``pooling='mean'``) or its first token's (``'cls'``). Texts are batched shortest first, so
    each batch pads little."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(row) for row in ids], kind="stable")
    device = next(encoder.parameters()).device
    vectors = []
    for start in range(0, len(order), batch_size):
        batch = tokenizer.pad([{"input_ids": ids[i]} for i in order[start:start + batch_size]], return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        vectors.append(pooled.cpu().numpy())
    stacked = np.concatenate(vectors)
    return stacked[np.argsort(order, kind="stable")]


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> dict[str, float]:
    """A logistic regression fitted on (train_x, train_y), scored on dev: macro-F1, accuracy, micro-F1."""
    # Standardised features, so one regularisation strength suits any encoder's scale; classes weighted by their
    # inverse frequency, so on an imbalanced task the probe cannot score well by predicting the majority class and
    # macro-F1 (the selection metric) moves with the encoder.
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced",
                                                                    random_state=PROBE_SEED))
    # One BLAS thread: beside torch's OpenMP threads, OpenBLAS's own fought them for the cores and the fit took 40x
    # longer (citation intent, 1,688 x 384 MiniLM vectors: 6.4 s on 2 threads, 0.17 s on 1).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # an unconverged fit still scores; its score says so
        classifier.fit(train_x, train_y)
    predicted = classifier.predict(dev_x)
    return {"probe_macro_f1": float(f1_score(dev_y, predicted, average="macro", zero_division=0)),
            "probe_accuracy": float(accuracy_score(dev_y, predicted)),
            "probe_micro_f1": float(f1_score(dev_y, predicted, average="micro", zero_division=0))}


def evaluation_prefix(metrics: dict, last_set: str | None = None) -> str | None:
    """The ``metric_key_prefix`` of the evaluation whose ``metrics`` these are (every evaluation reports
    ``<prefix>_runtime``). With named evaluation sets each set is its own evaluation, ``<prefix>_<set>``: the prefix
    of the round for the last set (``last_set``), None for the others."""
    runtime = next((key for key in metrics if key.endswith("_runtime")), None)
    if runtime is None:
        return None
    prefix = runtime.removesuffix("_runtime")
    if last_set is None:
        return prefix
    return prefix.removesuffix(f"_{last_set}") if prefix.endswith(f"_{last_set}") else None


class ProbeCallback(TrainerCallback):
    """Runs the probe at the end of each evaluation and adds ``<prefix>_probe_*`` to that evaluation's metrics.

    Why ``on_evaluate``: ``Trainer.evaluate`` logs its metrics (TensorBoard, the log history) before calling
    ``on_evaluate`` and returns the same dict after it, and best-model selection (``_determine_best_metric``) reads
    the returned dict. Scores added here in place therefore reach --metric_for_best_model (``probe_macro_f1``, which
    the Trainer prefixes with ``eval_``) and run_mlm.py's results; they are logged through the Trainer's own ``log``
    (bound by ``build_trainer`` as :attr:`log`), as their own entry at the same step, so TensorBoard, the log
    history and the curve have them too. ``compute_metrics`` could not do it: it sees predictions, not the model.

    With named evaluation sets ``Trainer.evaluate`` evaluates (and calls ``on_evaluate``) once per set; the probe
    runs once, after ``last_set``. Under torchrun the main process probes, the others wait for its scores
    (``broadcast_object_list``), so every process logs and selects alike.
    """

    def __init__(self, probe: Probe, last_set: str | None = None):
        self.probe = probe
        self.last_set = last_set
        self.log = None  # the Trainer's log, bound once the Trainer exists

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        prefix = evaluation_prefix(metrics or {}, self.last_set)
        if prefix is None:
            return
        scores = self.probe.score(model, processing_class, args.per_device_eval_batch_size) \
            if args.process_index == 0 else None
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [scores]
            torch.distributed.broadcast_object_list(box, src=0)
            scores = box[0]
        scores = {f"{prefix}_{key}": value for key, value in scores.items()}
        metrics.update(scores)
        logger.info("Probe at step %d: macro-F1 %.4f, accuracy %.4f (%d train, %d dev texts; %.1f s).",
                    state.global_step, scores[f"{prefix}_probe_macro_f1"], scores[f"{prefix}_probe_accuracy"],
                    len(self.probe.train_texts), len(self.probe.dev_texts), scores[f"{prefix}_probe_seconds"])
        if self.log is not None:
            self.log(dict(scores))
