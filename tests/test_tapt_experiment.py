"""scripts/experiments/tapt_experiment.py: the tables, and the experiment end to end on a tiny
model and task (both arms, perplexities before and after, the chart, reuse of finished runs)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from helpers import write_jsonl
from mlm_lab import runs, tapt_runs
from safetensors.torch import load_file

import scripts.experiments.tapt_experiment as tapt
from mlm_pretraining.errors import InputError
from scripts.experiments.tapt_experiment import (
    main,
    perplexity_table,
    result_table,
)

RUNS = {"base": {1: {"eval_macro_f1": 0.5, "test_macro_f1": 0.4, "test_micro_f1": 0.6},
                 2: {"eval_macro_f1": 0.7, "test_macro_f1": 0.6, "test_micro_f1": 0.8},
                 3: {"eval_macro_f1": 0.6, "test_macro_f1": 0.5, "test_micro_f1": 0.7}},
        "tapt": {1: {"eval_macro_f1": 0.6, "test_macro_f1": 0.5, "test_micro_f1": 0.6},
                 2: {"eval_macro_f1": 0.7, "test_macro_f1": 0.8, "test_micro_f1": 0.8},
                 3: {"eval_macro_f1": 0.65, "test_macro_f1": 0.6, "test_micro_f1": 0.75}}}


def test_summary_table_uses_paired_differences():
    table, summary = result_table(RUNS, [1, 2, 3])
    # test macro-F1 differences +10, +20, +10: mean 13.33, sd 5.7735, half-width 4.302653 * 5.7735 / sqrt(3).
    difference = summary["difference"]["test_macro_f1"]
    assert difference["mean"] == pytest.approx(13.333333)
    assert difference["half_width"] == pytest.approx(14.342176, rel=1e-5)
    assert summary["tapt"]["test_macro_f1"]["mean"] == pytest.approx(63.333333)
    assert summary["base"]["eval_macro_f1"]["std"] == pytest.approx(10.0)
    assert "| base model | 60.00 ± 10.00 | 50.00 ± 10.00 | 70.00 ± 10.00 |" in table
    # dev differences +10, 0, +5: interval [-7.42, +17.42] includes 0, no star; test micro-F1 0, 0, +5.
    assert ("| TAPT − base, paired by seed, 95% CI | +5.00 ± 12.42 [-7.42, +17.42] | +13.33 ± 14.34 [-1.01, +27.68] "
            "| +1.67 ± 7.17 [-5.50, +8.84] |") in table
    table, _ = result_table(RUNS, [1])
    assert "+10.00 (one seed: no interval)" in table


def test_interval_excluding_zero_is_starred():
    runs = {"base": {s: {"eval_macro_f1": 0.5, "test_macro_f1": 0.5, "test_micro_f1": 0.5} for s in (1, 2, 3)},
            "tapt": {s: {"eval_macro_f1": 0.6 + s / 100, "test_macro_f1": 0.5, "test_micro_f1": 0.5}
                     for s in (1, 2, 3)}}
    table, summary = result_table(runs, [1, 2, 3])
    assert "+12.00 ± 2.48* [+9.52, +14.48]" in table
    assert summary["difference"]["eval_macro_f1"]["low"] == pytest.approx(12 - 4.302653 * 1 / math.sqrt(3))


def test_perplexity_table_reads_the_named_sets():
    results = {"eval_before_task_perplexity": 30.0, "eval_task_perplexity": 12.5,
               "eval_before_general_perplexity": 20.0, "eval_general_perplexity": 24.25}
    table, found = perplexity_table(results, {"eval_task_perplexity": 25.0, "eval_general_perplexity": 21.0})
    assert found == {"task": {"before": 30.0, "after_head_warmup": 25.0, "after": 12.5},
                     "general": {"before": 20.0, "after_head_warmup": 21.0, "after": 24.25}}
    assert "| general text (forgetting) | 20.00 | 21.00 | 24.25 |" in table
    assert "| task dev text | 30.00 | – | 12.50 |" in perplexity_table(results)[0]


@pytest.mark.slow
def test_experiment_runs_both_arms_and_reuses_finished_runs(tmp_path, headless_model_dir, task_dir, corpus, capsys,
                                                            monkeypatch):
    out = tmp_path / "exp"
    argv = ["--task_dir", str(task_dir), "--output_dir", str(out), "--model_name_or_path", str(headless_model_dir),
            "--seeds", "1", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--tapt_max_steps", "3",
            "--tapt_batch_size", "4", "--tapt_max_seq_length", "32", "--tapt_max_eval_samples", "4",
            "--learning_rate", "1e-3", "--general_text", str(corpus), "--head_warmup_steps", "2",
            # A TAPT step size that moves the tiny encoder measurably: at 1e-4 for 3 steps the arms' dev losses can
            # agree to float32 precision, depending only on the fine-tuning batch order.
            "--tapt_learning_rate", "1e-2"]
    report = main(argv)
    assert set(report["runs"]) == {"base", "tapt"} and set(report["runs"]["tapt"]) == {"1", "2"}
    for arm in ("base", "tapt"):
        for seed in ("1", "2"):
            assert report["runs"][arm][seed]["test_samples"] == 12
    # The arms start from different weights, so their scores are those of different models.
    assert report["runs"]["base"]["1"]["eval_loss"] != report["runs"]["tapt"]["1"]["eval_loss"]
    tapt_state = json.loads((out / "tapt" / "trainer_state.json").read_text())
    assert tapt_state["global_step"] == 3
    perplexity = report["tapt"]["perplexity"]
    assert set(perplexity) == {"task", "general"}
    assert perplexity["task"]["after"] < perplexity["task"]["before"]  # trained on that very text's task
    # Evaluated when the head warm-up ended (step 2 of 3): the base encoder with a fitted head.
    assert perplexity["general"]["after_head_warmup"] not in (None, perplexity["general"]["before"],
                                                              perplexity["general"]["after"])
    assert report["tapt"]["tokens"] == round(report["tapt"]["train_samples"] * 32 * report["tapt"]["epoch"]) > 0
    assert not list((out / "base-finetune" / "seed1").glob("*.safetensors"))  # weights removed, results kept
    markdown = (out / "results.md").read_text()
    assert "| TAPT − base, paired by seed, 95% CI |" in markdown and markdown in capsys.readouterr().out
    assert "| general text (forgetting) |" in markdown and "| TAPT, then fine-tune |" in markdown
    assert report["launched"] == ["tapt", "base-finetune-seed1", "tapt-finetune-seed1", "base-finetune-seed2",
                                  "tapt-finetune-seed2"]
    minutes = report["minutes"]
    assert minutes["tapt"]["total"] == pytest.approx(minutes["tapt"]["tapt"] + sum(minutes["tapt"]["fine_tune"]
                                                                                   .values()))
    assert minutes["base"]["tapt"] is None and minutes["base"]["total"] > 0
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    def no_process(*args, **kwargs):
        raise AssertionError(f"a finished run was launched again: {args}")

    monkeypatch.setattr(runs.subprocess, "Popen", no_process)
    again = main(argv)  # everything finished: nothing is rerun, the same numbers (and costs) come back
    assert again["launched"] == []
    assert again["summary"] == report["summary"] and again["minutes"] == report["minutes"]
    lever = argv[:]
    lever[lever.index("--tapt_learning_rate") + 1] = "5e-4"
    with pytest.raises(InputError, match=r"holds a finished run with other settings \(--learning_rate\)"):
        main(lever)  # a lever changed: run_mlm.py's --learning_rate


def test_pretrain_flags_pass_the_levers_through(tmp_path, task_dir, corpus):
    (args,) = tapt.parse_args(["--task_dir", str(task_dir), "--output_dir", str(tmp_path), "--general_text",
                               str(corpus), "--mix_train_file", str(corpus), "--mix_share", "0.3",
                               "--head_warmup_steps", "50", "--mlm_probability", "0.2"],
                              groups=(tapt_runs.TaptArguments,))
    flags = tapt_runs.pretrain_flags(args, tapt.task_files(str(task_dir)), tmp_path / "tapt")
    at = flags.index("--validation_file")
    assert flags[at + 1: at + 3] == [f"task={task_dir / 'dev.jsonl'}", f"general={corpus}"]
    assert flags[flags.index("--mix_train_file") + 1] == str(corpus)
    assert flags[flags.index("--mix_share") + 1] == "0.3"
    assert flags[flags.index("--head_warmup_steps") + 1] == "50"
    assert flags[flags.index("--mlm_probability") + 1] == "0.2"
    assert flags[flags.index("--num_train_epochs") + 1] == "40.0"  # the default: long enough to matter
    assert "--overwrite_output_dir" not in flags  # rerun on a stopped run's checkpoint, run_mlm.py resumes from it
    assert args.seeds == [1, 2, 3, 4, 5]


def test_bf16_runs_both_stages_in_bf16_and_leaves_the_default_flags_as_they_were(tmp_path, task_dir):
    files = tapt.task_files(str(task_dir))
    for extra, expected in (([], False), (["--bf16", "True"], True)):
        (args,) = tapt.parse_args(["--task_dir", str(task_dir), "--output_dir", str(tmp_path), "--general_text",
                                   "none", *extra], groups=(tapt_runs.TaptArguments,))
        pretrain = tapt_runs.pretrain_flags(args, files, tmp_path / "tapt")
        fine_tune = tapt_runs.fine_tune_flags(args, files, "base", 1, tmp_path / "ft")
        for flags in (pretrain, fine_tune):  # absent by default: runs recorded before the flag existed still match
            assert ("--bf16" in flags) is expected
            if expected:
                assert flags[flags.index("--bf16") + 1] == "True"


def test_tapt_text_is_the_fine_tuning_subset_or_the_whole_file(tmp_path, task_dir):
    rows = [{"sentence": f"row number {i} of the task", "label": "ab"[i % 2]} for i in range(40)]
    write_jsonl(task_dir / "train.jsonl", rows)
    write_jsonl(task_dir / "dev.jsonl", rows[:6])
    files = tapt.task_files(str(task_dir))
    common = ["--task_dir", str(task_dir), "--output_dir", str(tmp_path), "--text_column_name", "sentence"]
    (args,) = tapt.parse_args([*common, "--max_train_samples", "15"], groups=(tapt_runs.TaptArguments,))
    path = tapt_runs.tapt_train_file(args, files, tmp_path)
    assert path == str(tmp_path / tapt_runs.TAPT_TRAIN_FILE)
    texts = [json.loads(line)["sentence"] for line in open(path, encoding="utf-8")]
    assert len(texts) == len(set(texts)) == 15 and set(texts) < {row["sentence"] for row in rows}
    assert texts != [row["sentence"] for row in rows[:15]]  # a random draw, not the file's first rows
    assert tapt_runs.tapt_train_file(args, files, tmp_path) == path  # the same draw again: the TAPT run is reused
    assert [json.loads(line)["sentence"] for line in open(path, encoding="utf-8")] == texts
    flags = tapt_runs.pretrain_flags(args, files, tmp_path / "tapt", path)
    assert flags[flags.index("--train_file") + 1] == path
    (everything,) = tapt.parse_args([*common, "--max_train_samples", "15", "--tapt_text", "all"],
                                    groups=(tapt_runs.TaptArguments,))
    assert tapt_runs.tapt_train_file(everything, files, tmp_path) == files["train"]
    (full,) = tapt.parse_args(common, groups=(tapt_runs.TaptArguments,))
    assert tapt_runs.tapt_train_file(full, files, tmp_path) == files["train"]
    with pytest.raises(InputError, match="--mix_train_file: no such file or folder"):  # before any run starts
        tapt.parse_args([*common, "--mix_train_file", str(tmp_path / "wiki.txt")], groups=(tapt_runs.TaptArguments,))
    with pytest.raises(InputError, match="--tapt_text must be one of fine_tune, all"):
        tapt.parse_args([*common, "--tapt_text", "subset"], groups=(tapt_runs.TaptArguments,))


def test_task_dir_must_hold_the_three_splits(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(InputError, match="no validation file"):
        main(["--task_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(InputError, match="--seeds must be distinct"):
        main(["--task_dir", str(tmp_path), "--output_dir", "x", "--seeds", "1", "1"])
    with pytest.raises(InputError, match="--general_text 'nowhere.txt' is not a file"):
        main(["--task_dir", str(tmp_path), "--output_dir", "x", "--general_text", "nowhere.txt"])
    with pytest.raises(InputError, match="--head_warmup_steps must be 'auto'"):
        main(["--task_dir", str(tmp_path), "--output_dir", "x", "--head_warmup_steps", "-2"])


def test_arms_split_an_experiment_and_a_run_with_both_reuses_them(tmp_path, headless_model_dir, task_dir, corpus):
    out = tmp_path / "exp"
    settings = ["--task_dir", str(task_dir), "--model_name_or_path", str(headless_model_dir), "--seeds", "1",
                "--max_steps", "2", "--per_device_train_batch_size", "4", "--tapt_max_steps", "2",
                "--tapt_batch_size", "4", "--tapt_max_seq_length", "32", "--tapt_max_eval_samples", "4",
                "--general_text", "none", "--head_warmup_steps", "1"]
    argv = [*settings, "--output_dir", str(out)]
    base_only = main([*argv, "--arms", "base"])
    assert base_only["launched"] == ["base-finetune-seed1"]  # no TAPT run: the base arm does not need one
    assert not (out / "tapt").exists() and not (out / "results.md").exists()
    tapt_only = main([*argv, "--arms", "tapt"])
    assert tapt_only["launched"] == ["tapt", "tapt-finetune-seed1"]
    both = main(argv)
    assert both["launched"] == [] and (out / "results.md").is_file()
    assert both["runs"]["base"]["1"] == base_only["runs"]["base"]["1"]

    # A lever experiment in its own folder, its base arm taken from the first: only TAPT and its fine-tune run.
    lever = main([*settings, "--output_dir", str(tmp_path / "lever"), "--base_runs_dir", str(out),
                  "--tapt_learning_rate", "1e-2"])
    assert lever["launched"] == ["tapt", "tapt-finetune-seed1"]
    assert lever["runs"]["base"]["1"] == base_only["runs"]["base"]["1"]
    assert not (tmp_path / "lever" / "base-finetune").exists()
    assert lever["runs"]["tapt"]["1"]["eval_loss"] != both["runs"]["tapt"]["1"]["eval_loss"]  # another TAPT model
    with pytest.raises(InputError, match="base-finetune/seed1 holds a finished run with other settings"):
        main([*settings, "--output_dir", str(tmp_path / "lever2"), "--base_runs_dir", str(out), "--learning_rate", "1e-3"])


def test_arms_must_name_known_arms(tmp_path, task_dir):
    with pytest.raises(InputError, match="--arms must name one or both of base, tapt"):
        main(["--task_dir", str(task_dir), "--output_dir", str(tmp_path), "--arms", "stock"])


def stopped_tapt_folder(folder, flags_file=None):
    """A TAPT folder as run_mlm.py leaves it when SIGTERM stops it at step 402: a checkpoint, no model of its own, and
    the all_results.json of its before-training evaluation; ``flags_file``: the harness's record of its flags."""
    (folder / "checkpoint-402").mkdir(parents=True)
    (folder / "all_results.json").write_text(json.dumps({"eval_before_task_perplexity": 30.0}))
    if flags_file:
        name, flags = flags_file
        (folder / name).write_text(json.dumps(flags))


def test_a_stopped_tapt_run_is_not_taken_for_finished_and_an_earlier_finished_one_is_adopted(tmp_path, task_dir):
    common = ["--task_dir", str(task_dir), "--output_dir", str(tmp_path)]
    (args,) = tapt.parse_args(common, groups=(tapt_runs.TaptArguments,))
    (other,) = tapt.parse_args([*common, "--tapt_epochs", "20"], groups=(tapt_runs.TaptArguments,))
    files = tapt.task_files(str(task_dir))
    folder = tmp_path / "tapt"
    recorded = tapt_runs.comparable(tapt_runs.pretrain_flags(args, files, folder), folder)  # the same in every folder
    stopped_tapt_folder(folder, (runs.STARTED_FILE, recorded))
    assert tapt_runs.finished(folder, tapt_runs.pretrain_flags(args, files, folder), "eval_task_perplexity") is None  # rerun

    # Folders of the earlier harness: its flags (with --overwrite_output_dir true, without --eval_strategy no
    # --weight_decay 0.0, then run_mlm.py's defaults) and cost in files of their own.
    at, end = recorded.index("--output_dir") + 2, recorded.index("--eval_strategy")
    assert recorded[end:end + 4] == ["--eval_strategy", "no", "--weight_decay", "0.0"]
    earlier = [*recorded[:at], "--overwrite_output_dir", "true", *recorded[at:end], *recorded[end + 4:]]
    stopped = tmp_path / "earlier-stopped"
    stopped_tapt_folder(stopped, (tapt_runs.EARLIER_FLAGS_FILE, earlier))
    assert tapt_runs.finished(stopped, tapt_runs.pretrain_flags(args, files, stopped), "eval_task_perplexity") is None
    assert not (stopped / runs.FINISHED_FILE).exists()
    with pytest.raises(InputError, match=r"earlier-stopped holds a stopped run with other settings "
                                         r"\(--num_train_epochs\)"):  # resuming it would mix two settings
        tapt_runs.finished(stopped, tapt_runs.pretrain_flags(other, files, stopped), "eval_task_perplexity")

    done = tmp_path / "earlier-finished"
    done.mkdir()
    results = {"eval_before_task_perplexity": 30.0, "eval_task_perplexity": 12.0, "train_runtime": 3.0}
    (done / "all_results.json").write_text(json.dumps(results))
    (done / "model.safetensors").write_bytes(b"weights")
    (done / tapt_runs.EARLIER_SECONDS_FILE).write_text(json.dumps({"seconds": 90.5}))
    (done / tapt_runs.EARLIER_FLAGS_FILE).write_text(json.dumps(earlier))
    record = tapt_runs.finished(done, tapt_runs.pretrain_flags(args, files, done), "eval_task_perplexity")
    assert record["result"] == results and record["seconds"] == 90.5
    assert runs.differences(record["settings"], recorded) == []  # the same flags, if not in the same order
    with pytest.raises(InputError, match=r"earlier-finished holds a finished run with other settings "
                                         r"\(--num_train_epochs\)"):
        tapt_runs.finished(done, tapt_runs.pretrain_flags(other, files, done), "eval_task_perplexity")


def tapt_weights(folder):
    return load_file(folder / "tapt" / "model.safetensors")


@pytest.mark.slow  # five Python processes, each importing transformers: about a minute on 2 cores
def test_a_tapt_run_stopped_by_sigterm_resumes_and_ends_as_an_uninterrupted_one(tmp_path, headless_model_dir, task_dir):
    common = ["--task_dir", str(task_dir), "--model_name_or_path", str(headless_model_dir), "--seeds", "1",
              "--arms", "tapt", "--max_steps", "2", "--per_device_train_batch_size", "4", "--tapt_batch_size", "4",
              "--tapt_max_seq_length", "32", "--tapt_max_eval_samples", "4", "--general_text", "none",
              "--head_warmup_steps", "2", "--tapt_learning_rate", "1e-2",
              # Steps enough that the SIGTERM, sent once step 10 is logged, lands well before the end.
              "--tapt_max_steps", "150"]
    reference = main([*common, "--output_dir", str(tmp_path / "uninterrupted")])

    # As a scheduler stops a job: SIGTERM to its process group, the experiment and its run_mlm.py child, once the
    # child has logged a training step. The experiment dies at once; run_mlm.py ends its step and saves a checkpoint.
    out = tmp_path / "stopped"
    log = out / "tapt" / runs.LOG_FILE
    experiment = subprocess.Popen([sys.executable, str(REPO / "scripts" / "experiments" / "tapt_experiment.py"),
                                   *common, "--output_dir", str(out)], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (log.is_file() and "{'loss'" in log.read_text()):
        assert experiment.poll() is None and time.time() < deadline, "no training step was logged"
        time.sleep(0.01)
    os.killpg(experiment.pid, signal.SIGTERM)
    assert experiment.wait(timeout=60) == -signal.SIGTERM
    while True:  # until the orphaned child has exited too
        try:
            os.killpg(experiment.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "run_mlm.py did not stop"
        time.sleep(0.05)
    (checkpoint,) = (out / "tapt").glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 10 <= step < 150 and f"Stopped by SIGTERM at step {step}" in log.read_text()
    assert (out / "tapt" / "all_results.json").is_file()  # the before-training evaluation's: not a finished run
    assert not (out / "tapt" / runs.FINISHED_FILE).exists() and not (out / "tapt" / "model.safetensors").exists()

    again = main([*common, "--output_dir", str(out)])
    assert again["launched"] == ["tapt", "tapt-finetune-seed1"]
    attempts = log.read_text().split("\n=== ")
    assert len(attempts) == 2 and f"Resuming from {checkpoint}" in attempts[1]  # from step `step`, not from 0
    # The resumed run repeats the uninterrupted one's arithmetic (RNG states restored, masks a function of (seed,
    # epoch, tokens), the same batches), so it ends at the same weights up to float32 round-off; test_resume.py holds
    # run_mlm.py's own resume to the same 1e-6.
    resumed, uninterrupted = tapt_weights(out), tapt_weights(tmp_path / "uninterrupted")
    assert resumed.keys() == uninterrupted.keys()
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) <= 1e-6
    scores = ("eval_loss", "eval_macro_f1", "test_loss", "test_macro_f1", "test_micro_f1")
    assert {k: again["runs"]["tapt"]["1"][k] for k in scores} == pytest.approx(
        {k: reference["runs"]["tapt"]["1"][k] for k in scores}, abs=1e-5)
