"""scripts/benchmarks/compare_finetuning.py: both pipelines end to end on the tiny model, the summary arithmetic, bad flags."""

from __future__ import annotations

import pytest
from helpers import labelled_rows, write_jsonl
from mlm_lab import runs

import scripts.benchmarks.compare_finetuning as compare
from mlm_pretraining.errors import InputError
from scripts.benchmarks.compare_finetuning import COLUMNS, main, parse_args, summarise


@pytest.fixture
def task_files(tmp_path):
    return ["--train_file", write_jsonl(tmp_path / "train.jsonl", labelled_rows(24)),
            "--validation_file", write_jsonl(tmp_path / "dev.jsonl", labelled_rows(9)),
            "--test_file", write_jsonl(tmp_path / "test.jsonl", labelled_rows(12))]


@pytest.mark.slow  # four Python processes, each importing transformers: ~30 s on 2 cores
def test_runs_both_pipelines_per_seed_and_reports_every_field(tmp_path, tiny_model_dir, task_files, capsys,
                                                               monkeypatch):
    out = tmp_path / "runs"
    flags = ["--model_name_or_path", str(tiny_model_dir), *task_files, "--num_train_epochs", "2",
             "--per_device_train_batch_size", "8", "--max_seq_length", "32", "--output_dir", str(out)]
    summary = main([*flags, "--learning_rate", "1e-3", "--seeds", "1", "2"])
    results = summary["results"]
    # Alternating order: stock first for the first seed, ours first for the second.
    assert [(r["variant"], r["seed"]) for r in results] == [("stock", 1), ("ours", 1), ("ours", 2), ("stock", 2)]
    for r in results:
        for _, key, _ in COLUMNS:
            assert r[key] is not None, key
        assert r["minutes"] > 0 and r["s_per_epoch"] > 0 and 0 < r["train_s_per_epoch"] <= r["s_per_epoch"]
        assert r["cpu_s_per_epoch"] > 0
        for key in ("eval_macro_f1", "eval_accuracy", "test_macro_f1", "test_accuracy"):
            assert 0.0 <= r[key] <= 1.0
    stock = next(r for r in results if r["variant"] == "stock")
    assert stock["epochs"] == 2  # stock has no early stopping
    assert (out / "ours-seed1" / "all_results.json").is_file() and (out / "stock-seed2").is_dir()

    mean = summary["mean"]
    assert summary["ours_over_stock_s_per_epoch"] == pytest.approx(mean["ours"]["s_per_epoch"]
                                                                   / mean["stock"]["s_per_epoch"])
    printed = capsys.readouterr().out
    for head, _, _ in COLUMNS:
        assert head in printed
    assert "ours/stock time per epoch (mean over seeds)" in printed and "seed 2: ours/stock" in printed
    assert "test_macro_f1 ours - stock, paired by seed (n = 2): " in printed and "95% t interval [" in printed

    # A rerun (here of one of the seeds) reuses the finished runs: no process is started, the rows are the same.
    monkeypatch.setattr(runs.subprocess, "Popen", lambda *a, **k: pytest.fail("a finished run was rerun"))
    again = main([*flags, "--learning_rate", "1e-3", "--seeds", "2"])
    assert again["results"] == [r for r in results if r["seed"] == 2][::-1]  # seed 2 alone starts with stock
    # Other settings in the same folder would mislabel a row: refused, naming what differs.
    with pytest.raises(InputError, match=r"stock-seed1 holds a finished stock run with other settings "
                                         r"\(--learning_rate\)"):
        main([*flags, "--learning_rate", "2e-3", "--seeds", "1"])


def test_summary_ratios_and_differences():
    def row(variant, seed, s_per_epoch, f1):
        return {"variant": variant, "seed": seed, "minutes": s_per_epoch / 10, "s_per_epoch": s_per_epoch,
                "train_s_per_epoch": s_per_epoch / 2, "cpu_s_per_epoch": s_per_epoch, "eval_macro_f1": f1,
                "eval_accuracy": 0.5, "test_macro_f1": f1, "test_accuracy": 0.5}

    summary = summarise([row("stock", 1, 60.0, 0.40), row("ours", 1, 20.0, 0.44),
                         row("ours", 2, 40.0, 0.46), row("stock", 2, 100.0, 0.42)])
    assert summary["per_seed_ratio"][1]["s_per_epoch"] == pytest.approx(1 / 3)
    assert summary["per_seed_ratio"][2]["s_per_epoch"] == pytest.approx(0.4)
    assert summary["ours_over_stock_s_per_epoch"] == pytest.approx(30 / 80)  # ratio of the mean times
    assert summary["test_macro_f1_difference"] == pytest.approx(0.04)
    # Paired by seed: differences +0.04 and +0.04, no spread, so the interval is the point.
    paired = summary["paired_difference"]["test_macro_f1"]
    assert paired["mean"] == pytest.approx(0.04) and paired["half_width"] == pytest.approx(0.0, abs=1e-12)
    assert paired["n"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "1", "1"], "--seeds must be distinct"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be positive"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be positive"),
        (["--warmup_ratio", "1"], r"--warmup_ratio must be in \[0, 1\)"),
        (["--max_seq_length", "4"], "--max_seq_length must be at least 8"),
        (["--max_train_samples", "0"], "--max_train_samples must be a positive integer"),
        (["--max_steps", "0"], "--max_steps must be a positive integer"),
        (["--profile_steps", "0"], "--profile_steps must be at least 1"),
        (["--test_file", "missing.jsonl"], "--test_file: no such file 'missing.jsonl'"),
    ],
)
def test_bad_flags_name_the_flag(task_files, extra, message):
    with pytest.raises(InputError, match=message):
        parse_args([*task_files, *extra])


def test_a_default_file_missing_from_the_clone_names_the_flag(tmp_path, task_files, monkeypatch):
    missing = tmp_path / "shared" / "data" / "citation_intent" / "dev.jsonl"
    monkeypatch.setitem(compare.DEFAULT_FILES, "validation_file", missing)
    with pytest.raises(InputError, match=f"^--validation_file defaults to {missing}, the repository's shared test "
                                         "data beside the clone, which is not here: give --validation_file with a "
                                         "file of your own.$"):
        parse_args(task_files[:2] + task_files[4:])  # --train_file and --test_file given, not --validation_file


def test_a_failed_run_raises_naming_its_log_and_keeps_the_temporary_folder(tmp_path, task_files, monkeypatch):
    monkeypatch.setattr(compare.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "scratch"))
    with pytest.raises(runs.ChildRunFailed) as info:  # a child's error, one message: no traceback of the parent's
        main(["--model_name_or_path", str(tmp_path / "no-model"), *task_files, "--max_steps", "1"])
    log = tmp_path / "scratch" / "stock-seed1" / runs.LOG_FILE
    message = str(info.value)
    assert message.startswith(f"compare_finetuning.py failed (exit status 1), running in {log.parent}.")
    assert f"log: {log}" in message and log.is_file()  # kept for reading, though the folder was a temporary one
    assert message.splitlines()[-1] == "    " + log.read_text().splitlines()[-1].strip()  # the child's own error
    assert "no-model" in message.splitlines()[-1]


def test_profile_trains_warm_up_and_profiled_steps_only(task_files):
    args = parse_args([*task_files, "--profile", "--profile_warmup_steps", "2", "--profile_steps", "5"])
    assert args.max_steps == 7


@pytest.mark.slow  # two Python processes, each importing transformers
def test_profile_reports_both_pipelines_op_classes(tmp_path, tiny_model_dir, task_files, capsys):
    from mlm_lab.profiling import MATMUL, OP_CLASSES

    summary = main(["--model_name_or_path", str(tiny_model_dir), *task_files, "--per_device_train_batch_size", "4",
                    "--max_seq_length", "32", "--profile", "--profile_warmup_steps", "1", "--profile_steps", "2",
                    "--seeds", "1", "2"])
    assert [p["variant"] for p in summary["profiles"]] == ["stock", "ours"]  # one seed is enough to profile
    for profile in summary["profiles"]:
        seconds = profile["op_class_seconds"]
        assert set(seconds) == set(OP_CLASSES) and seconds[MATMUL] > 0
        assert sum(seconds.values()) == pytest.approx(profile["step_seconds"], rel=1e-6)
    printed = capsys.readouterr().out
    assert next(line for line in printed.splitlines() if "total" in line).count("100.0%") == 2
