"""Precision advice on a CPU: bf16 where the CPU only emulates it is several times slower than fp32, and fp32 where
it computes bf16 natively leaves about half the speed unused; say so, once, at the start of the run."""

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


# Measured on a 2-core AMD EPYC with avx512_bf16 (the shipped MiniLM, batch 32 x 128, scripts/benchmarks/benchmark.py
# --variants ours,ours_bf16): tokens/s of our pipeline in bf16 and in fp32. The eval-loss cost, bf16 - fp32 over seeds
# 1-3 (scripts/benchmarks/precision_cost.py, docs/speed.md "What bf16 costs in quality"): -0.0022 [-0.0051, +0.0007].
NATIVE_BF16_TOKENS_PER_SECOND = (2397, 1042)


def bf16_advice(bf16: bool, fp16: bool, on_cpu: bool, cpuinfo: str | None = None) -> str | None:
    """The one line for an fp32 run on a CPU that multiplies bf16 natively, or None."""
    if bf16 or fp16 or not on_cpu or not cpu_has_native_bf16(cpuinfo):
        return None
    fast, slow = NATIVE_BF16_TOKENS_PER_SECOND
    return (f"This CPU computes bf16 natively (AMX / AVX-512 BF16): --bf16 trains about {fast / slow:.1f}x faster here "
            f"({fast:,} against {slow:,} tokens/s, MiniLM, batch 32 x 128, measured on such a CPU) at no measurable "
            "cost in quality (eval loss -0.002 [-0.005, +0.001] against fp32 over 3 seeds, docs/speed.md). This run "
            "uses fp32.")


def warn_about_precision(training_args) -> None:
    """Log the bf16-on-a-slow-CPU warning, or the fp32-on-a-bf16-CPU advice, when one applies."""
    on_cpu = training_args.use_cpu or not has_gpu()
    message = bf16_warning(training_args.bf16, on_cpu)
    if message:
        logger.warning(message)
    advice = bf16_advice(training_args.bf16, training_args.fp16, on_cpu)
    if advice:
        logger.info(advice)
