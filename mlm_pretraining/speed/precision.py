"""Which number formats this machine computes fast, and the warnings and defaults that follow from it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# /proc/cpuinfo flags of x86 CPUs that compute bf16 matrix products natively (AMX tiles, AVX-512 BF16 dot products).
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (or the given text); empty where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively; without it bf16 autocast is emulated and slower than fp32.

    Arm CPUs report ``bf16`` in their ``Features`` line. Where nothing can be read (macOS, Windows) this is False.
    """
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS) or "bf16" in flags


def has_gpu() -> bool:
    """Whether training will run on an accelerator (CUDA, ROCm, XPU or Apple MPS) rather than the CPU."""
    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    return torch.backends.mps.is_available()


def drop_pin_memory_on_cpu(args) -> None:
    """Pinned host memory only speeds copies to a GPU; on a CPU run the DataLoader warns about it on every run, so
    TrainingArguments' default (on) is turned off there."""
    if args.use_cpu or not has_gpu():
        args.dataloader_pin_memory = False


def bf16_warning(bf16: bool, on_cpu: bool, cpuinfo: str | None = None) -> str | None:
    """The warning for a bf16 request on a CPU without native bf16, or None when there is nothing to warn about."""
    if not bf16 or not on_cpu or cpu_has_native_bf16(cpuinfo):
        return None
    return ("--bf16 on this CPU: it has no native bf16 (no amx_bf16 / avx512_bf16 in /proc/cpuinfo), so bf16 is "
            "emulated and training will be several times SLOWER than fp32. Drop --bf16 here; use it on GPUs and on "
            "CPUs with AMX or AVX-512 BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later).")


def warn_about_precision(training_args) -> None:
    """Log the bf16-on-a-slow-CPU warning when it applies."""
    message = bf16_warning(training_args.bf16, training_args.use_cpu or not has_gpu())
    if message:
        logger.warning(message)
