"""scripts/run_classification.py end to end on tiny data, and the classification pieces it is built from."""

from __future__ import annotations

import json

import pytest

from arguments import InputError
from mlm_pretraining.classification import classification_metrics
from scripts.run_classification import main

POSITIVE = ["the band played the first song of the year", "he released a new album which became known"]
NEGATIVE = ["the war was in the south during the season", "the river and the park of the city"]
NEUTRAL = ["it was one of the national team", "she had been called early"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def labelled_rows(n):
    groups = [("music", POSITIVE), ("place", NEGATIVE), ("other", NEUTRAL)]
    return [{"text": groups[i % 3][1][i % 2] + f" {i % 5}", "label": groups[i % 3][0], "metadata": []}
            for i in range(n)]


def test_metrics_match_hand_computed_values():
    # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/3 R=1 F1=4/5; class 2: F1=0. Accuracy 3/5.
    metrics = classification_metrics([0, 1, 1, 1, 0], [0, 0, 1, 1, 2])
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["micro_f1"] == pytest.approx(0.6)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_metrics_perfect_and_all_wrong():
    assert classification_metrics([2, 0, 1], [2, 0, 1]) == {"accuracy": 1.0, "macro_f1": 1.0, "micro_f1": 1.0}
    assert classification_metrics([1, 1], [0, 0])["macro_f1"] == 0.0


@pytest.mark.slow
def test_jsonl_with_string_labels_selects_best_epoch_and_reports_dev_and_test(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(24))
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled_rows(9))
    test = write_jsonl(tmp_path / "test.jsonl", labelled_rows(12))
    out = tmp_path / "out"
    # Selection by dev loss: the tiny model's loss moves every epoch, its F1 may not.
    results = main(["--model_name_or_path", str(tiny_model_dir), "--train_file", train, "--validation_file", dev,
                    "--test_file", test, "--output_dir", str(out), "--num_train_epochs", "3",
                    "--per_device_train_batch_size", "8", "--learning_rate", "2e-2", "--warmup_steps", "0",
                    "--metric_for_best_model", "loss", "--seed", "3", "--use_cpu", "true"])

    saved = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_macro_f1", "eval_micro_f1", "test_accuracy", "test_macro_f1", "test_micro_f1"):
        assert saved[key] == pytest.approx(results[key])
    for split, size in (("eval", 9), ("test", 12)):  # accuracy is a count of right answers over the whole split
        right = saved[f"{split}_accuracy"] * size
        assert right == pytest.approx(round(right), abs=1e-9), split
    assert saved["test_micro_f1"] == pytest.approx(saved["test_accuracy"])
    assert saved["test_samples"] == 12 and saved["eval_samples"] == 9 and saved["train_samples"] == 24

    # Model selection: the final dev loss is the lowest of the end-of-epoch ones, from the step recorded.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    per_epoch = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    assert sorted(per_epoch) == [3, 6, 9]
    assert len(set(per_epoch.values())) == 3  # the epochs differ, so choosing among them matters
    assert saved["best_global_step"] == min(per_epoch, key=per_epoch.get)
    assert saved["eval_loss"] == pytest.approx(min(per_epoch.values()), abs=1e-6)

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "music", "1": "other", "2": "place"}  # sorted label names
    assert (out / "tokenizer.json").is_file()


def test_csv_with_integer_labels_finds_the_text_column_and_holds_out_a_dev_set(tmp_path, tiny_model_dir):
    rows = ["label,review"] + [f"{i % 2},\"{(POSITIVE if i % 2 else NEGATIVE)[i % 2]}\"" for i in range(40)]
    rows.append('1,""')  # a blank review is dropped, not trained on
    train = tmp_path / "reviews.csv"
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    results = main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(train),
                    "--validation_split_percentage", "25", "--output_dir", str(out), "--max_steps", "2",
                    "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "1", "--save_steps", "1",
                    "--use_cpu", "true"])
    assert results["eval_samples"] == 10 and results["train_samples"] == 30
    assert "test_macro_f1" not in results
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}


@pytest.mark.parametrize(
    "rows_dev, extra, message",
    [
        ([{"text": "the city", "label": "sports"}], [], "label(s) not in the training data: sports"),
        (None, ["--label_column_name", "topic"], "no label column 'topic'"),
        (None, ["--text_column_name", "body"], "--text_column_name 'body' is not a column"),
    ],
)
def test_bad_data_is_reported_before_training(tmp_path, tiny_model_dir, rows_dev, extra, message):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(6))
    dev = write_jsonl(tmp_path / "dev.jsonl", rows_dev or labelled_rows(3))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(["--model_name_or_path", str(tiny_model_dir), "--train_file", train, "--validation_file", dev,
              "--output_dir", str(tmp_path / "out"), *extra])


def test_flags_are_validated():
    with pytest.raises(InputError, match="--train_file is required"):
        main(["--output_dir", "x"])
    with pytest.raises(InputError, match="needs a dev set"):
        main(["--train_file", "a.csv", "--validation_split_percentage", "0", "--output_dir", "x"])
    with pytest.raises(InputError, match="--output_dir is required"):
        main(["--train_file", "a.csv"])


def test_labels_come_from_all_training_rows_even_when_a_subset_misses_some(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(24))
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled_rows(9))
    out = tmp_path / "out"
    results = main(["--model_name_or_path", str(tiny_model_dir), "--train_file", train, "--validation_file", dev,
                    "--output_dir", str(out), "--max_train_samples", "1", "--max_eval_samples", "5",
                    "--max_steps", "1", "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "1",
                    "--save_steps", "1", "--use_cpu", "true"])
    assert results["train_samples"] == 1 and results["eval_samples"] == 5
    assert len(json.loads((out / "config.json").read_text())["id2label"]) == 3
