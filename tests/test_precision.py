"""mlm_pretraining/hardware.py and speed/precision.py: which CPUs compute bf16 natively, the warning for those that do
not, and the device defaults the argument layer settles."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from arguments import parse_args
from mlm_pretraining.errors import InputError
from mlm_pretraining.hardware import cpu_flags, cpu_has_native_bf16
from mlm_pretraining.speed import precision
from mlm_pretraining.speed.precision import bf16_advice, bf16_warning


def test_bf16_warning_only_on_cpus_without_native_bf16():
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    amx = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    graviton = "Features\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_has_native_bf16(avx2)
    assert cpu_has_native_bf16(amx) and cpu_has_native_bf16(graviton)
    assert "SLOWER" in bf16_warning(True, on_cpu=True, cpuinfo=avx2)
    assert bf16_warning(True, on_cpu=True, cpuinfo=amx) is None
    assert bf16_warning(True, on_cpu=False, cpuinfo=avx2) is None  # a GPU does the work
    assert bf16_warning(False, on_cpu=True, cpuinfo=avx2) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_bf16_runs_on_a_cpu_only_machine_and_fp16_is_refused(tmp_path):
    *_, args = parse_args(["--output_dir", str(tmp_path), "--bf16", "--report_to", "none"])
    assert args.bf16 and args.use_cpu
    with pytest.raises(InputError, match="--fp16 needs a GPU"):
        parse_args(["--output_dir", str(tmp_path), "--fp16"])


def test_fp32_on_a_cpu_with_native_bf16_is_told_the_measured_speed_up():
    avx2 = "flags\t\t: fpu sse2 avx avx2 fma\n"
    amx = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    advice = bf16_advice(False, False, on_cpu=True, cpuinfo=amx)
    assert advice.startswith("This CPU computes bf16 natively (AMX / AVX-512 BF16): --bf16 trains about 2.3x faster "
                             "here (2,397 against 1,042 tokens/s")
    assert bf16_advice(True, False, on_cpu=True, cpuinfo=amx) is None  # already bf16
    assert bf16_advice(False, False, on_cpu=True, cpuinfo=avx2) is None  # emulated bf16 would be slower
    assert bf16_advice(False, False, on_cpu=False, cpuinfo=amx) is None  # a GPU trains; its own advice is the README's


def test_cpu_flags_reads_the_flags_or_features_line():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2\nbugs\t\t: spectre_v1\n"
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2"}
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert cpu_flags("processor\t: 0\nmodel name\t: something\n") == set()


@pytest.mark.parametrize("bf16, use_cpu, gpu, native, warned", [
    (True, True, False, False, True),
    (True, False, False, False, True),  # no accelerator: the CPU trains even without --use_cpu
    (True, False, True, False, False),  # the GPU trains
    (True, True, False, True, False),  # the CPU has bf16 units
    (False, True, False, False, False),
])
def test_warn_about_precision_logs_only_when_bf16_would_be_emulated(monkeypatch, caplog, bf16, use_cpu, gpu, native,
                                                                     warned):
    monkeypatch.setattr(precision, "has_gpu", lambda: gpu)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    with caplog.at_level(logging.WARNING, logger="mlm_pretraining.speed.precision"):
        precision.warn_about_precision(SimpleNamespace(bf16=bf16, fp16=False, use_cpu=use_cpu))
    assert ("training will be several times SLOWER than fp32" in caplog.text) == warned


def test_pinned_memory_only_where_a_gpu_takes_the_batches(tmp_path, monkeypatch, caplog):
    import arguments
    from mlm_pretraining.classification import ClassificationTrainingArguments
    from mlm_pretraining.logs import setup_logging

    monkeypatch.setattr(arguments, "has_gpu", lambda: False)
    *_, args = parse_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert args.dataloader_pin_memory is False and args.notices == []  # our default: nothing the user gave changed
    (classification_args,) = parse_args(["--output_dir", str(tmp_path)], groups=(ClassificationTrainingArguments,))
    assert classification_args.dataloader_pin_memory is False  # every script's training arguments alike
    *_, asked = parse_args(["--output_dir", str(tmp_path), "--report_to", "none", "--dataloader_pin_memory", "True"])
    assert asked.dataloader_pin_memory is False
    with caplog.at_level(logging.INFO, logger="mlm_pretraining.arguments"):
        setup_logging(asked)
    assert "--dataloader_pin_memory off: this run trains on the CPU" in caplog.text  # the user's flag changed: said
    monkeypatch.setattr(arguments, "has_gpu", lambda: True)
    *_, gpu_args = parse_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert gpu_args.dataloader_pin_memory is True


def test_processes_launched_on_a_machine_without_a_gpu_train_together_on_the_cpu(tmp_path, monkeypatch, cpu_process):
    """torchrun (or accelerate launch) without --use_cpu on a machine without a GPU: accelerate would take each process
    for a run of its own (distributed type NO: each trains everything alone, into the same output_dir). The argument
    layer turns --use_cpu on, so they train together (MULTI_CPU, gloo), and says so; a given --use_cpu is kept
    quietly."""
    import arguments
    from accelerate.utils import DistributedType
    from transformers import TrainingArguments
    from transformers.training_args import ParallelMode

    monkeypatch.setattr(arguments, "has_gpu", lambda: False)
    *_, args = parse_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert args.use_cpu and args.parallel_mode == ParallelMode.DISTRIBUTED
    assert args.distributed_state.distributed_type == DistributedType.MULTI_CPU
    assert args.distributed_state.backend == "gloo"
    assert args.notices == ["Launched by torchrun or accelerate launch on a machine without a GPU: the processes "
                            "train together on the CPU, with gloo (--use_cpu True)."]
    *_, given = parse_args(["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu"])
    assert given.use_cpu and given.notices == []
    if not torch.cuda.is_available():  # what the rule prevents: transformers' own arguments, not distributed
        assert TrainingArguments(output_dir=str(tmp_path), report_to="none").parallel_mode == ParallelMode.NOT_PARALLEL
