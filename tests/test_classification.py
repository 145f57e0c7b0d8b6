"""scripts/run_classification.py end to end on tiny data, and the classification pieces it is built from."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from helpers import NEGATIVE, POSITIVE, labelled_rows, write_jsonl
from transformers import EarlyStoppingCallback, Trainer

import mlm_pretraining.classification as classification
from arguments import parse_args
from mlm_pretraining.classification import (
    build_classification_trainer,
    classification_metrics,
    compute_metrics,
    predicted_class,
    tokenize_labelled,
)
from mlm_pretraining.errors import InputError
from scripts.run_classification import ARGUMENT_GROUPS, main


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


def run_args(tmp_path, tiny_model_dir, *extra):
    """Flags for a run on the tiny model and tiny labelled files (24 train, 9 dev rows)."""
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(24))
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled_rows(9))
    return ["--model_name_or_path", str(tiny_model_dir), "--train_file", train, "--validation_file", dev,
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", *extra]


def test_defaults_learn_a_small_imbalanced_task(tmp_path, tiny_model_dir):
    _, data_args, _, training_args = parse_args(run_args(tmp_path, tiny_model_dir), groups=ARGUMENT_GROUPS)
    assert training_args.learning_rate == 5e-5 and training_args.num_train_epochs == 10
    assert training_args.warmup_steps == 0.06
    assert training_args.early_stopping_patience == 3 and training_args.metric_for_best_model == "macro_f1"
    assert training_args.load_best_model_at_end and training_args.greater_is_better
    assert training_args.save_strategy == "best" and training_args.save_only_model
    assert training_args.train_sampling_strategy == "group_by_length"
    assert data_args.pad_to_multiple_of == 8


def tiny_trainer(tmp_path, tiny_model_dir, tiny_tokenizer, texts, *extra):
    """Our fine-tuning Trainer on the tiny model, with ``texts`` (label i % 2) as training and dev data."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForSequenceClassification

    _, data_args, _, training_args = parse_args(run_args(tmp_path, tiny_model_dir, *extra), groups=ARGUMENT_GROUPS)
    encoded = DatasetDict({split: Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]})
                           for split in ("train", "validation")})
    tokenized = tokenize_labelled(encoded, tiny_tokenizer, 64)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    return build_classification_trainer(model, tiny_tokenizer, data_args, training_args,
                                        train_dataset=tokenized["train"], eval_dataset=tokenized["validation"])


def padded_tokens(dataloader) -> int:
    return sum(batch["input_ids"].numel() for batch in dataloader)


def test_trainer_stops_early_groups_by_length_and_pads_to_a_multiple_of_8(tmp_path, tiny_model_dir, tiny_tokenizer):
    short, long = "the city", "the band played the first song of the year and the river and the park of the city"
    texts = [long if i % 4 == 0 else short for i in range(256)]  # random batches of 4 mostly hold a long text
    trainer = tiny_trainer(tmp_path, tiny_model_dir, tiny_tokenizer, texts, "--per_device_train_batch_size", "4",
                           "--per_device_eval_batch_size", "4")
    stoppers = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert len(stoppers) == 1 and stoppers[0].early_stopping_patience == 3

    short_len, long_len = (len(tiny_tokenizer(t)["input_ids"]) for t in (short, long))  # 4 and 20 tokens
    batch = trainer.data_collator([tiny_tokenizer(short), tiny_tokenizer(long)])
    assert batch["input_ids"].shape == (2, 24) and long_len == 20  # the longest, rounded up to a multiple of 8
    assert batch["attention_mask"].sum().item() == short_len + long_len

    grouped = padded_tokens(trainer.get_train_dataloader())
    trainer.args.train_sampling_strategy = "random"
    mixed = padded_tokens(trainer.get_train_dataloader())
    # Expected tokens a text: random 24 · (1 − 0.75⁴) + 8 · 0.75⁴ ≈ 18.9; grouped by length ≈ 0.25 · 24 + 0.75 · 8 = 12.
    assert grouped < 0.8 * mixed

    # Dev is read in length order (not split at random by transformers' eval-time length grouping): all the
    # short texts come first. Trainer._get_eval_sampler is the private method ClassificationTrainer overrides.
    assert hasattr(Trainer, "_get_eval_sampler"), "transformers.Trainer._get_eval_sampler moved"
    trainer.args.train_sampling_strategy = "group_by_length"
    lengths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
    assert lengths == [8] * 48 + [24] * 16


def test_training_stops_when_the_dev_metric_stops_improving(tmp_path, tiny_model_dir):
    # Learning rate 0: the dev macro-F1 never changes, so after the first epoch it never improves. Patience 2:
    # epochs 2 and 3 fail to improve, training ends after epoch 3 of 10, and epoch 1 (the first best) is kept.
    out = tmp_path / "out"
    results = main(run_args(tmp_path, tiny_model_dir, "--learning_rate", "0", "--early_stopping_patience", "2",
                            "--per_device_train_batch_size", "8", "--seed", "3"))
    assert results["epochs_trained"] == 3 and results["best_global_step"] == 3
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_macro_f1" in e] == [3, 6, 9]
    assert len({e["eval_macro_f1"] for e in history if "eval_macro_f1" in e}) == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # save_strategy best: one save


def test_patience_0_trains_every_epoch(tmp_path, tiny_model_dir):
    results = main(run_args(tmp_path, tiny_model_dir, "--learning_rate", "0", "--early_stopping_patience", "0",
                            "--num_train_epochs", "4", "--per_device_train_batch_size", "8"))
    assert results["epochs_trained"] == 4


def test_dev_metrics_are_the_kept_epochs_evaluation_not_a_second_one(tmp_path, tiny_model_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    extra = ["--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--learning_rate", "2e-2",
             "--warmup_steps", "0", "--metric_for_best_model", "loss", "--seed", "3"]
    test = write_jsonl(tmp_path / "test.jsonl", labelled_rows(12))
    results = main(run_args(tmp_path, tiny_model_dir, "--test_file", test, *extra))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [3, 6, 9]  # no fourth, post-training dev evaluation
    assert len([e for e in history if "test_loss" in e]) == 1
    kept = next(e for e in history if e.get("step") == results["best_global_step"] and "eval_loss" in e)
    assert results["eval_loss"] == kept["eval_loss"] and results["eval_macro_f1"] == kept["eval_macro_f1"]

    # The reused numbers are what the saved (kept) model scores on dev now.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    names = json.loads((out / "config.json").read_text())["label2id"]
    rows = labelled_rows(9)
    with torch.no_grad():
        batch = tiny_tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        logits = model(**batch).logits
        labels = torch.tensor([names[r["label"]] for r in rows])
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
    fresh = classification_metrics(logits.argmax(-1).numpy(), labels.numpy())
    assert results["eval_macro_f1"] == pytest.approx(fresh["macro_f1"])
    assert results["eval_accuracy"] == pytest.approx(fresh["accuracy"])
    assert results["eval_loss"] == pytest.approx(loss, abs=1e-4)


def test_compute_metrics_takes_class_ids_or_logits():
    from transformers import EvalPrediction

    labels = np.array([0, 1, 1, 2])
    logits = np.array([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [0, 0, 5]])
    from_logits = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    import torch

    ids = predicted_class(torch.tensor(logits), None).numpy()
    assert ids.tolist() == [0, 1, 2, 2]
    assert compute_metrics(EvalPrediction(predictions=ids, label_ids=labels)) == from_logits
    assert from_logits["accuracy"] == 0.75


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--early_stopping_patience", "-1"], "--early_stopping_patience must be 0"),
        (["--early_stopping_threshold", "-0.1"], "--early_stopping_threshold must be 0 or more"),
        (["--eval_strategy", "no"], "--eval_strategy no leaves nothing to select"),
        (["--pad_to_multiple_of", "0"], "--pad_to_multiple_of must be a positive integer"),
        (["--metric_for_best_model", "", "--load_best_model_at_end", "false"], "--early_stopping_patience needs"),
        # No training at all would report the untrained classifier's scores as a result.
        (["--num_train_epochs", "0"], "--num_train_epochs must be positive .or --max_steps given., got 0: without "
                                      "training the scores would be the untrained classifier's"),
        (["--num_train_epochs", "-1", "--max_steps", "0"], "--num_train_epochs must be positive"),
        # A masked-LM speed-up: run_classification.py does not offer it, rather than accept and ignore it.
        (["--sparse_prediction", "true"], r"not used by the HfArgumentParser: \['--sparse_prediction'"),
    ],
)
def test_new_flags_are_validated(tmp_path, tiny_model_dir, extra, message):
    with pytest.raises(InputError, match=message):
        parse_args(run_args(tmp_path, tiny_model_dir, *extra), groups=ARGUMENT_GROUPS)


def test_zero_epochs_are_fine_with_max_steps(tmp_path, tiny_model_dir):
    training_args = parse_args(run_args(tmp_path, tiny_model_dir, "--num_train_epochs", "0", "--max_steps", "3"),
                               groups=ARGUMENT_GROUPS)[-1]
    assert training_args.max_steps == 3


@pytest.mark.parametrize(
    "remove, message",
    [
        (("*.safetensors",), r"is a folder with no model weights \(\*.safetensors\)\.$"),
        (("vocab.txt", "tokenizer*.json", "special_tokens_map.json"),
         r"is a folder with no tokenizer \(tokenizer.json, vocab.txt, vocab.json, \*.model; or give --tokenizer_name\)"),
        (("*",), "is a folder with no model weights .* and no tokenizer"),
    ],
)
def test_a_model_folder_without_weights_or_tokenizer_is_refused_before_loading(tmp_path, tiny_model_dir, monkeypatch,
                                                                              remove, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model or tokenizer was loaded before the folder was checked")

    monkeypatch.setattr(classification, "load_model", no_loading)
    monkeypatch.setattr(classification, "load_tokenizer", no_loading)
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for pattern in remove:
        for path in folder.glob(pattern):
            path.unlink()
    (folder / "training_args.bin").write_bytes(b"not weights")  # a run's arguments, as every output folder holds
    argv = run_args(tmp_path, tiny_model_dir)
    argv[argv.index("--model_name_or_path") + 1] = str(folder)
    with pytest.raises(InputError, match=f"^--model_name_or_path {re.escape(str(folder))} {message}"):
        main(argv)


def test_a_model_folder_holding_only_checkpoints_points_at_them(tmp_path, tiny_model_dir):
    folder = tmp_path / "tapt"  # as run_mlm.py leaves it when stopped by a signal: a checkpoint, no model of its own
    shutil.copytree(tiny_model_dir, folder / "checkpoint-402")
    (folder / "all_results.json").write_text("{}")
    argv = run_args(tmp_path, tiny_model_dir)
    argv[argv.index("--model_name_or_path") + 1] = str(folder)
    with pytest.raises(InputError, match=r"no model weights .* It holds checkpoint-402: the run writing it may not "
                                         r"have finished \(rerun it\), or give a checkpoint folder\.$"):
        main(argv)
    with pytest.raises(InputError, match="is a folder with no model weights") as info:
        main([*argv, "--tokenizer_name", str(tiny_model_dir)])
    assert "tokenizer" not in str(info.value)  # the tokenizer comes from elsewhere: only the weights are missing


def test_bf16_without_a_gpu_fine_tunes_on_the_cpu_instead_of_being_refused(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(classification, "has_gpu", lambda: False)
    flags = [flag for flag in run_args(tmp_path, tiny_model_dir) if flag not in ("--use_cpu", "true")]
    *_, training_args = parse_args(flags + ["--bf16", "True"], groups=ARGUMENT_GROUPS)
    assert training_args.bf16 and training_args.use_cpu  # transformers alone: "Your setup doesn't support bf16/gpu"
    *_, training_args = parse_args(flags, groups=ARGUMENT_GROUPS)
    assert not training_args.use_cpu  # fp32 keeps the device as it was
