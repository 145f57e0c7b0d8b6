"""mlm_pretraining/cpu_memory.py: after keep_freed_memory() a freed block is reused without new page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from mlm_pretraining import trainer as trainer_module

# Allocates and fills a 48 MiB tensor (above glibc's largest default mmap threshold, 32 MiB) 12 times and prints
# the minor page faults of the last three rounds (the heap takes a few rounds to hold enough free blocks).
PROBE = """
import json, resource, sys, torch
from mlm_pretraining.cpu_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(12 * 2**20)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[-3:]}))
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = probe("default"), probe("keep")
    pages = 48 * 2**20 // 4096
    # glibc's default: each 48 MiB block is a fresh mmap, every page faulted in again.
    assert all(f >= pages * 0.9 for f in default["faults"]), default
    assert kept["kept"] is True
    assert all(f < pages * 0.05 for f in kept["faults"]), kept


def test_build_trainer_keeps_freed_memory_on_the_cpu_unless_switched_off(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                          monkeypatch):
    from test_trainer import make_trainer

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "off", "--keep_freed_memory", "false")
    assert calls == []
    make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path / "on")
    assert calls == [1]
