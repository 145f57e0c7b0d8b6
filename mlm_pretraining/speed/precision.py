"""Precision advice: bf16 on a CPU that only emulates it is several times slower than fp32, so say so."""

from __future__ import annotations

import logging

from mlm_pretraining.hardware import cpu_has_native_bf16, has_gpu

logger = logging.getLogger(__name__)


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
