"""The speed-ups, each behind one flag of arguments.SpeedArguments: the sparse prediction head and its fused loss
(sparse_head, linear_cross_entropy), fast CPU dropout (fast_dropout), kept CPU memory (cpu_memory); and the precision
advice (precision). :func:`apply_speedups` switches on what the flags ask for."""

from __future__ import annotations

from mlm_pretraining.speed.cpu_memory import keep_freed_memory
from mlm_pretraining.speed.fast_dropout import enable_fast_dropout
from mlm_pretraining.speed.sparse_head import enable_sparse_prediction


def apply_speedups(model, speed_args, on_cpu: bool) -> None:
    """Switch on the speed-ups ``speed_args`` asks for (SpeedArguments, or FineTuneSpeedArguments, which has no
    sparse head); each is a no-op where it does not apply (a model without a supported head, a GPU)."""
    if getattr(speed_args, "sparse_prediction", False):
        enable_sparse_prediction(model)
    if speed_args.fast_dropout:
        enable_fast_dropout(model)
    if speed_args.keep_freed_memory and on_cpu:
        keep_freed_memory()
