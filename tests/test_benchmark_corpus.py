"""scripts/benchmarks/benchmark_corpus.py: a tiny run of every measurement, reporting each figure and writing the JSON."""

from __future__ import annotations

import ast
import json

import pytest

from scripts.benchmarks import benchmark_corpus


def test_repeated_text_is_cut_at_a_line_end(tmp_path):
    source = tmp_path / "s.txt"
    source.write_text("alpha beta\ngamma\n")
    path = benchmark_corpus.repeated_text(str(source), 100 / 2**20, tmp_path / "c.txt")
    text = path.read_text()
    assert text.endswith("\n") and len(text) <= 100 and text.startswith("alpha beta\ngamma\nalpha beta\n")
    assert len(text) > 100 - len("alpha beta\ngamma\n")


@pytest.mark.slow
def test_benchmark_corpus_measures_everything_on_a_small_corpus(tiny_model_dir, tmp_path):
    summary = benchmark_corpus.main(["--corpus_mb", "0.1", "--measure_mb", "0.05", "--in_memory_mb", "0.05",
                                     "--model_name_or_path", str(tiny_model_dir), "--max_seq_length", "32",
                                     "--work_dir", str(tmp_path), "--workers", "2"])
    names = [row["measurement"] for row in summary["results"]]
    assert len(names) == 8
    assert names[3:6] == ["first step: in memory, first 0.05 MB, fresh cache", "first step: --streaming",
                          "first step: --tokenized_dataset"]
    prepares = [row for row in summary["results"] if row["measurement"].startswith("prepare_corpus")]
    assert [row["workers"] for row in prepares] == [1, 2, 2] and all(row["mb_per_s"] > 0 for row in prepares)
    assert prepares[0]["blocks"] == prepares[1]["blocks"] < prepares[2]["blocks"]
    assert all(row["seconds"] > 0 for row in summary["results"])
    replay, seek = summary["results"][-2:]
    assert "replay" in replay["measurement"] and "seek" in seek["measurement"]
    assert replay["depth_mb"] == seek["depth_mb"] > 0.05  # the same place, deep into the 0.1 MB corpus
    assert json.loads((tmp_path / "benchmark_corpus.json").read_text())["results"] == json.loads(
        json.dumps(summary["results"], default=str))


@pytest.mark.slow
def test_a_step_is_recognised_by_its_log_line_not_by_the_arguments_dump(tiny_model_dir, corpus, tmp_path):
    # run_mlm.py prints its TrainingArguments first; their include_for_metrics=['loss'] once passed for a step and
    # made every "time to the first step" the time to that dump. A real run, stopped where the benchmark stops it.
    args = benchmark_corpus.parse_args(["--model_name_or_path", str(tiny_model_dir), "--batch_size", "4",
                                        "--timeout", "300"])
    flags = benchmark_corpus.run_flags(args, tmp_path / "run", train_file=corpus, max_seq_length=32,
                                       preprocessing_num_workers=1)
    log = tmp_path / "run.log"
    assert benchmark_corpus.time_to_first_step(args, flags, log, tmp_path / "cache") > 0
    lines = log.read_text().splitlines()
    assert lines[-1].startswith("{"), f"stopped at {lines[-1]!r}, not at a step's log"
    step = ast.literal_eval(lines[-1])  # the line it stopped at: the first training step's log
    assert isinstance(step, dict) and {"loss", "grad_norm", "learning_rate", "epoch"} <= set(step)
    assert not any(line.startswith("{") for line in lines[:-1])  # no step before it
    dump = [line for line in lines[:-1] if "include_for_metrics=" in line]
    assert dump and "'loss'" in dump[0]  # the trap is in the real output, earlier, and was not taken for a step
