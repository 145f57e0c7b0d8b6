"""What this machine computes on: a GPU or the CPU, and whether the CPU multiplies bf16 natively. A leaf, read by the
argument layer (device defaults) and the speed layer (precision advice)."""

from __future__ import annotations

from pathlib import Path

import torch

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
