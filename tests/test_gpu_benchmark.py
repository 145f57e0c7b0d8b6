"""scripts/benchmarks/gpu_benchmark.sh: without a GPU it stops at once with status 2, says why, and writes nothing;
with one it runs benchmark.py once per precision (and torchrun on 1 and 2 GPUs where there are 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "benchmarks" / "gpu_benchmark.sh"

# Stands in for $PYTHON: records each invocation (argv, CUDA_VISIBLE_DEVICES) in $FAKE_PYTHON_LOG and answers as
# torch on $FAKE_GPUS GPUs, benchmark.py (a table and its JSON line) or torchrun (all_results.json) would; the
# script's own inline Python (`"$PYTHON" - ...` reading stdin) runs for real.
FAKE_PYTHON = """\
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(json.dumps({"argv": args, "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
if args[0] == "-c":
    print("torch 2 cuda 12 transformers 5 gpus N Fake GPU" if "__version__" in args[1] else os.environ["FAKE_GPUS"])
elif args[0] == "-":
    sys.argv = args
    exec(compile(sys.stdin.read(), "<stdin>", "exec"))
elif args[0] == "scripts/benchmarks/benchmark.py":
    print("| variant | tokens/s |\\n| --- | --- |\\n| fake | 1 |")
    print(json.dumps({"variants": args[args.index("--variants") + 1]}))
elif args[:2] == ["-m", "torch.distributed.run"]:
    out = Path(args[args.index("--output_dir") + 1])
    out.mkdir(parents=True)
    (out / "all_results.json").write_text(json.dumps({"train_runtime": 10.0}))
else:
    sys.exit(f"fake python: unexpected call {args}")
"""


def fake_nvidia_smi(bin_dir, status: int | None) -> None:
    """An nvidia-smi on PATH that lists one GPU and exits with ``status`` (None: no nvidia-smi)."""
    bin_dir.mkdir(exist_ok=True)
    if status is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\necho 'GPU 0: Fake'\nexit {status}\n")
        fake.chmod(0o755)


def run(tmp_path, nvidia_smi_status: int | None, cwd=None) -> subprocess.CompletedProcess:
    """The script with PATH holding only a fake nvidia-smi (exiting with ``nvidia_smi_status``; None: no nvidia-smi)
    and dirname, and torch seeing no CUDA device."""
    bin_dir = tmp_path / "bin"
    fake_nvidia_smi(bin_dir, nvidia_smi_status)
    # The script finds the repository root from its own path with dirname; without it, it would run from "/".
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    env = {"PATH": str(bin_dir), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    return subprocess.run(["/bin/bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("from_root", [True, False])  # the refusal is sourced by a path from the repository root
@pytest.mark.parametrize("nvidia_smi_status, reason", [
    (None, "nvidia-smi is not installed"),
    (9, "nvidia-smi -L failed"),
    (0, "torch sees no CUDA device"),
])
def test_without_a_gpu_it_stops_with_status_2_and_says_why(tmp_path, nvidia_smi_status, reason, from_root):
    done = run(tmp_path, nvidia_smi_status, cwd=REPO if from_root else tmp_path)
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr
    assert "This script measures NVIDIA GPUs only; nothing was run." in done.stderr
    assert "python scripts/benchmarks/benchmark.py" in done.stderr  # what to run on a CPU instead
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gpus", [1, 2])
def test_with_a_gpu_it_benchmarks_every_precision_and_on_two_gpus_scales(tmp_path, gpus):
    bin_dir = tmp_path / "bin"
    fake_nvidia_smi(bin_dir, 0)
    python = bin_dir / "python"
    python.write_text(f"#!{sys.executable}\n{FAKE_PYTHON}")
    python.chmod(0o755)
    log, out = tmp_path / "calls.jsonl", tmp_path / "out"
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "PYTHON": str(python), "HOME": str(tmp_path),
           "FAKE_PYTHON_LOG": str(log), "FAKE_GPUS": str(gpus), "STEPS": "7", "BATCH": "3"}
    done = subprocess.run(["/bin/bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]

    benchmarks = [c["argv"][1:] for c in calls if c["argv"][0] == "scripts/benchmarks/benchmark.py"]
    variants = [(argv[argv.index("--variants") + 1], "--torch_compile" in argv) for argv in benchmarks]
    assert variants == [("stock,ours", False), ("stock_bf16,ours_bf16", False), ("stock_fp16,ours_fp16", False),
                        ("stock_bf16,ours_bf16", True), ("ours_bf16,ours_bf16_nodropout", False)]
    for argv in benchmarks:  # the settings from the environment reach every run
        assert argv[argv.index("--max_steps") + 1] == "7" and argv[argv.index("--batch_size") + 1] == "3"
    assert {c["devices"] for c in calls if c["argv"][0] == "scripts/benchmarks/benchmark.py"} == {"0"}
    for name in ("fp32", "bf16", "fp16", "bf16_compile", "bf16_nodropout"):
        assert json.loads((out / f"{name}.json").read_text())["variants"] in dict(variants)
    summary = (out / "summary.md").read_text()
    assert summary.count("| fake | 1 |") == 5 and "failed" not in summary

    torchruns = [c for c in calls if c["argv"][:2] == ["-m", "torch.distributed.run"]]
    if gpus == 1:
        assert torchruns == [] and "the 2-GPU torchrun check is skipped" in summary
    else:
        assert [(c["argv"][c["argv"].index("--nproc_per_node") + 1], c["devices"]) for c in torchruns] == \
            [("1", "0"), ("2", "0,1")]
        assert all("run_mlm.py" in c["argv"] and "--bf16" in c["argv"] for c in torchruns)
        assert "run_mlm.py, 2 GPU(s), bf16, batch 3 per GPU x 128 tokens, 7 steps: 10.0 s" in summary


def test_script_is_valid_bash():
    assert subprocess.run(["/bin/bash", "-n", str(SCRIPT)]).returncode == 0
