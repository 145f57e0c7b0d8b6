"""The front door for text: every input format, folders and globs, named evaluation sets, per-split file types,
and errors that name the flag, the file and the place."""

from __future__ import annotations

import json

import pytest

from arguments import DataArguments
from mlm_pretraining.data.text import parse_named_files, read_corpus, resolve_data_files
from mlm_pretraining.errors import InputError


def texts(path, **kwargs):
    raw = read_corpus(DataArguments(train_file=[str(path)], validation_split_percentage=0, **kwargs))
    return raw["train"]["text"]


def test_txt_with_crlf_bom_and_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\n\r\n  \r\nsecond line\r\nthird")
    assert texts(path) == ["first line", "second line", "third"]


def test_jsonl_csv_json_array_and_text_column(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one", "label": 1}\r\n\r\n{"text": "two", "label": 0}\n')
    assert texts(tmp_path / "a.jsonl") == ["one", "two"]
    (tmp_path / "b.csv").write_bytes(b'\xef\xbb\xbfid,review\r\n1,"good, clean"\r\n2,bad\r\n')
    assert texts(tmp_path / "b.csv") == ["good, clean", "bad"]  # the only string column
    (tmp_path / "c.json").write_text(json.dumps([{"body": "x y", "title": "t"}, {"body": "z", "title": "u"}]))
    assert texts(tmp_path / "c.json", text_column_name="body") == ["x y", "z"]


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "x", "title": "t"}\n')
    with pytest.raises(InputError, match=r"--text_column_name.*Columns: body, title"):
        texts(path)
    with pytest.raises(InputError, match=r"--text_column_name 'content' is not a column.*Columns: body, title"):
        texts(path, text_column_name="content")


def test_folders_and_globs(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name + "\n")
    (tmp_path / "notes.md").write_text("ignored\n")
    from_folder = resolve_data_files([str(tmp_path)], "--train_file")
    assert [p.split("/")[-1] for p in from_folder] == ["a.txt", "b.txt", "c.txt"]
    assert len(resolve_data_files([str(tmp_path / "*.txt")], "--train_file")) == 2
    assert texts(tmp_path) == ["a.txt", "b.txt", "sub/c.txt"]


def write(folder, name, content: bytes):
    (folder / name).write_bytes(content)
    return folder / name


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "missing.txt", r"--train_file: no such file or folder .*missing.txt"),
        (lambda d: write(d, "e.txt", b""), r"--train_file: '.*e.txt' is empty"),
        (lambda d: write(d, "x.pdf", b"x"), r"unsupported extension.*\.jsonl"),
        (lambda d: write(d, "bad.txt", b"ok\nfine\xff\n"), r"not valid UTF-8 at byte 7 \(line 2\)"),
        (lambda d: write(d, "bad.jsonl", b'{"text": "a"}\n{"text": b}\n'), r"line 2 is not valid JSON"),
        (lambda d: write(d, "blank.txt", b"\n  \n\n"), r"holds no text"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"folder .* holds no"),
    ],
)
def test_bad_files_name_the_flag_and_the_problem(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        texts(setup(tmp_path))


def test_validation_split_holds_out_the_last_texts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"line {i}" for i in range(100)))
    raw = read_corpus(DataArguments(train_file=[str(path)], validation_split_percentage=10))
    assert raw["train"]["text"] == [f"line {i}" for i in range(90)]
    assert raw["validation"]["text"] == [f"line {i}" for i in range(90, 100)]


def test_bad_files_are_read_once_and_explained_only_when_reading_fails(tmp_path, monkeypatch):
    from mlm_pretraining.data import text

    explained = []
    monkeypatch.setattr(text, "explain_bad_file", lambda path, flag: explained.append(path))
    good = write(tmp_path, "good.txt", b"one\ntwo\n")
    assert texts(good) == ["one", "two"] and explained == []
    bad = write(tmp_path, "bad.jsonl", b'{"text": "a"}\n{"text": b}\n')
    with pytest.raises(InputError, match=r"--train_file: could not read .*bad.jsonl"):
        texts(bad)
    assert explained == [str(bad)]


def test_named_validation_sets_are_parsed_and_read(tmp_path):
    assert parse_named_files(["dev.txt", "more.txt"], "--validation_file") == {"": ["dev.txt", "more.txt"]}
    assert parse_named_files(["domain=a.txt", "general=b.txt"], "--validation_file") == {
        "domain": ["a.txt"], "general": ["b.txt"]}
    with pytest.raises(InputError, match=r"--validation_file: the set name 'domain' is given twice \(a.txt, c.txt\); "
                                         r"give each set its own name, or one set of several files as a folder"):
        parse_named_files(["domain=a.txt", "general=b.txt", "domain=c.txt"], "--validation_file")
    with pytest.raises(InputError, match=r"--validation_file: give every set a name .* 'b.txt' has no name"):
        parse_named_files(["domain=a.txt", "b.txt"], "--validation_file")
    odd = write(tmp_path, "x=y.txt", b"an odd name\n")  # an existing file whose name holds '=' is a file
    assert parse_named_files([str(odd)], "--validation_file") == {"": [str(odd)]}

    train = write(tmp_path, "train.csv", b"id,review\n1,good\n2,bad\n")
    domain = write(tmp_path, "dev.jsonl", b'{"review": "fine"}\n')
    general = write(tmp_path, "wiki.txt", b"the city\n\nthe river\n")
    raw = read_corpus(DataArguments(train_file=[str(train)], validation_file=[f"domain={domain}",
                                                                              f"general={general}"],
                                    text_column_name="review"))
    assert sorted(raw) == ["train", "validation_domain", "validation_general"]
    assert raw["validation_domain"]["text"] == ["fine"]
    assert raw["validation_general"]["text"] == ["the city", "the river"]  # .txt lines, whatever the column flag
    other = write(tmp_path, "other.jsonl", b'{"body": "x"}\n')
    with pytest.raises(InputError, match=r"--text_column_name 'review' is not a column of --validation_file other="):
        read_corpus(DataArguments(train_file=[str(train)], validation_file=[f"other={other}"],
                                  text_column_name="review"))


def test_a_csv_training_file_with_a_txt_validation_file(tmp_path):
    train = write(tmp_path, "train.csv", b"id,text\n1,good\n2,bad\n")
    dev = write(tmp_path, "dev.txt", b"fine\n")
    raw = read_corpus(DataArguments(train_file=[str(train)], validation_file=[str(dev)]))
    assert raw["train"]["text"] == ["good", "bad"] and raw["validation"]["text"] == ["fine"]


def test_an_all_blank_file_is_named(tmp_path):
    blank = write(tmp_path, "blank.txt", b"\n  \n\n")
    with pytest.raises(InputError, match=r"--train_file \(.*blank.txt\) holds no text"):
        texts(blank)
