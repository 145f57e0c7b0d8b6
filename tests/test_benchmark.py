"""scripts/benchmark.py: its FLOP count, and a tiny run of the whole comparison that must report every field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SHARED_DATA
from transformers import BertConfig, BertForMaskedLM

from scripts import benchmark


def test_flops_per_token_of_minilm_shape_is_about_80_million():
    # MiniLM: 6 layers, 384 wide, 1536 FFN, 30,522 tokens; the estimate is ~80 MFLOP per training token.
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536)
    with torch.device("meta"):
        model = BertForMaskedLM(config)
    encoder = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    head = 384 * 384 + 384 * 30522
    expected = 3 * (2 * encoder + 4 * 128 * 384 * 6 + 2 * head * 0.15)
    assert benchmark.training_flops_per_token(model, 128) == pytest.approx(expected)
    assert 75e6 < expected < 82e6


def test_matmul_peak_is_a_plausible_rate():
    peak = benchmark.matmul_peak_flops(torch.float32, torch.device("cpu"), seconds=0.2, shapes=[(128, 128, 128)])
    assert 1e8 < peak < 1e14


@pytest.mark.slow
def test_benchmark_runs_stock_and_ours_and_reports_every_field(tiny_model_dir, tmp_path):
    train, held_out = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text((SHARED_DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:12000], encoding="utf-8")
    held_out.write_text((SHARED_DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--model_name_or_path", str(tiny_model_dir),
               "--train_file", str(train), "--validation_file", str(held_out), "--max_seq_length", "32",
               "--batch_size", "4", "--max_steps", "3", "--warmup_steps", "1", "--max_eval_samples", "8",
               "--preprocessing_num_workers", "1", "--preprocess_mb", "0.05", "--output_dir", str(tmp_path),
               "--repeats", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["variant"] for r in summary["results"]] == ["stock", "ours"]
    for result in summary["results"]:
        assert result["steps"] == 3 and result["timed_steps"] == 2
        for key in ("train_tokens_per_s", "eval_tokens_per_s", "peak_memory_mb", "train_flops_per_token",
                    "matmul_peak_gflops", "compute_share"):
            assert result[key] > 0, key
        assert 1 < result["eval_loss"] < 10
    # Two alternating rounds: stock, ours, stock, ours; figures are medians of the rounds, with their range.
    assert [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("--- ")][:4] == [
        "--- stock", "--- ours", "--- stock", "--- ours"]
    ratio = summary["ratios"]["ours/stock"]
    assert set(ratio) == {"train_tokens_per_s", "eval_tokens_per_s", "peak_memory", "eval_loss_difference",
                          "compute_share_ours", "rounds"}
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
        assert 0.05 <= result["megabytes"] < 0.07 and result["mb_per_s"] > 0 and result["workers"] == 1
    # Both cut the same text into blocks of 32; ours holds 5 % out for evaluation and puts [CLS]/[SEP] per block
    # rather than per line, so the counts are close but not equal.
    assert abs(ours["blocks"] - stock["blocks"]) / stock["blocks"] < 0.1
    assert stock["cached_seconds"] is None and 0 < ours["cached_seconds"]
    assert summary["ratios"]["preprocessing ours/stock"]["mb_per_s"] > 0 and "| pipeline |" in done.stdout
