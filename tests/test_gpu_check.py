"""scripts/gpu_check.sh: without a GPU it stops at once with status 2, says why, and writes nothing; with one (faked
here: nvidia-smi and $PYTHON stand-ins that record each run and write the losses a test chooses) it trains every
CUDA path and its report passes or fails each check: finite losses that fall, equal losses from the two heads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
PATHS = ("fp32_tf32", "fp32", "fp32_full_head", "bf16", "fp16", "bf16_compile", "torchrun_1", "fsdp_1")

# Stands in for $PYTHON: records each call in $FAKE_PYTHON_LOG; answers torch's device count; skips building the
# bert-base model; runs the report (stdin) for real; and for a training run writes the trainer_state.json of the
# losses $FAKE_LOSSES gives its output folder's name (100 steps logged every 5, 4,096 tokens a step, 0.1 s a step).
FAKE_PYTHON = """\
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "-c":
    print(os.environ["FAKE_GPUS"])
elif args[0] == "-":
    code = sys.stdin.read()
    if "save_pretrained" in code:  # a BERT config of 2 layers, 32 wide, for the MFU
        Path(args[1]).mkdir(parents=True)
        (Path(args[1]) / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 99,
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}))
        print("Fake GPU; attention: sdpa")
    else:
        sys.argv = args
        exec(compile(code, "<stdin>", "exec"))
else:
    out = Path(args[args.index("--output_dir") + 1])
    losses = json.loads(os.environ["FAKE_LOSSES"])[out.name]
    history = [{"step": 5 * (i + 1), "loss": loss, "num_input_tokens_seen": 4096 * 5 * (i + 1),
                "train_runtime": 0.5 * (i + 1)} for i, loss in enumerate(losses)]
    out.mkdir(parents=True)
    (out / "trainer_state.json").write_text(json.dumps({"log_history": history}))
"""
FALLING = [10.4 - 0.1 * i for i in range(20)]


def run(tmp_path, nvidia_smi: bool = True, gpus: int = 1, losses: dict | None = None, cwd=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    python = bin_dir / "python"
    python.write_text(f"#!{sys.executable}\n{FAKE_PYTHON}")
    python.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(python), "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO), "FAKE_PYTHON_LOG": str(tmp_path / "calls.jsonl"), "FAKE_GPUS": str(gpus),
           "FAKE_LOSSES": json.dumps(losses or {}), "PEAK_TFLOPS": "0.001", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["/bin/bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()] \
        if (tmp_path / "calls.jsonl").exists() else []
    return done, calls


@pytest.mark.parametrize("from_root", [True, False])  # the refusal is sourced by a path from the repository root
@pytest.mark.parametrize("nvidia_smi, gpus, reason", [
    (False, 0, "no GPU found (nvidia-smi is not installed)"),
    (True, 0, "torch sees no CUDA device"),
])
def test_without_a_gpu_it_stops_with_status_2_and_runs_nothing(tmp_path, nvidia_smi, gpus, reason, from_root):
    done, calls = run(tmp_path, nvidia_smi=nvidia_smi, gpus=gpus, cwd=REPO if from_root else tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"gpu_check.sh: {reason}" in done.stderr
    assert "This script checks the CUDA paths on an NVIDIA GPU; nothing was run." in done.stderr
    assert "On a CPU the tests cover the rest: python -m pytest tests/test_scaling.py" in done.stderr
    assert not (tmp_path / "out").exists()
    assert all(call[0] == "-c" for call in calls)  # at most the device count was asked


def test_every_path_is_run_and_reported(tmp_path):
    done, calls = run(tmp_path, losses={name: FALLING for name in PATHS})
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {call[call.index("--output_dir") + 1].rsplit("/", 1)[-1]: call for call in calls if "--output_dir" in call}
    assert set(runs) == set(PATHS)
    assert "--fp16" in runs["fp16"] and "--sparse_prediction" not in runs["fp16"]  # the sparse head, our default
    assert runs["fp32_full_head"][runs["fp32_full_head"].index("--sparse_prediction") + 1] == "False"
    assert "--torch_compile" in runs["bf16_compile"]
    assert runs["torchrun_1"][:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    assert "examples/fsdp.yaml" in runs["fsdp_1"] and runs["fsdp_1"][1] == "torch.distributed.run"
    summary = (tmp_path / "out" / "summary.md").read_text()
    from transformers import BertConfig, BertForMaskedLM

    parameters = BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64)).num_parameters(exclude_embeddings=True)
    mfu = 6 * parameters * 40_960 / 1e9  # PEAK_TFLOPS 0.001
    for name in PATHS:  # 5 steps of 4,096 tokens every 0.5 s: 40,960 tokens/s
        assert f"| {name} | 10.4000 | 8.5000 | 40,960 | {mfu:.1%} | ok |" in summary
    assert "Sparse and full heads (fp32, 20 logged losses): equal within 1e-3 relative" in summary
    assert "All checks passed." in summary


def test_a_loss_that_is_not_finite_does_not_fall_or_differs_between_heads_fails(tmp_path):
    losses = {name: FALLING for name in PATHS}
    losses["fp16"] = FALLING[:-1] + [math.nan]
    losses["torchrun_1"] = list(reversed(FALLING))
    losses["fp32_full_head"] = [x + 0.1 for x in FALLING]
    done, _ = run(tmp_path, losses=losses)
    assert done.returncode == 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| fp16 |" in summary and "a loss that is not finite" in summary
    assert "the loss did not fall" in summary
    assert "Sparse and full heads (fp32, 20 logged losses): DIFFERENT" in summary
    assert "FAILED: fp16, torchrun_1, sparse vs full head" in summary
