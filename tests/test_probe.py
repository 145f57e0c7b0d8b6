"""The task probe (run_mlm.py --probe_task): it learns a task a word separates and not shuffled labels, pools only
real tokens, reports the same numbers after a resume, selects the checkpoint it scores best, and refuses bad input
before the model loads, naming the file or flag."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, WORDS, write_season_corpus
from helpers import write_jsonl
from safetensors.torch import load_file

import run_mlm
from arguments import ProbeArguments, parse_args
from mlm_pretraining import probe as probe_module
from mlm_pretraining.errors import InputError
from mlm_pretraining.probe import Probe, embed, evaluation_prefix, read_probe

FILLER = [word for word in WORDS if word.isalpha() and word not in ("music", "river")]


def word_task(n: int, seed: int, flipped: float = 0.0) -> list[dict]:
    """``n`` texts of four random words and one more that gives the label: 'music' or 'river'; a ``flipped`` share
    of the labels swapped (a task a probe learns only in part, so its score moves with the encoder)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(FILLER, 4)
        words.insert(rng.randrange(5), "music" if i % 2 else "river")
        rows.append({"text": " ".join(words), "label": "music" if (i % 2) != (rng.random() < flipped) else "river"})
    return rows


def write_task(folder, flipped: float = 0.0):
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", word_task(200, seed=1, flipped=flipped))
    write_jsonl(folder / "dev.jsonl", word_task(100, seed=2, flipped=flipped))
    return folder


@pytest.fixture
def task_dir(tmp_path):
    return write_task(tmp_path / "task")


def toy_probe(task_dir, **flags) -> Probe:
    return read_probe(ProbeArguments(probe_task=str(task_dir), **flags))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_probe_learns_a_task_one_word_separates_and_not_shuffled_labels(task_dir, tiny_model_dir, tiny_tokenizer,
                                                                            pooling):
    """On the tiny random BERT the word's embedding survives two layers and the pooling: macro-F1 near 1. The same
    texts with shuffled training labels (the negative control, three shuffles) score near chance (0.5; one shuffle
    of 200 labels on 100 dev texts spreads by about 0.07)."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    probe = toy_probe(task_dir, probe_pooling=pooling)
    scores = probe.score(model, tiny_tokenizer, batch_size=32)
    controls = [Probe(probe.train_texts, np.random.default_rng(seed).permutation(probe.train_labels), probe.dev_texts,
                      probe.dev_labels, probe.labels, pooling).score(model, tiny_tokenizer, batch_size=32)
                for seed in range(3)]
    control = np.mean([c["probe_macro_f1"] for c in controls])
    print(f"{pooling}: probe {scores}; shuffled controls' macro-F1 {[c['probe_macro_f1'] for c in controls]}")
    assert scores["probe_macro_f1"] >= 0.93 and scores["probe_accuracy"] == scores["probe_micro_f1"]
    assert control <= 0.62 and max(c["probe_macro_f1"] for c in controls) < 0.7
    assert 0 < scores["probe_seconds"] < 60
    assert model.training is False  # from_pretrained's mode, given back as found


def test_embedding_pools_real_tokens_only_and_keeps_the_order(tiny_model_dir, tiny_tokenizer):
    """A text's vector is the same alone and batched with a longer text (padding left out of the mean), rows come
    back in the order given although batches run shortest first, and cls is the first token's state."""
    from transformers import AutoModelForMaskedLM

    encoder = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).base_model.eval()
    texts = ["the band played the first song of the year at the park", "music"]
    options = dict(batch_size=8, max_length=32)
    together = embed(encoder, tiny_tokenizer, texts, pooling="mean", **options)
    alone = np.concatenate([embed(encoder, tiny_tokenizer, [text], pooling="mean", **options) for text in texts])
    assert together == pytest.approx(alone, abs=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-2  # two texts, two vectors
    with torch.no_grad():
        first = encoder(**tiny_tokenizer(texts[:1], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    assert embed(encoder, tiny_tokenizer, texts, pooling="cls", **options)[0] == pytest.approx(first, abs=1e-5)


def test_a_large_task_is_drawn_down_the_same_way_every_time(task_dir):
    first = toy_probe(task_dir, probe_max_train_samples=50, probe_max_eval_samples=20)
    assert len(first.train_texts) == 50 and len(first.dev_texts) == 20
    assert toy_probe(task_dir, probe_max_train_samples=50).train_texts == first.train_texts
    assert first.labels == ["music", "river"] and set(first.train_labels) == {0, 1}


def test_evaluation_prefix_probes_once_per_evaluation():
    assert evaluation_prefix({"eval_loss": 1.0, "eval_runtime": 0.1}) == "eval"
    assert evaluation_prefix({"eval_before_loss": 1.0, "eval_before_runtime": 0.1}) == "eval_before"
    named = [{"eval_task_loss": 1.0, "eval_task_runtime": 0.1}, {"eval_general_runtime": 0.1}]
    assert [evaluation_prefix(metrics, last_set="general") for metrics in named] == [None, "eval"]
    assert evaluation_prefix({"train_loss": 1.0}) is None


def mlm_flags(model, corpus, out, task, *extra) -> list[str]:
    """A tiny run_mlm.py run of 8 steps, evaluated and checkpointed every 2, probing ``task``."""
    return ["--model_name_or_path", str(model), "--train_file", str(corpus), "--output_dir", str(out),
            "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--max_steps", "8",
            "--learning_rate", "3e-3", "--eval_steps", "2", "--save_steps", "2", "--save_total_limit", "0",
            "--validation_split_percentage", "10", "--max_eval_samples", "4", "--report_to", "none",
            "--use_cpu", "true", "--preprocessing_num_workers", "1", "--disable_tqdm", "true",
            "--probe_task", str(task), *extra]


SELECT_BY_PROBE = ("--load_best_model_at_end", "true", "--metric_for_best_model", "probe_macro_f1")


def probe_scores(out) -> list[tuple[int, float]]:
    """(step, probe macro-F1) of each probe the run logged (trainer_state.json), in order."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], value) for entry in history for key, value in entry.items()
            if key in ("eval_probe_macro_f1", "eval_before_probe_macro_f1")]


@pytest.fixture(scope="module")
def noisy_run(tiny_model_dir, tmp_path_factory):
    """A run probing a task with a fifth of its labels flipped (so the probe's score moves), keeping the checkpoint
    the probe scores best: (its folder, its results, the task, the corpus)."""
    folder = tmp_path_factory.mktemp("noisy")
    task, corpus = write_task(folder / "task", flipped=0.2), write_season_corpus(folder)
    results = run_mlm.main(mlm_flags(tiny_model_dir, corpus, folder / "out", task, *SELECT_BY_PROBE,
                                     "--report_to", "tensorboard"))
    return folder / "out", results, task, corpus


def test_a_run_reports_the_probe_everywhere_and_keeps_the_checkpoint_it_scores_best(noisy_run):
    out, results, _, _ = noisy_run
    for prefix in ("eval_before", "eval"):
        assert {f"{prefix}_probe_{m}" for m in ("macro_f1", "accuracy", "micro_f1", "seconds")} <= set(results)
    scores = probe_scores(out)
    # before training (kept by the curve's callback), every evaluation, the final one of the kept model
    assert [step for step, _ in scores] == [0, 2, 4, 6, 8, 8]
    periodic = scores[1:-1]
    assert len({score for _, score in periodic}) > 1  # the scores differ, so the choice below is a real one
    best_step, best_score = max(periodic, key=lambda item: (item[1], -item[0]))  # ties: the first stays best
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_global_step"] == best_step and state["best_metric"] == best_score
    assert results["eval_probe_macro_f1"] == best_score == scores[-1][1]  # the kept model, probed again
    card = (out / "README.md").read_text()
    assert f"| after training | {best_score:,.4f} |" in card.split("| task probe on dev |")[1]
    from PIL import Image

    with Image.open(out / "training_curves.png") as image:
        assert image.width > 1900  # three panels: loss, perplexity and the probe
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.glob("runs/*")))).Reload()
    logged = events.Scalars("eval/probe_macro_f1")  # through the Trainer's log, every evaluation from step 2 on
    assert [event.step for event in logged] == [step for step, _ in scores[1:]]
    assert [event.value for event in logged] == pytest.approx([score for _, score in scores[1:]])


def test_the_probe_scores_the_same_after_a_resume(noisy_run, tiny_model_dir, tmp_path):
    """A run resumed from checkpoint-4 probes steps 6 and 8 (and selects) with the numbers of the uninterrupted
    run."""
    full, full_results, task, corpus = noisy_run
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    results = run_mlm.main(mlm_flags(tiny_model_dir, corpus, resumed, task, *SELECT_BY_PROBE))
    assert probe_scores(resumed) == probe_scores(full)
    assert len({score for _, score in probe_scores(full)[-3:]}) > 1  # not constants: steps 6 and 8 differ
    assert {k: v for k, v in results.items() if "probe" in k and "seconds" not in k} == \
        {k: v for k, v in full_results.items() if "probe" in k and "seconds" not in k and "before" not in k}


def test_selection_by_the_probe_keeps_its_highest_score_neither_first_nor_last(tiny_model_dir, corpus, task_dir,
                                                                              tmp_path, monkeypatch):
    """Scores set by hand (before, steps 2, 4, 6, 8, then the final evaluation): step 4 scores highest; the final
    model holds checkpoint-4's weights, not the last checkpoint's."""
    scores = iter([0.30, 0.50, 0.90, 0.40, 0.60, 0.90])
    monkeypatch.setattr(probe_module, "fit_and_score", lambda *args: dict.fromkeys(
        ("probe_macro_f1", "probe_accuracy", "probe_micro_f1"), next(scores)))
    out = tmp_path / "out"
    results = run_mlm.main(mlm_flags(tiny_model_dir, corpus, out, task_dir, *SELECT_BY_PROBE))
    assert probe_scores(out) == [(0, 0.30), (2, 0.50), (4, 0.90), (6, 0.40), (8, 0.60), (8, 0.90)]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_global_step"] == 4 and state["best_model_checkpoint"].endswith("checkpoint-4")
    final, kept, last = (load_file(folder / "model.safetensors")
                         for folder in (out, out / "checkpoint-4", out / "checkpoint-8"))
    assert all(torch.equal(final[name], kept[name]) for name in final)
    assert not all(torch.equal(final[name], last[name]) for name in final)  # negative control: training moved it
    assert results["eval_probe_macro_f1"] == 0.90


@pytest.mark.slow
def test_under_torchrun_the_main_process_probes_and_every_process_selects_by_its_scores(tiny_model_dir, corpus,
                                                                                       task_dir, tmp_path):
    """Two processes (gloo): the main one probes (its log shows each probe once), the other gets the scores by
    broadcast; had it not, its best-model selection would find no eval_probe_macro_f1 and the run would fail."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "run_mlm.py", *mlm_flags(tiny_model_dir, corpus, out, task_dir, "--max_steps", "4",
                                                    "--per_device_train_batch_size", "4", *SELECT_BY_PROBE)],
                          cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [step for step, _ in probe_scores(out)] == [0, 2, 4, 4]
    assert done.stdout.count("Probe at step") == 4
    assert "eval_probe_macro_f1" in json.loads((out / "all_results.json").read_text())


def labelled_folder(tmp_path, train_rows, dev_rows=None):
    folder = tmp_path / "task"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "train.jsonl", train_rows)
    if dev_rows is not None:
        write_jsonl(folder / "dev.jsonl", dev_rows)
    return folder


ONE_CLASS = [{"text": "music", "label": "a"}] * 4
MOSTLY_ONE_CLASS = [{"text": "music", "label": "a"}] * 50 + [{"text": "river", "label": "b"}]


@pytest.mark.parametrize("train, dev, extra, message", [
    (word_task(8, 1), None, [], r"--probe_task .*task: no validation file \(named dev or validation or valid"),
    (ONE_CLASS, word_task(4, 2), [], r"--probe_task \(.*train.jsonl\) has 1 distinct label\(s\)"),
    (MOSTLY_ONE_CLASS, [{"text": "music", "label": "a"}], ["--probe_max_train_samples", "2"],
     r"train.jsonl\), drawn down to --probe_max_train_samples 2, has 1 distinct label\(s\)"),
    (word_task(8, 1), word_task(4, 2), ["--probe_label_column_name", "topic"],
     r"train.jsonl\) has no label column 'topic'; choose one with --probe_label_column_name"),
    (word_task(8, 1), word_task(4, 2), ["--probe_text_column_name", "body"],
     r"--probe_text_column_name 'body' is not a column of --probe_task \(.*train.jsonl\)"),
    (word_task(8, 1), [{"text": "music", "label": "sports"}], [],
     r"dev.jsonl\) has label\(s\) the probe's training data lacks: sports"),
])
def test_bad_probe_data_fails_before_the_model_loads_naming_the_file_and_flag(run, corpus, tmp_path, train, dev,
                                                                             extra, message):
    folder = labelled_folder(tmp_path, train, dev)
    run(["--train_file", str(corpus), "--probe_task", str(folder), *extra], message)


def test_probe_files_instead_of_a_folder(run, corpus, tmp_path):
    folder = labelled_folder(tmp_path, word_task(8, 1), word_task(4, 2))
    run(["--train_file", str(corpus), "--probe_train_file", str(folder / "train.jsonl"), "--probe_validation_file",
         str(folder / "dev.jsonl"), "--probe_label_column_name", "topic"],
        r"--probe_train_file \(.*train.jsonl\) has no label column 'topic'")


@pytest.mark.parametrize("flags, message", [
    (["--probe_train_file", "train.jsonl"], "The probe needs a train and a dev split: add --probe_validation_file"),
    (["--probe_validation_file", "dev.jsonl"], "add --probe_train_file"),
    (["--probe_task", "{task}", "--probe_train_file", "train.jsonl"],
     "--probe_task .* or --probe_train_file .* not both"),
    (["--probe_task", "{task}/nowhere"], "--probe_task .*nowhere: no such folder"),
    (["--probe_task", "{task}", "--probe_max_eval_samples", "1"], "--probe_max_eval_samples must be at least 2"),
    (["--metric_for_best_model", "probe_macro_f1", "--load_best_model_at_end", "true"],
     "--metric_for_best_model probe_macro_f1 is a probe score: add --probe_task"),
    (["--probe_task", "{task}", "--metric_for_best_model", "probe_seconds"],
     "--metric_for_best_model probe_seconds: the probe's scores are probe_macro_f1, probe_accuracy, probe_micro_f1"),
    (["--probe_task", "{task}", "--do_eval", "false"], "--probe_task: the probe runs with each evaluation, and this "
                                                       "run has none"),
    (["--probe_task", "{task}", "--validation_split_percentage", "0"], "this run has none"),
])
def test_bad_probe_flags_fail_at_parsing(tmp_path, task_dir, flags, message):
    with pytest.raises(InputError, match=message):
        parse_args(["--output_dir", str(tmp_path / "out"), "--train_file", "a.txt",
                    *[flag.format(task=task_dir) for flag in flags]])


def test_probe_flags_parse_and_default():
    probe_args = parse_args(["--output_dir", "x", "--train_file", "a.txt"])[-2]
    assert not probe_args.enabled and probe_args.probe_pooling == "mean"
    assert (probe_args.probe_max_train_samples, probe_args.probe_max_eval_samples) == (2000, 1000)
    with pytest.raises(InputError, match="--probe_pooling must be one of mean, cls, got 'max'"):
        ProbeArguments(probe_pooling="max")
