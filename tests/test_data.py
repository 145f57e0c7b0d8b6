"""Reading every input format, and packing that loses no tokens but the final partial block."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arguments import DataArguments, InputError
from mlm_pretraining.data import (
    load_raw_datasets,
    pack,
    prepare_datasets,
    resolve_data_files,
    special_token_template,
    tokenize,
)


def texts(path, **kwargs):
    raw = load_raw_datasets(DataArguments(train_file=[str(path)], validation_split_percentage=0, **kwargs))
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
    raw = load_raw_datasets(DataArguments(train_file=[str(path)], validation_split_percentage=10))
    assert raw["train"]["text"] == [f"line {i}" for i in range(90)]
    assert raw["validation"]["text"] == [f"line {i}" for i in range(90, 100)]


def test_packing_loses_nothing_but_the_final_partial_block(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, preprocessing_num_workers=1)
    raw = load_raw_datasets(args)
    stream = [i for ids in tokenize(raw, tiny_tokenizer, args, 32)["train"]["input_ids"] for i in ids]
    prefix, suffix = special_token_template(tiny_tokenizer)
    assert (prefix, suffix) == ([tiny_tokenizer.cls_token_id], [tiny_tokenizer.sep_token_id])
    blocks = np.array(prepare_datasets(raw, tiny_tokenizer, args, 32)["train"]["input_ids"])
    body = 32 - 2
    assert blocks.shape == (len(stream) // body, 32)
    assert (blocks[:, 0] == tiny_tokenizer.cls_token_id).all() and (blocks[:, -1] == tiny_tokenizer.sep_token_id).all()
    assert blocks[:, 1:-1].ravel().tolist() == stream[: len(blocks) * body]
    assert len(stream) - blocks.size // 32 * body < body
    # every text is followed by a separator inside the stream
    n_texts = len(raw["train"])
    assert stream.count(tiny_tokenizer.sep_token_id) == n_texts


def test_packing_is_exact_on_a_hand_made_stream():
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[10, 11, 12], [13], [14, 15, 16, 17, 18], [19, 20]]})
    blocks = pack(ds, 5, [1], [2])["input_ids"]
    assert blocks == [[1, 10, 11, 12, 2], [1, 13, 14, 15, 2], [1, 16, 17, 18, 2]]  # 19, 20 dropped


def test_line_by_line_keeps_each_text_truncated(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, line_by_line=True,
                         preprocessing_num_workers=1)
    raw = load_raw_datasets(args)
    rows = prepare_datasets(raw, tiny_tokenizer, args, 12)["train"]["input_ids"]
    assert len(rows) == len(raw["train"])
    assert max(len(r) for r in rows) == 12
    assert all(r[0] == tiny_tokenizer.cls_token_id and r[-1] == tiny_tokenizer.sep_token_id for r in rows)
    heading = tiny_tokenizer(raw["train"][0]["text"])["input_ids"]  # " = season 0 = ": short, kept whole
    assert len(heading) < 12 and rows[0] == heading
    long_text = tiny_tokenizer(raw["train"][1]["text"])["input_ids"]
    assert len(long_text) > 12 and rows[1] == long_text[:11] + [tiny_tokenizer.sep_token_id]


def test_max_samples_limit_each_split(tiny_tokenizer, corpus):
    args = DataArguments(train_file=[str(corpus)], max_train_samples=3, max_eval_samples=2,
                         preprocessing_num_workers=1)
    processed = prepare_datasets(load_raw_datasets(args), tiny_tokenizer, args, 16)
    assert (len(processed["train"]), len(processed["validation"])) == (3, 2)


def test_tokenization_cache_is_found_again_when_only_unrelated_flags_change(tiny_tokenizer, corpus):
    from dataclasses import replace

    args = DataArguments(train_file=[str(corpus)], validation_split_percentage=0, preprocessing_num_workers=1,
                         overwrite_cache=True)
    raw = load_raw_datasets(args)
    first = tokenize(raw, tiny_tokenizer, args, 16)["train"]
    again = tokenize(raw, tiny_tokenizer, replace(args, overwrite_cache=False, max_train_samples=3), 16)["train"]
    other = tokenize(raw, tiny_tokenizer, replace(args, overwrite_cache=False, line_by_line=True), 16)["train"]
    assert first.cache_files and again.cache_files == first.cache_files
    assert other.cache_files != first.cache_files  # line by line tokenizes differently: its own entry
