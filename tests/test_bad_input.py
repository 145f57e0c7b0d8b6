"""Every input a user can get wrong fails with one clear InputError naming the file or flag and saying what to do,
before the model loads where possible (checkpoint problems: test_checkpoints.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from arguments import parse_args
from mlm_pretraining.errors import InputError


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# --- the corpus -------------------------------------------------------------------------------------------------

def test_missing_train_file(run, tmp_path):
    run(["--train_file", str(tmp_path / "nope.txt")], r"--train_file: no such file or folder '.*nope\.txt'\. Check")


def test_empty_file(run, tmp_path):
    run(["--train_file", str(write(tmp_path / "empty.txt", ""))], r"--train_file: '.*empty\.txt' is empty")


def test_folder_without_text_files(run, tmp_path):
    write(tmp_path / "docs" / "a.pdf", "x")
    run(["--train_file", str(tmp_path / "docs")], r"the folder '.*docs' holds no .*\.txt")


def test_glob_matching_nothing(run, tmp_path):
    run(["--train_file", str(tmp_path / "*.jsonl")], r"the pattern '.*\*\.jsonl' matches no file")


def test_unsupported_extension(run, tmp_path):
    run(["--train_file", str(write(tmp_path / "a.docx", "text"))],
        r"'.*a\.docx' has an unsupported extension; use one of .*rename it to \.txt")


def test_mixed_file_types(run, tmp_path, corpus):
    run(["--train_file", str(corpus), str(write(tmp_path / "b.jsonl", '{"text": "x"}\n'))], "mixes file types")


def test_invalid_utf8_names_byte_and_line(run, tmp_path):
    path = write(tmp_path / "latin1.txt", b"hello\ncaf\xe9 au lait\n")
    run(["--train_file", str(path)], r"'.*latin1\.txt' is not valid UTF-8 at byte 9 \(line 2\)\. Convert it.*iconv")


def test_malformed_json_line(run, tmp_path):
    path = write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": "b",}\n')
    run(["--train_file", str(path)], r"'.*c\.jsonl' line 2 is not valid JSON")


def test_missing_text_column_lists_columns(run, tmp_path):
    path = write(tmp_path / "d.jsonl", '{"title": "a", "body": "b"}\n' * 3)
    run(["--train_file", str(path)], r"no 'text' column; choose one with --text_column_name\. Columns: title, body")


def test_unknown_text_column_name(run, tmp_path):
    path = write(tmp_path / "d.jsonl", '{"title": "a", "body": "b"}\n' * 3)
    run(["--train_file", str(path), "--text_column_name", "content"],
        r"--text_column_name 'content' is not a column .* Columns: title, body")


def test_blank_corpus(run, tmp_path):
    run(["--train_file", str(write(tmp_path / "blank.txt", "\n   \n\t\n"))], r"holds no text \(every row is blank\)")


def test_single_text_cannot_be_split(run, tmp_path):
    run(["--train_file", str(write(tmp_path / "one.txt", "just one line\n"))],
        r"single text.*--validation_file or --validation_split_percentage 0")


def test_corpus_shorter_than_one_block(run, tmp_path):
    path = write(tmp_path / "short.txt", "the city\nthe park\nthe band\n")
    run(["--train_file", str(path), "--max_seq_length", "64", "--validation_split_percentage", "0"],
        r"fewer than one block of --max_seq_length 64; give more text, a smaller --max_seq_length, or --line_by_line",
        before_model=False)


def test_crlf_and_bom_are_simply_read(tmp_path):
    """Not an error: a BOM and CRLF line ends give the same texts as a plain LF file."""
    from arguments import DataArguments
    from mlm_pretraining.data.text import read_corpus

    lines = ["the city park", "he released new album"]
    plain = write(tmp_path / "lf.txt", "\n".join(lines) + "\n")
    windows = write(tmp_path / "crlf.txt", "\ufeff" + "\r\n".join(lines) + "\r\n")
    texts = [read_corpus(DataArguments(train_file=[str(p)], validation_split_percentage=0),
                               str(tmp_path / "cache"))["train"]["text"] for p in (plain, windows)]
    assert texts[0] == texts[1] == lines


# --- flags and config files ----------------------------------------------------------------------------------

def test_missing_output_dir():
    with pytest.raises(InputError, match="--output_dir is required"):
        parse_args(["--train_file", "x.txt"])


def test_output_dir_is_a_file(tmp_path):
    path = write(tmp_path / "out", "not a folder")
    with pytest.raises(InputError, match=r"--output_dir '.*out' is a file, not a folder"):
        parse_args(["--output_dir", str(path)])


def test_dataset_name_and_train_file(tmp_path):
    with pytest.raises(InputError, match="Give either --dataset_name or --train_file, not both"):
        parse_args(["--output_dir", str(tmp_path), "--dataset_name", "wikitext", "--train_file", "a.txt"])


@pytest.mark.parametrize("flags, pattern", [
    # a flag that needs another
    (["--mix_share", "0.3"], r"--mix_share 0.3 needs --mix_train_file \(the general text to mix in\)"),
    (["--dataset_config_name", "wikitext-2-raw-v1"], r"--dataset_config_name wikitext-2-raw-v1 needs --dataset_name"),
    (["--validation_file", "dev.txt", "--validation_split_percentage", "10"],
     r"--validation_split_percentage holds out training text .* --validation_file already gives the evaluation"),
    # a name given twice: the first would be lost
    (["--train_file", "a.txt", "--train-file", "b.txt"],
     r"--train_file is given twice; only the last values would count\. Give them all after one --train_file"),
    (["--validation_file", "a=dev.txt", "a=other.txt"], r"--validation_file: the set name 'a' is given twice"),
    # a value that leaves the run nothing to do
    (["--num_train_epochs", "0"], r"--num_train_epochs 0 trains nothing"),
    (["--do_train", "False", "--do_eval", "False"], r"--do_train False with --do_eval False leaves nothing to do"),
])
def test_flags_that_would_do_nothing_or_lose_something_are_refused(tmp_path, flags, pattern):
    with pytest.raises(InputError, match=pattern):
        parse_args(["--output_dir", str(tmp_path), *flags])


def test_the_same_flags_with_what_they_need_are_accepted(tmp_path):
    """The negative control of the rules above: each rule refuses only the case it names."""
    _, data, *_, training = parse_args(["--output_dir", str(tmp_path), "--mix_train_file", "g.txt", "--mix_share",
                                        "0.3", "--validation_file", "a=dev.txt", "b=other.txt", "--num_train_epochs",
                                        "0", "--max_steps", "5"])
    assert data.mix_share == 0.3 and data.validation_file == ["a=dev.txt", "b=other.txt"] and training.max_steps == 5
    assert parse_args(["--output_dir", str(tmp_path), "--mix_train_file", "g.txt"])[1].mix_share == 0.2
    assert parse_args(["--output_dir", str(tmp_path)])[1].mix_share is None
    assert parse_args(["--output_dir", str(tmp_path), "--max_steps", "5", "--max_steps", "7"])[-1].max_steps == 7


def test_validation_split_out_of_range(tmp_path):
    with pytest.raises(InputError, match=r"--validation_split_percentage must be in \[0, 100\), got 100"):
        parse_args(["--output_dir", str(tmp_path), "--validation_split_percentage", "100"])


@pytest.mark.parametrize("flags, pattern", [
    (["--mlm_probability", "0"], r"--mlm_probability must be between 0 and 1 \(exclusive\), got 0"),
    (["--mask_replace_prob", "0.9", "--random_replace_prob", "0.2"],
     r"--mask_replace_prob \+ --random_replace_prob must be at most 1 .*got 0.9 \+ 0.2"),
    (["--random_replace_prob", "-0.1"], r"--random_replace_prob must be between 0 and 1, got -0.1"),
])
def test_impossible_masking_probabilities(tmp_path, flags, pattern):
    with pytest.raises(InputError, match=pattern):
        parse_args(["--output_dir", str(tmp_path), *flags])


def test_streaming_needs_max_steps(tmp_path):
    with pytest.raises(InputError, match=r"--streaming needs --max_steps .* e\.g\. --max_steps 100000"):
        parse_args(["--output_dir", str(tmp_path), "--train_file", "a.txt", "--streaming"])


def test_streaming_nsp_is_refused_saying_why_and_whole_words_stream(tmp_path):
    base = ["--output_dir", str(tmp_path), "--train_file", "a.txt", "--streaming", "--max_steps", "10"]
    with pytest.raises(InputError, match=r"--streaming cannot be combined with --nsp: half of the NSP pairs take their "
                                         r"second segment from a random other document anywhere in the corpus, which "
                                         r"needs the whole tokenized corpus at hand \(random access\); a stream sees "
                                         r"the text once, in order.* Train --nsp from text without --streaming"):
        parse_args([*base, "--nsp"])
    assert parse_args([*base, "--whole_word_mask"])[2].whole_word_mask  # word ids travel with the stream


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match=r"Config file .*nope\.yaml does not exist"):
        parse_args([str(tmp_path / "nope.yaml")])


def test_invalid_yaml(tmp_path):
    path = write(tmp_path / "bad.yaml", "output_dir: out\ntrain_file: [a.txt\n")
    with pytest.raises(InputError, match=r"Config file .*bad\.yaml is not valid YAML"):
        parse_args([str(path)])


def test_unknown_yaml_key(tmp_path):
    path = write(tmp_path / "typo.yaml", "output_dir: out\nlearning_rat: 0.001\nmlm_prob: 0.2\n")
    with pytest.raises(InputError, match=r"typo\.yaml: unknown argument\(s\) learning_rat, mlm_prob\. Run with --help"):
        parse_args([str(path)])


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- output_dir\n- out\n")
    with pytest.raises(InputError, match=r"list\.yaml must hold a mapping of flag names to values"):
        parse_args([str(path)])


def test_deepspeed_without_the_package(tmp_path):
    pytest.importorskip("transformers")
    try:
        import deepspeed  # noqa: F401
        pytest.skip("deepspeed is installed: the flag parses (see test_distributed)")
    except ImportError:
        pass
    with pytest.raises(InputError, match=r"needs a package that is not installed .*pip install deepspeed"):
        parse_args(["--output_dir", str(tmp_path), "--deepspeed", "examples/ds_zero2.json"])


# --- the model and tokenizer ---------------------------------------------------------------------------------

def test_missing_model(run, corpus, tmp_path):
    run(["--train_file", str(corpus)], r"Could not load the tokenizer from '.*no-such-model': Check the name or path",
        model=tmp_path / "no-such-model")


def test_max_seq_length_above_model_limit(run, corpus):
    run(["--train_file", str(corpus), "--max_seq_length", "256"],
        r"--max_seq_length 256 is above the model's limit of 128 tokens; use at most 128", before_model=False)


def test_tokenizer_without_mask_token(run, corpus, tiny_model_dir, tmp_path):
    from transformers import BertTokenizer

    BertTokenizer(vocab=str(tiny_model_dir / "vocab.txt"), mask_token=None).save_pretrained(tmp_path / "nomask")
    run(["--train_file", str(corpus), "--tokenizer_name", str(tmp_path / "nomask")],
        r"The tokenizer of '.*nomask' .* has no mask token.*--model_name_or_path.*--tokenizer_name")


def test_tokenizer_model_vocabulary_mismatch(run, corpus, tiny_model_dir, tmp_path):
    from transformers import BertTokenizer

    vocab = (tiny_model_dir / "vocab.txt").read_text().splitlines() + [f"extra{i}" for i in range(50)]
    write(tmp_path / "bigger.txt", "\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(tmp_path / "bigger.txt")).save_pretrained(tmp_path / "bigger")
    run(["--train_file", str(corpus), "--tokenizer_name", str(tmp_path / "bigger")],
        r"The tokenizer has 167 tokens but the model's embeddings have 117 rows: --tokenizer_name does not belong",
        before_model=False)


def test_pickle_only_weights_are_refused(run, corpus, tiny_model_dir, tmp_path):
    """A folder with only pytorch_model.bin is never unpickled: clear refusal with the conversion command."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    run(["--train_file", str(corpus)],
        r"has weights only as pickle files \(pytorch_model\.bin\), which we do not open: unpickling can run code\. "
        r"If you trust the files, convert them once to safetensors", before_model=False, model=folder)


def test_a_tracker_that_is_not_installed_stops_before_any_text_is_read(tmp_path):
    import importlib.util

    import run_mlm

    pytest.importorskip("tensorboard")  # the control below needs the default tracker

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"--report_to wandb: not installed\. Install it \(pip install wandb\)"):
        run_mlm.main(["--output_dir", str(out), "--train_file", str(tmp_path / "never-read.txt"), "--report_to",
                      "wandb"])
    assert not (out / "corpus_report.json").exists()
    with pytest.raises(InputError, match=r"--report_to tensorbored: not a tracker transformers knows"):
        parse_args(["--output_dir", str(out), "--report_to", "tensorbored"])
    assert parse_args(["--output_dir", str(out), "--report_to", "tensorboard"])[-1].report_to == ["tensorboard"]
