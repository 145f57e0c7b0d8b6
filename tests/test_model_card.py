"""The model card: evaluation sets found by key pattern, metadata, offline license, and a run_mlm.py run that writes
README.md and corpus_report.json with the numbers of all_results.json."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from arguments import DataArguments, MaskingArguments
from mlm_pretraining.reporting.model_card import (
    base_model_license,
    evaluation_results,
    model_card,
    probe_lines,
    write_model_card,
)
from mlm_pretraining.constants import EMBEDDED_MODEL
from run_mlm import main

RESULTS = {
    "eval_before_loss": 9.5, "eval_before_perplexity": 13359.726, "eval_before_accuracy": 0.0,
    "eval_loss": 4.25, "eval_perplexity": 70.105, "eval_accuracy": 0.3125, "eval_masked_tokens": 64.0,
    "eval_before_domain_loss": 9.75, "eval_before_domain_perplexity": 17154.23, "eval_before_domain_accuracy": 0.01,
    "eval_domain_loss": 5.0, "eval_domain_perplexity": 148.41, "eval_domain_accuracy": 0.25,
    "eval_nsp_accuracy": 0.5, "train_loss": 7.125, "epoch": 0.5,
}


def test_the_head_warmup_row_is_labelled_as_the_fair_baseline(monkeypatch):
    warmup = {"eval_warmup_loss": 6.5, "eval_warmup_perplexity": 665.14, "eval_warmup_accuracy": 0.125}
    assert evaluation_results({**RESULTS, **warmup})[0]["warmup"] == {"loss": 6.5, "perplexity": 665.14,
                                                                      "accuracy": 0.125}
    text = card_text(monkeypatch, results={**RESULTS, **warmup})
    assert ("| validation | before training (new weights untrained: a random head scores near vocabulary-size "
            "perplexity) | 9.5000 | 13,359.73 | 0.0000 |") in text
    assert ("| validation | after head warm-up (the base encoder with a fitted head: the fair baseline) | 6.5000 | "
            "665.14 | 0.1250 |") in text
    assert "| validation | after training | 4.2500 | 70.11 | 0.3125 |" in text
    assert "head warm-up" not in card_text(monkeypatch)  # a model with its own head: before and after only


def test_evaluation_sets_are_found_by_key_pattern():
    rows = evaluation_results(RESULTS)
    assert [row["name"] for row in rows] == [None, "domain"]  # eval_nsp_accuracy is a metric, not a set
    assert rows[0]["before"] == {"loss": 9.5, "perplexity": 13359.726, "accuracy": 0.0}
    assert rows[1]["after"] == {"loss": 5.0, "perplexity": 148.41, "accuracy": 0.25}
    assert evaluation_results({"train_loss": 1.0}) == []


def card_text(monkeypatch, **overrides):
    import transformers.modelcard as hf_modelcard

    # Even where the hub could be reached, the card must not ask it anything (the license is passed in).
    monkeypatch.setattr(hf_modelcard, "is_offline_mode", lambda: False)
    monkeypatch.setattr(hf_modelcard, "hf_api", lambda: pytest.fail("the model card asked the hub"))
    options = dict(base_model="bert-base-uncased", license=base_model_license("bert-base-uncased"),
                   model_name="run1", command="python run_mlm.py --train_file a.txt --output_dir run1",
                   data_args=DataArguments(train_file=["a.txt"], validation_file=["b.txt"]),
                   mask_args=MaskingArguments(mlm_probability=0.2, whole_word_mask=True), results=RESULTS,
                   report=None, mask_token="<mask>", hyperparameters={"learning_rate": 1e-4}, has_curves=True)
    options.update(overrides)
    return model_card(**options)


def test_card_metadata_and_body(monkeypatch, tmp_path):
    text = card_text(monkeypatch)
    (tmp_path / "README.md").write_text(text)
    data = ModelCard.load(tmp_path / "README.md").data
    assert (data.base_model, data.library_name, data.license, data.pipeline_tag) == (
        "bert-base-uncased", "transformers", "unknown", "fill-mask")
    assert "fill-mask" in data.tags
    assert "| validation | before training | 9.5000 | 13,359.73 | 0.0000 |" in text
    assert "| validation | after training | 4.2500 | 70.11 | 0.3125 |" in text
    assert "| domain | before training | 9.7500 | 17,154.23 | 0.0100 |" in text
    assert "| domain | after training | 5.0000 | 148.41 | 0.2500 |" in text
    assert "](training_curves.png)" in text
    assert "20% of the words chosen; of those 80% replaced by `<mask>`, 10% by a random token, 10% left" in text
    assert "- whole_word_mask: True" in text and "- learning_rate: 0.0001" in text
    assert "python run_mlm.py --train_file a.txt --output_dir run1" in text
    assert "- training files: `a.txt`" in text and "- evaluation files: `b.txt`" in text
    assert "fill(\"The capital of France is <mask>.\")" in text or "'The capital of France is <mask>.'" in text
    assert 'pipeline("fill-mask"' in text and "AutoModelForMaskedLM.from_pretrained" in text


def test_card_without_evaluation_or_curves(monkeypatch):
    text = card_text(monkeypatch, results={"train_loss": 2.0}, has_curves=False)
    assert "No evaluation set." in text and "training_curves.png" not in text


def test_license_from_the_base_models_local_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    assert base_model_license(str(tmp_path)) == "mit"
    assert base_model_license(EMBEDDED_MODEL) == "apache-2.0"  # the shipped MiniLM's card
    assert base_model_license(str(tmp_path / "missing")) == "unknown"
    assert base_model_license("nobody/not-in-the-cache") == "unknown"


def test_a_failing_card_never_fails_the_run(tmp_path, caplog):
    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(tmp_path)))  # no tokenizer, no state
    with caplog.at_level(logging.WARNING):
        assert write_model_card(trainer, SimpleNamespace(model_name_or_path="x"), DataArguments(),
                                MaskingArguments(), {}, None) is None
    assert "Could not write the model card" in caplog.text and not (tmp_path / "README.md").exists()


def test_a_card_that_fails_to_be_written_leaves_the_previous_card_whole(tmp_path, monkeypatch, caplog):
    from transformers import modelcard as hf_modelcard

    import mlm_pretraining.files
    import mlm_pretraining.reporting.model_card as model_card_module

    (tmp_path / "README.md").write_text("the card of the run so far")
    monkeypatch.setattr(model_card_module, "model_card", lambda **fields: "the new card")
    monkeypatch.setattr(hf_modelcard, "extract_hyperparameters_from_trainer", lambda trainer: {})

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlm_pretraining.files.os, "replace", disk_full)  # the write fails before it lands
    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(tmp_path)),
                              processing_class=SimpleNamespace(mask_token="[MASK]"))
    with caplog.at_level(logging.WARNING):
        assert write_model_card(trainer, SimpleNamespace(model_name_or_path="x"), DataArguments(),
                                MaskingArguments(), {}, None) is None
    assert "No space left on device" in caplog.text
    assert (tmp_path / "README.md").read_text() == "the card of the run so far"


def card_run(model_dir, folder, *extra) -> tuple[list[str], object, object]:
    """run_mlm.py flags for a 2-step run on 100 lines (the last 10 held out) written to ``folder``; ``extra``
    overrides. Returns (flags, output folder, corpus)."""
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(f"the band played the first song of the year {i % 7} . he was known in the city ."
                                for i in range(100)) + "\n")
    out = folder / "out"
    argv = ["--model_name_or_path", str(model_dir), "--train_file", str(corpus), "--output_dir", str(out),
            "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--max_steps", "2",
            "--validation_split_percentage", "10", "--preprocessing_num_workers", "1", "--report_to", "none",
            "--dataloader_num_workers", "0", *extra]
    return argv, out, corpus


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    argv, out, corpus = card_run(tiny_model_dir, tmp_path_factory.mktemp("card"))
    return main(argv), out, corpus


def test_run_writes_the_corpus_report(run, tiny_tokenizer):
    results, out, corpus = run
    report = json.loads((out / "corpus_report.json").read_text())
    train, validation = report["splits"]["train"], report["splits"]["validation"]
    lines = corpus.read_text().splitlines()
    assert (train["texts"], validation["texts"]) == (90, 10)  # the last 10 % held out
    assert train["characters"] == sum(len(line) for line in lines[:90])
    # every line is 18 pieces + [SEP]; blocks of 32 hold 30
    pieces = len(tiny_tokenizer.tokenize(lines[0]))
    assert pieces == 18 and train["tokens"] == 90 * 19 and train["word_pieces"] == 90 * 18
    assert (train["blocks"], train["tokens_dropped"]) == (90 * 19 // 30, 90 * 19 % 30)
    assert train["examples"] == results["train_samples"] and validation["examples"] == results["eval_samples"]
    # the vocabulary has the digits 1-5: '0' (lines 0, 7, ..., 84) and '6' (lines 6, ..., 83) are [UNK]
    assert train["unk_tokens"] == 13 + 12 and train["unk_share"] == pytest.approx(25 / (90 * 18))
    assert train["pieces_per_word"] == 1.0 and train["split_words"] == []


def test_run_writes_a_model_card_with_its_numbers(run, tiny_model_dir):
    _, out, _ = run
    card = (out / "README.md").read_text()
    saved = json.loads((out / "all_results.json").read_text())
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == str(tiny_model_dir) and "fill-mask" in data.tags and data.license == "unknown"
    for phase, prefix in (("before", "eval_before_"), ("after", "eval_")):
        assert (f"| validation | {phase} training | {saved[prefix + 'loss']:,.4f} | "
                f"{saved[prefix + 'perplexity']:,.2f} | {saved[prefix + 'accuracy']:,.4f} |") in card
    assert (out / "training_curves.png").is_file() and "](training_curves.png)" in card
    assert f"--output_dir {out} " in card and "--max_steps 2" in card
    assert "| train | 90 | " in card and "`[MASK]`" in card and "is [MASK]." in card


def test_named_evaluation_sets_in_the_card(tiny_model_dir, tmp_path):
    domain, general = tmp_path / "domain.txt", tmp_path / "general.txt"
    domain.write_text("\n".join(f"the band played song {i % 5} of the year ." for i in range(60)) + "\n")
    general.write_text("\n".join(f"he was known in the city for music {i % 5} ." for i in range(60)) + "\n")
    out = tmp_path / "out"
    main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(domain), "--output_dir", str(out),
          "--validation_file", f"domain={domain}", f"general={general}", "--max_seq_length", "16",
          "--per_device_train_batch_size", "4", "--max_steps", "2", "--preprocessing_num_workers", "1",
          "--report_to", "none", "--dataloader_num_workers", "0"])
    saved = json.loads((out / "all_results.json").read_text())
    card = (out / "README.md").read_text()
    for name in ("domain", "general"):
        for phase, prefix in (("before", f"eval_before_{name}_"), ("after", f"eval_{name}_")):
            assert (f"| {name} | {phase} training | {saved[prefix + 'loss']:,.4f} | "
                    f"{saved[prefix + 'perplexity']:,.2f} | {saved[prefix + 'accuracy']:,.4f} |") in card
    report = json.loads((out / "corpus_report.json").read_text())
    assert sorted(report["splits"]) == ["train", "validation_domain", "validation_general"]
    assert "| validation_general | 60 |" in card


def test_a_headless_models_card_keeps_its_rows_after_a_resume(headless_model_dir, tmp_path, caplog):
    """A head-less base (like the shipped MiniLM): the card shows the random-head row and the row after the head
    warm-up, taken from the evaluation at the warm-up's last step; rerunning the command resumes from the last
    checkpoint, and that run's card still holds both rows (the before row is not measured again). (The same command
    on a finished run changes nothing: the rerun here trains longer.)"""
    argv, out, _ = card_run(headless_model_dir, tmp_path, "--max_steps", "4", "--head_warmup_steps", "2",
                            "--save_steps", "4")
    first = main(argv)
    at_warmup = next(e for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
                     if e.get("step") == 2 and "eval_loss" in e)
    assert first["eval_warmup_loss"] == at_warmup["eval_loss"]
    assert first["eval_warmup_loss"] != first["eval_before_loss"]  # measured after the head trained two steps

    def rows(card):
        return [line for line in card.splitlines() if line.startswith("| validation |") and "| 10 |" not in line]

    card = (out / "README.md").read_text()
    assert [row.split(" | ")[1].split(" (")[0] for row in rows(card)] == [
        "before training", "after head warm-up", "after training"]
    caplog.clear()
    longer = [*argv, "--max_steps", "6"]  # the last value given counts
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.model.head_warmup"):
        resumed = main(longer)  # resumes from checkpoint-4 and trains to step 6
    assert "ended before step 4, where this run resumes" in caplog.text and "until step" not in caplog.text
    assert resumed["eval_before_loss"] == first["eval_before_loss"]
    assert resumed["eval_warmup_loss"] == first["eval_warmup_loss"]
    assert rows((out / "README.md").read_text())[:2] == rows(card)[:2]


def test_the_task_probe_has_its_own_table_and_none_without_a_probe():
    probe = {"eval_before_probe_macro_f1": 0.5, "eval_before_probe_accuracy": 0.625,
             "eval_before_probe_micro_f1": 0.625, "eval_probe_macro_f1": 0.75, "eval_probe_accuracy": 0.8,
             "eval_probe_micro_f1": 0.8, "eval_probe_seconds": 1.5}
    lines = probe_lines({**RESULTS, **probe})
    assert lines[2:6] == ["| task probe on dev | macro-F1 | accuracy | micro-F1 |", "|---|---:|---:|---:|",
                          "| before training | 0.5000 | 0.6250 | 0.6250 |",
                          "| after training | 0.7500 | 0.8000 | 0.8000 |"]
    assert probe_lines(RESULTS) == []
    assert evaluation_results({**RESULTS, **probe}) == evaluation_results(RESULTS)  # not taken for an MLM set
