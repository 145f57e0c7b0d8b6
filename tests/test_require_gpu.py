"""scripts/require_gpu.sh, the GPU scripts' one refusal without a GPU: sourced and called, it exits the caller with
status 2 and the caller's name, what it does and its CPU hint, saying why; with a GPU it sets GPUS and the caller goes
on (nvidia-smi and $PYTHON are stand-ins here)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO

HELPER = REPO / "scripts" / "require_gpu.sh"
# A caller as the GPU scripts are: strict bash, the helper sourced, then called; GPUS printed if it goes on.
CALLER = ('set -euo pipefail; source "$1"; require_gpu demo.sh "This script does demo things" '
          '"On a CPU: python demo.py"; echo "went on with GPUS=$GPUS"')


def run(tmp_path, nvidia_smi_status: int | None, python: str) -> subprocess.CompletedProcess:
    """The caller above with PATH holding only a fake nvidia-smi (exiting with ``nvidia_smi_status``; None: none)
    and $PYTHON a stand-in shell script whose body is ``python``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi_status is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho 'GPU 0: Fake'\nexit {nvidia_smi_status}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    (bin_dir / "fake-python").write_text(f"#!/bin/sh\n{python}\n")
    (bin_dir / "fake-python").chmod(0o755)
    env = {"PATH": str(bin_dir), "PYTHON": str(bin_dir / "fake-python"), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", "-c", CALLER, "caller", str(HELPER)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("nvidia_smi_status, python, reason", [
    (None, "echo 1", "no GPU found (nvidia-smi is not installed)"),
    (9, "echo 1", "no GPU found (nvidia-smi -L failed: no driver or no device)"),
    (0, "exit 1", "'{python}' cannot import torch"),
    (0, "echo 0", "torch sees no CUDA device (a CPU-only torch build, or CUDA_VISIBLE_DEVICES is empty)"),
])
def test_without_a_gpu_the_caller_exits_with_status_2_and_its_own_message(tmp_path, nvidia_smi_status, python,
                                                                           reason):
    done = run(tmp_path, nvidia_smi_status, python)
    assert done.returncode == 2, done.stderr
    reason = reason.format(python=tmp_path / "bin" / "fake-python")
    assert done.stderr == (f"demo.sh: {reason}. This script does demo things; nothing was run.\n"
                           "On a CPU: python demo.py\n")
    assert "went on" not in done.stdout  # the caller stopped at the call


def test_with_a_gpu_the_caller_goes_on_with_the_device_count(tmp_path):
    done = run(tmp_path, 0, "echo 2")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == "went on with GPUS=2\n"


def test_helper_is_valid_bash():
    assert subprocess.run(["/bin/bash", "-n", str(HELPER)]).returncode == 0
