"""scripts/benchmarks/gpu_benchmark.sh: without a GPU it stops at once with status 2, says why, and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "benchmarks" / "gpu_benchmark.sh"


def run(tmp_path, nvidia_smi_status: int | None) -> subprocess.CompletedProcess:
    """The script with PATH holding only a fake nvidia-smi (exiting with ``nvidia_smi_status``; None: no nvidia-smi)
    and torch seeing no CUDA device."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi_status is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\necho 'GPU 0: Fake'\nexit {nvidia_smi_status}\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    return subprocess.run(["/bin/bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("nvidia_smi_status, reason", [
    (None, "nvidia-smi is not installed"),
    (9, "nvidia-smi -L failed"),
    (0, "torch sees no CUDA device"),
])
def test_without_a_gpu_it_stops_with_status_2_and_says_why(tmp_path, nvidia_smi_status, reason):
    done = run(tmp_path, nvidia_smi_status)
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr
    assert "This script measures NVIDIA GPUs only; nothing was run." in done.stderr
    assert "python scripts/benchmarks/benchmark.py" in done.stderr  # what to run on a CPU instead
    assert not (tmp_path / "out").exists()


def test_script_is_valid_bash_and_runs_every_precision():
    assert subprocess.run(["/bin/bash", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    for variants in ("stock,ours", "stock_bf16,ours_bf16", "stock_fp16,ours_fp16"):
        assert f"--variants {variants}" in text
    assert "--torch_compile" in text and "--nproc_per_node" in text
