"""mlm_pretraining/speed/cpu_memory.py: after keep_freed_memory() a freed block is reused without new page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO
from helpers import labelled_rows, make_trainer, write_jsonl

from mlm_pretraining import speed

# Allocates and fills a 48 MiB tensor (above glibc's largest default mmap threshold, 32 MiB) 16 times and prints
# the minor page faults of each round.
PROBE = """
import json, resource, sys, torch
from mlm_pretraining.speed.cpu_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(12 * 2**20)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def probe(mode: str) -> dict:
    # Without glibc's per-thread cache (tcache) of small free chunks. torch asks for 64-byte-aligned blocks
    # (posix_memalign), which glibc carves from a chunk 96 bytes larger and gives the slack back as small free chunks;
    # the tcache keeps up to 7 free chunks per size "in use", so they are not merged back into the 48 MiB block
    # beside them. Until the slack's cache bins are full, the freed block is 96 bytes short of the next request and
    # the heap grows by a fresh block (12,288 faults). How many rounds that takes depends on what the process had in
    # those bins already (the CI failure: [12288, 12288, 0, 0, 0] in rounds 12-16; glibc.malloc.tcache_count=12 gives
    # that here), not on keep_freed_memory; with the cache off the heap settles in round 2 or 3, every time.
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.tcache_count=0"]))
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GLIBC_TUNABLES": tunables})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = probe("default"), probe("keep")
    pages = 48 * 2**20 // 4096
    # glibc's default: each 48 MiB block is a fresh mmap, every page faulted in again.
    assert all(f >= pages * 0.9 for f in default["faults"]), default
    assert kept["kept"] is True
    # Kept: once the heap holds the block (round 1, or 2 when start-up allocations pinned the first), every round
    # takes it back from the heap without faulting a page in.
    assert all(f < pages * 0.05 for f in kept["faults"][3:]), kept


def test_build_trainer_keeps_freed_memory_on_the_cpu_unless_switched_off(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(speed, "keep_freed_memory", lambda: calls.append(1) or True)
    make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "off", "--keep_freed_memory", "false")
    assert calls == []
    make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "on")
    assert calls == [1]


def run_in_subprocess(script: str, argv: list[str]) -> dict:
    """``script``'s main(argv) in a fresh process (the memory setting is process-wide); its returned metrics."""
    code = (f"import json, runpy, sys; sys.argv = [{script!r}] + {argv!r}; "
            f"main = runpy.run_path({script!r})['main']; print('METRICS ' + json.dumps(main(sys.argv[1:])))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("METRICS "))
    return json.loads(line[len("METRICS "):])


@glibc_only
@pytest.mark.slow  # four processes, each importing transformers
def test_training_and_fine_tuning_give_the_same_results_with_freed_memory_kept(tmp_path, tiny_model_dir, corpus):
    # Reused memory holds old values where a fresh page holds zeros: a result that changed would mean some code
    # reads memory it never wrote.
    mlm = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--max_seq_length", "32",
           "--per_device_train_batch_size", "4", "--max_steps", "4", "--report_to", "none", "--save_strategy", "no",
           "--preprocessing_num_workers", "1", "--seed", "5"]
    train = write_jsonl(tmp_path / "train.jsonl", labelled_rows(24))
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled_rows(9))
    fine_tune = ["--model_name_or_path", str(tiny_model_dir), "--train_file", train, "--validation_file", dev,
                 "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
                 "--seed", "5", "--use_cpu", "true"]
    for script, argv, keys in ((REPO / "run_mlm.py", mlm, ("train_loss", "eval_loss", "eval_accuracy")),
                               (REPO / "scripts" / "run_classification.py", fine_tune,
                                ("train_loss", "eval_loss", "eval_macro_f1"))):
        runs = [run_in_subprocess(str(script), argv + ["--output_dir", str(tmp_path / f"{script.stem}-{keep}"),
                                                       "--keep_freed_memory", keep])
                for keep in ("false", "true")]
        for key in keys:
            assert runs[0][key] == runs[1][key], (script.name, key)
        assert runs[0]["train_loss"] > 0
