"""scripts/benchmarks/benchmark.py: its FLOP count, and a tiny run of the whole comparison that must report every field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SHARED_DATA
from mlm_lab import runs
from transformers import BertConfig, BertForMaskedLM

from mlm_pretraining.errors import InputError
from scripts.benchmarks import benchmark


def wikitext_slices(folder):
    """The first 12,000 characters of WikiText-2 valid (training) and 6,000 of test (held out), as files."""
    train, held_out = folder / "train.txt", folder / "test.txt"
    train.write_text((SHARED_DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:12000], encoding="utf-8")
    held_out.write_text((SHARED_DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return train, held_out


def test_flops_per_token_of_minilm_shape_is_about_80_million():
    # MiniLM: 6 layers, 384 wide, 1536 FFN, 30,522 tokens; the estimate is ~80 MFLOP per training token.
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536)
    with torch.device("meta"):
        model = BertForMaskedLM(config)
    encoder = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    head = 384 * 384 + 384 * 30522
    expected = 3 * (2 * encoder + 4 * 128 * 384 * 6 + 2 * head * 0.15)
    assert benchmark.training_flops_per_token(model, 128) == pytest.approx(expected)  # 77.9 M


def test_matmul_peak_is_the_best_shapes_flops_over_its_measured_time(monkeypatch):
    # A clock that advances 0.25 s per reading: each shape gets 1 s, i.e. 3 products between the readings at
    # 0.25, 0.5 and 0.75 s, and its time is measured as 1.25 s (the last reading is after the loop).
    readings = iter(range(1000))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(readings) * 0.25)
    peak = benchmark.matmul_peak_flops(torch.float32, torch.device("cpu"), seconds=2.0,
                                       shapes=[(8, 16, 32), (64, 16, 8)])
    assert peak == pytest.approx(2 * 64 * 16 * 8 * 3 / 1.25)


@pytest.mark.slow
def test_benchmark_runs_stock_and_ours_and_reports_every_field(tiny_model_dir, tmp_path):
    train, held_out = wikitext_slices(tmp_path)
    out = tmp_path / "not" / "yet"  # made with its parents
    command = [sys.executable, str(REPO / "scripts" / "benchmarks" / "benchmark.py"), "--model_name_or_path", str(tiny_model_dir),
               "--train_file", str(train), "--validation_file", str(held_out), "--max_seq_length", "32",
               "--batch_size", "4", "--max_steps", "3", "--warmup_steps", "1", "--max_eval_samples", "8",
               "--preprocessing_num_workers", "1", "--preprocess_mb", "0.05", "--output_dir", str(out),
               "--repeats", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
                               "PYTHONPATH": str(REPO)})  # this checkout, not whichever one is installed
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["variant"] for r in summary["results"]] == ["stock", "ours"]
    assert benchmark.RESULT_PREFIX in (out / "ours-round2" / runs.LOG_FILE).read_text()  # each run's output kept
    flops = benchmark.training_flops_per_token(BertForMaskedLM.from_pretrained(tiny_model_dir), 32)
    for result in summary["results"]:
        assert result["steps"] == 3 and result["timed_steps"] == 2
        assert result["train_flops_per_token"] == pytest.approx(flops)
        assert 1 < result["eval_loss"] < 10
        for run in result["runs"]:  # each repeat's own figures
            peak = run["matmul_peak_gflops"] * 1e9
            assert run["compute_share"] == pytest.approx(run["train_tokens_per_s"] * flops / peak)
            assert run["compute_limit_tokens_per_s"] == pytest.approx(peak / flops)
            assert 50 < run["peak_memory_mb"] < 20_000  # megabytes, from ru_maxrss in kilobytes on Linux
    # Two alternating rounds: stock, ours, stock, ours; figures are medians of the rounds, with their range.
    assert [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("--- ")][:4] == [
        "--- stock", "--- ours", "--- stock", "--- ours"]
    ratio = summary["ratios"]["ours/stock"]
    assert set(ratio) == {"train_tokens_per_s", "eval_tokens_per_s", "peak_memory", "eval_loss_difference",
                          "compute_share_ours", "rounds"}
    stock, ours = summary["results"]
    for i, one in enumerate(ratio["rounds"]):  # each round's ratio from that round's two runs
        assert one["train_tokens_per_s"] == pytest.approx(
            ours["runs"][i]["train_tokens_per_s"] / stock["runs"][i]["train_tokens_per_s"])
    per_round = [r["train_tokens_per_s"] for r in ratio["rounds"]]
    assert len(per_round) == 2 and ratio["train_tokens_per_s"] == pytest.approx(sum(per_round) / 2)
    for result in summary["results"]:
        low, high = result["train_tokens_per_s_range"]
        assert result["repeats"] == 2 and low <= result["train_tokens_per_s"] <= high
        assert result["train_tokens_per_s"] == pytest.approx((low + high) / 2)
    # Same start, same data, same masks, 3 small steps: the two pipelines end at nearly the same loss.
    assert abs(ratio["eval_loss_difference"]) < 0.05
    assert "| variant |" in done.stdout and "ours/stock: training" in done.stdout
    stock, ours = summary["preprocessing"]
    assert (stock["pipeline"], ours["pipeline"]) == ("stock", "ours")
    for result in (stock, ours):
        assert 0.05 <= result["megabytes"] < 0.07 and result["workers"] == 1
        assert result["mb_per_s"] == pytest.approx(result["megabytes"] / result["seconds"])
    # Both cut the same text into blocks of 32; ours holds 5 % out for evaluation and puts [CLS]/[SEP] per block
    # rather than per line, so the counts are close but not equal.
    assert abs(ours["blocks"] - stock["blocks"]) / stock["blocks"] < 0.1
    assert stock["cached_seconds"] is None and isinstance(ours["cached_seconds"], float)  # only ours caches
    speedup = summary["ratios"]["preprocessing ours/stock"]["mb_per_s"]
    assert speedup == pytest.approx(ours["mb_per_s"] / stock["mb_per_s"])
    assert "| pipeline |" in done.stdout


def test_repeated_figures_are_shown_as_median_and_range():
    runs = [{"variant": "ours", "precision": "fp32", "train_tokens_per_s": tps, "eval_tokens_per_s": 3000.0,
             "peak_memory_mb": 2000.0, "eval_loss": loss, "compute_share": 0.7}
            for tps, loss in ((1000.0, 6.5), (1300.0, 6.6), (1100.0, 6.55))]
    shown = benchmark.with_ranges(benchmark.median_result(runs))
    assert shown["train_tokens_per_s"] == "1,100 [1,000–1,300]"
    assert shown["eval_loss"] == "6.5500 [6.5000–6.6000]"
    assert shown["eval_tokens_per_s"] == "3,000 [3,000–3,000]"
    assert benchmark.with_ranges(runs[0])["train_tokens_per_s"] == "1,000"  # a single run: no range


def test_missing_output_dir_is_made_with_its_parents_and_holds_each_runs_folder(tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("a line of text\n")
    out = tmp_path / "not" / "yet"
    folders = []

    def fake_run(variant, argv, folder, env=None):  # the parent's side only: no child process
        folders.append(folder)
        return {"variant": variant, "pipeline": variant, "device": "cpu", "precision": "fp32", "megabytes": 1.0,
                "mb_per_s": 1.0, "train_flops_per_token": 1.0, "matmul_peak_gflops": 1.0,
                "compute_limit_tokens_per_s": 1.0}

    monkeypatch.setattr(benchmark, "run_child", fake_run)
    benchmark.main(["--output_dir", str(out), "--variants", "stock", "--preprocess_mb", "0.001",
                    "--train_file", str(text), "--validation_file", str(text)])
    assert folders[0] == out / "stock-round1"
    assert [f.parent.parent for f in folders[1:]] == [out, out] and [f.name for f in folders[1:]] == [
        "prep_stock", "prep_ours"]
    assert list(out.glob("preprocess-*/preprocess-0.001MB.txt"))  # the text both preprocessing runs read


def test_a_default_file_missing_from_the_clone_names_the_flag(tmp_path, monkeypatch):
    assert SHARED_DATA == REPO.parent / "shared" / "data"  # beside the clone, named once (mlm_lab.paths)
    missing = tmp_path / "shared" / "data" / "wikitext-2" / "valid.txt"
    monkeypatch.setitem(benchmark.DEFAULT_FILES, "train_file", missing)
    with pytest.raises(InputError, match=f"^--train_file defaults to {missing}, the repository's shared test data "
                                         "beside the clone, which is not here: give --train_file with a file of your "
                                         "own.$"):
        benchmark.parse_args(["--validation_file", __file__])
    with pytest.raises(InputError, match="^--train_file: no such file 'elsewhere.txt'.$"):  # a user's own file
        benchmark.parse_args(["--train_file", "elsewhere.txt", "--validation_file", __file__])


def test_precision_comes_from_the_variant_name():
    assert [benchmark.precision_of(v) for v in ("stock", "ours_bf16", "stock_fp16", "ours_bf16_nodropout")] == [
        "fp32", "bf16", "fp16", "bf16"]
    args = benchmark.parse_args(["--variants", "stock_fp16,ours_fp16,ours"])
    if not torch.cuda.is_available():
        variants, notes = benchmark.choose_variants(args)
        assert variants == ["ours"] and "fp16 variants were left out" in notes[0]


@pytest.mark.slow
def test_profile_mode_reports_each_variants_op_classes(tiny_model_dir, tmp_path):
    train, held_out = wikitext_slices(tmp_path)
    command = [sys.executable, str(REPO / "scripts" / "benchmarks" / "benchmark.py"), "--model_name_or_path", str(tiny_model_dir),
               "--train_file", str(train), "--validation_file", str(held_out), "--max_seq_length", "32",
               "--batch_size", "4", "--warmup_steps", "1", "--profile", "--profile_steps", "2",
               "--preprocessing_num_workers", "1", "--output_dir", str(tmp_path / "profiles")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
                               "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    from mlm_lab.profiling import MATMUL, OP_CLASSES

    assert [p["variant"] for p in summary["profiles"]] == ["stock", "ours"]
    for profile in summary["profiles"]:
        seconds = profile["op_class_seconds"]
        assert set(seconds) == set(OP_CLASSES) and profile["profiled_steps"] == 2
        assert sum(seconds.values()) == pytest.approx(profile["step_seconds"], rel=1e-6)  # shares sum to 100 %
        assert seconds[MATMUL] > 0
    total = next(line for line in done.stdout.splitlines() if line.startswith("|") and "total" in line)
    assert total.count("100.0%") == 2
