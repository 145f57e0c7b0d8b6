"""The runs a task-adaptive pretraining experiment is made of, shared by scripts/experiments/tapt_experiment.py
(base against TAPT) and probe_experiment.py (the task probe against fine-tuning, checkpoint by checkpoint): the
arguments of the task, model, seeds and both stages; run_mlm.py's flags for the masked-LM run and
run_classification.py's for a fine-tune; each run in its own process, recorded once finished and reused."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mlm_lab import runs
from mlm_lab.paths import SHARED_DATA

from mlm_pretraining.classification import (
    ClassificationDataArguments,
    load_labelled_datasets,
    take_subsets,
)
from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.data.text import resolve_data_files
from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_text_atomically

GENERAL_TEXT = SHARED_DATA / "wikitext-2" / "test.txt"
# Runs recorded before mlm_lab.runs existed: their flags, results and cost in these files, no finished record.
EARLIER_FLAGS_FILE, EARLIER_SECONDS_FILE = "experiment_flags.json", "wall_seconds.json"
ARMS = ("base", "tapt")
TAPT_TEXTS = ("fine_tune", "all")
TAPT_TRAIN_FILE = "tapt_train.jsonl"  # with --max_train_samples: the fine-tuning subset's text, TAPT's training file




@dataclass
class TaptArguments:
    """The task, the model, the seeds, and the settings of both stages."""

    task_dir: str | None = field(
        default=None, metadata={"help": "Folder with train, dev (or validation) and test files (.jsonl/.json/.csv), "
                                "e.g. ../shared/data/citation_intent."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where every run and the result table go."})
    model_name_or_path: str = field(default=EMBEDDED_MODEL, metadata={"help": "The base model of both arms."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5],
                             metadata={"help": "Fine-tuning seeds, the same for both arms (pairs for the paired "
                                       "difference); at least 2 for a confidence interval."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the label."})
    # Fine-tuning, the same for both arms. Unset: run_classification.py's own defaults.
    learning_rate: float | None = field(default=None, metadata={"help": "Fine-tuning learning rate (default: "
                                                                "run_classification.py's)."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Fine-tuning epochs, the best on dev "
                                                                   "kept (default: run_classification.py's)."})
    max_steps: int = field(default=-1, metadata={"help": "Fine-tuning steps, overriding the epochs (for quick "
                                                 "checks); the dev set is then scored at the end only."})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Fine-tuning batch size "
                                                                            "(default: run_classification.py's)."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Fine-tuning truncation length in tokens "
                                                               "(default: run_classification.py's)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Fine-tune on a fixed random subset "
                                                                  "(default: the whole training set); TAPT then "
                                                                  "reads that subset's text (see --tapt_text)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Select on a fixed random dev subset."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Test on a fixed random subset."})
    # Task-adaptive pretraining.
    tapt_epochs: float = field(default=40.0, metadata={"help": "Masked-LM epochs over the task's training text "
                                                       "(paper: 100). citation_intent: 708 blocks of 128 tokens an "
                                                       "epoch, so 40 epochs are about 3.6 M tokens, 1,800 steps of "
                                                       "16 blocks. 40 measured better than 20 there (README)."})
    tapt_text: str = field(default="fine_tune", metadata={"help": "TAPT's training text: 'fine_tune', the text of "
                                                          "the rows the fine-tuning trains on (with "
                                                          "--max_train_samples, that subset: both arms see the same "
                                                          "texts, as in the paper), or 'all', the whole training file "
                                                          "(labels unused: more unlabelled task text)."})
    tapt_max_steps: int = field(default=-1, metadata={"help": "Masked-LM steps, overriding --tapt_epochs."})
    tapt_learning_rate: float = field(default=1e-4, metadata={"help": "Masked-LM peak learning rate (paper: 1e-4)."})
    tapt_batch_size: int = field(default=16, metadata={"help": "Masked-LM batch size in blocks (paper: 256 texts; "
                                                       "smaller here so a CPU takes many steps)."})
    tapt_max_seq_length: int = field(default=128, metadata={"help": "Masked-LM block length in tokens."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (paper: 0.15)."})
    head_warmup_steps: str = field(default="auto", metadata={"help": "run_mlm.py's --head_warmup_steps: steps "
                                                             "training only a new MLM head first ('auto', N, 0)."})
    tapt_seed: int = field(default=0, metadata={"help": "Seed of the one masked-LM run both TAPT arms share."})
    tapt_max_eval_samples: int = field(default=512, metadata={"help": "At most this many blocks of each evaluation "
                                                              "text (task dev, general) scored for perplexity."})
    general_text: str | None = field(
        default=str(GENERAL_TEXT) if GENERAL_TEXT.is_file() else None,
        metadata={"help": "General text scored for masked-LM perplexity before and after TAPT (forgetting); "
                  "default ../shared/data/wikitext-2/test.txt when it exists. 'none' to skip."},
    )
    mix_train_file: list[str] | None = field(default=None, metadata={"help": "Passed to run_mlm.py: general text "
                                                                      "mixed into TAPT's training text."})
    mix_share: float | None = field(default=None, metadata={"help": "Passed to run_mlm.py with --mix_train_file."})
    arms: list[str] = field(default_factory=lambda: list(ARMS),
                            metadata={"help": "Fine-tune only these arms ('base', 'tapt'): split one experiment across "
                                      "processes or machines sharing --output_dir (e.g. one process --arms base, "
                                      "another --arms tapt). The result table needs both: rerun with both, which "
                                      "reuses every finished run."})
    base_runs_dir: str | None = field(
        default=None, metadata={"help": "Keep the base arm's runs in this experiment folder instead of --output_dir, "
                                "reusing those finished there: the base arm does not depend on the TAPT settings, so "
                                "an experiment on a lever (another --tapt_* setting, its own --output_dir) pointed at "
                                "an earlier one's folder fine-tunes only its TAPT arm. Its fine-tuning settings must "
                                "match (checked run by run)."})
    bf16: bool = field(default=False, metadata={"help": "Run both stages in bf16 mixed precision: on a GPU, or a CPU "
                                               "that computes bf16 natively (there 1.5x faster a fine-tuning step, "
                                               "2.3x a masked-LM step, measured on two such CPUs; its masked-LM "
                                               "quality cost within noise, docs/speed.md). Both arms alike, so a "
                                               "comparison stays paired."})
    keep_models: bool = field(default=False, metadata={"help": "Keep every fine-tuned model's weights (large); by "
                                                       "default only their results are kept."})

    def __post_init__(self):
        if not self.task_dir or not Path(self.task_dir).is_dir():
            raise InputError(f"--task_dir must be a folder with train/dev/test files, got '{self.task_dir}'.")
        if not self.output_dir:
            raise InputError("--output_dir is required: the folder for every run and the result table.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds must be distinct integers, got {self.seeds}.")
        for name in ("learning_rate", "num_train_epochs", "tapt_epochs", "tapt_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}.")
        for name in ("per_device_train_batch_size", "max_seq_length", "tapt_batch_size", "tapt_max_seq_length",
                     "tapt_max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        if not 0 < self.mlm_probability < 1:
            raise InputError(f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}.")
        if self.general_text is not None and self.general_text.lower() in ("", "none"):
            self.general_text = None
        if self.general_text is not None and not Path(self.general_text).is_file():
            raise InputError(f"--general_text '{self.general_text}' is not a file; give a text file, or 'none'.")
        if self.general_text is not None:
            self.general_text = str(Path(self.general_text).resolve())
        if not self.arms or set(self.arms) - set(ARMS):
            raise InputError(f"--arms must name one or both of {', '.join(ARMS)}, got {self.arms}.")
        if self.tapt_text not in TAPT_TEXTS:
            raise InputError(f"--tapt_text must be one of {', '.join(TAPT_TEXTS)}, got '{self.tapt_text}'.")
        if self.mix_share is not None and not self.mix_train_file:
            raise InputError("--mix_share needs --mix_train_file (the general text to mix in).")
        if self.mix_train_file:  # checked here, not an hour later when run_mlm.py starts; absolute, like the task's
            self.mix_train_file = [str(Path(f).resolve())
                                   for f in resolve_data_files(self.mix_train_file, "--mix_train_file")]
        from mlm_pretraining.flag_values import parse_warmup_steps

        parse_warmup_steps(self.head_warmup_steps)

    @property
    def tapt_on_subset(self) -> bool:
        """Whether TAPT reads only the text of the fine-tuning subset (--max_train_samples with --tapt_text
        fine_tune) rather than the task's training file."""
        return self.max_train_samples is not None and self.tapt_text == "fine_tune"


def comparable(flags: list[str], run_dir: Path) -> list[str]:
    """``flags`` with files as absolute paths and the run's own folder as '<run_dir>', so a rerun from another
    working directory, or of a moved experiment, matches."""
    return ["<run_dir>" if flag == str(run_dir) else str(Path(flag).resolve()) if Path(flag).exists() else flag
            for flag in flags]


def finished(run_dir: Path, flags: list[str], last_key: str) -> dict | None:
    """The record ({'settings', 'result', 'seconds'}) of a run that finished earlier with these ``flags``, else None;
    an InputError when the folder holds a run with other flags (a lever changed: its results would be mislabelled,
    and a stopped one resumed would mix two settings). ``last_key``: see :func:`adopt_earlier_run`."""
    adopt_earlier_run(run_dir, last_key)
    return runs.finished(run_dir, comparable(flags, run_dir))


def adopt_earlier_run(run_dir: Path, last_key: str) -> None:
    """Take over a run of an earlier version of this script (its flags in experiment_flags.json, its cost in
    wall_seconds.json): recorded as finished when its all_results.json holds ``last_key``, the score written last
    (all_results.json alone says nothing: run_mlm.py writes it at its before-training evaluation), else its flags
    recorded as those it was launched with, checked before it is resumed."""
    flags_file, results_file = run_dir / EARLIER_FLAGS_FILE, run_dir / "all_results.json"
    if not flags_file.is_file() or any((run_dir / name).exists() for name in (runs.STARTED_FILE, runs.FINISHED_FILE)):
        return
    flags = json.loads(flags_file.read_text())
    if "--overwrite_output_dir" in flags:  # a TAPT run's then; now left out, so a stopped run resumes
        at = flags.index("--overwrite_output_dir")
        flags[at:at + 2] = []
        flags += ["--eval_strategy", "no", "--weight_decay", "0.0"]  # run_mlm.py's defaults then, given now
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    seconds_file = run_dir / EARLIER_SECONDS_FILE
    if last_key in results:
        runs.record(run_dir, flags, results, json.loads(seconds_file.read_text())["seconds"]
                    if seconds_file.is_file() else None)
    else:
        runs.record_start(run_dir, flags)


def run_script(script: str, flags: list[str], run_dir: Path, echo: bool = True) -> dict:
    """Run one of the repository's entry points in its own process (fresh memory, its own logging; its output kept in
    run_dir/run.log, and shown with ``echo``: not when runs go side by side) and record it once it has finished: exit
    status 0, a model (the fine-tuned one removed afterwards unless --keep_models) and all_results.json in
    ``run_dir``. Its record, {'settings', 'result', 'seconds'}, lets a rerun reuse it, cost included."""
    return runs.run_entry_point(script, flags, run_dir, comparable(flags, run_dir), echo=echo)


def fine_tuning_subsets(args: TaptArguments, files: dict[str, str]):
    """The train and dev rows run_classification.py fine-tunes and selects on: its loading and its fixed random
    subsets (--max_train_samples, --max_eval_samples), so the same draw; columns 'text' and 'label'."""
    data_args = ClassificationDataArguments(train_file=[files["train"]], validation_file=[files["validation"]],
                                            text_column_name=args.text_column_name,
                                            label_column_name=args.label_column_name,
                                            max_train_samples=args.max_train_samples,
                                            max_eval_samples=args.max_eval_samples)
    return take_subsets(load_labelled_datasets(data_args), data_args)


def write_jsonl(path: Path, rows) -> str:
    """``rows`` (dicts) as a jsonl file, written atomically; its path."""
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return str(path)


def tapt_train_file(args: TaptArguments, files: dict[str, str], out: Path) -> str:
    """TAPT's training file: the task's, or with --max_train_samples (and --tapt_text fine_tune) a file of the
    texts of exactly the rows run_classification.py fine-tunes on (its loading and subset, so the same draw)."""
    if not args.tapt_on_subset:
        return files["train"]
    subset = fine_tuning_subsets(args, files)["train"]
    return write_jsonl(out / TAPT_TRAIN_FILE, ({args.text_column_name: text} for text in subset["text"]))


def pretrain_flags(args: TaptArguments, files: dict[str, str], run_dir: Path, train_file: str | None = None
                   ) -> list[str]:
    """run_mlm.py's flags for (b) on ``train_file`` (default the task's): the task's dev text and the general text
    as named evaluation sets, scored before training, when the head warm-up ends and after (--eval_strategy no: no
    periodic evaluations, whose time the cost table would count). No --overwrite_output_dir: rerun in a folder
    holding a stopped run's checkpoint (SIGTERM saves one), run_mlm.py resumes from it."""
    evaluation = [f"task={files['validation']}"] + ([f"general={args.general_text}"] if args.general_text else [])
    flags = ["--model_name_or_path", args.model_name_or_path, "--train_file", train_file or files["train"],
             "--validation_file", *evaluation, "--text_column_name", args.text_column_name,
             "--output_dir", str(run_dir), "--max_seq_length",
             str(args.tapt_max_seq_length), "--mlm_probability", str(args.mlm_probability),
             "--learning_rate", str(args.tapt_learning_rate), "--num_train_epochs", str(args.tapt_epochs),
             "--max_steps", str(args.tapt_max_steps), "--per_device_train_batch_size", str(args.tapt_batch_size),
             "--per_device_eval_batch_size", str(args.tapt_batch_size), "--warmup_steps", "0.06",
             "--head_warmup_steps", str(args.head_warmup_steps), "--max_eval_samples", str(args.tapt_max_eval_samples),
             "--seed", str(args.tapt_seed), "--save_strategy", "no", "--logging_steps", "10", "--report_to", "none",
             "--log_level", "warning",
             # the Trainer's defaults, with which docs/experiments.md was measured (run_mlm.py's own differ now)
             "--eval_strategy", "no", "--weight_decay", "0.0"]
    if args.bf16:
        flags += ["--bf16", "True"]
    if args.mix_train_file:
        flags += ["--mix_train_file", *args.mix_train_file]
        if args.mix_share is not None:
            flags += ["--mix_share", str(args.mix_share)]
    return flags


def fine_tune_flags(args: TaptArguments, files: dict[str, str], model: str, seed: int, run_dir: Path) -> list[str]:
    """run_classification.py's flags for (a) or (c): one fine-tuning run, dev-selected, scored on dev and test."""
    flags = ["--model_name_or_path", model, "--train_file", files["train"], "--validation_file", files["validation"],
             "--test_file", files["test"], "--text_column_name", args.text_column_name, "--label_column_name",
             args.label_column_name, "--output_dir", str(run_dir), "--seed", str(seed), "--report_to", "none",
             "--log_level", "warning"]
    for name in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "max_seq_length",
                 "max_train_samples", "max_eval_samples", "max_test_samples"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    if args.bf16:
        flags += ["--bf16", "True"]
    if args.max_steps > 0:  # too few steps for an epoch: score and keep the end of training
        flags += ["--max_steps", str(args.max_steps), "--eval_strategy", "steps", "--save_strategy", "steps",
                  "--eval_steps", str(args.max_steps), "--save_steps", str(args.max_steps)]
    return flags


def fine_tune(args: TaptArguments, flags: list[str], run_dir: Path, echo: bool = True) -> dict:
    """(a) or (c): run one fine-tuning; keep its record, not its weights (unless --keep_models)."""
    record = run_script("scripts/run_classification.py", flags, run_dir, echo)
    if not args.keep_models:  # results are what the experiment needs; weights are 90 MB a run
        for path in list(run_dir.glob("checkpoint-*")) + list(run_dir.glob("*.safetensors")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return record
