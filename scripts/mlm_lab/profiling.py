"""Where a training step's time goes: torch.profiler over a few Trainer steps, each op's own time put in one class
(matmul, attention, softmax, cross-entropy, dropout, elementwise, copies, optimizer, other).

Classes come from an op's name and its scope: the ops and ``record_function`` ranges around it in the forward pass
(``fast_dropout``, ``linear_cross_entropy``, ``Optimizer.step``, SDPA), and for a backward op the scope of the
forward op that recorded it (matched by autograd's sequence number), so a dropout mask's multiply counts as dropout
in the backward pass too. Time inside no op (Python, NumPy outside our ranges, the data loader's own Python) is
"other". Shares are of the profiled steps' wall-clock time and sum to 100 %.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from transformers import TrainerCallback

from mlm_pretraining.speed.fast_dropout import DROPOUT_SCOPE
from mlm_pretraining.speed.linear_cross_entropy import CROSS_ENTROPY_SCOPE

# In the order tables print them.
OP_CLASSES = ("matmul/linear", "attention (bmm, SDPA)", "softmax", "cross-entropy (head loss)", "dropout",
              "layernorm/gelu/elementwise", "copies/reshapes/fills", "optimizer (AdamW, clipping)", "other")
MATMUL, ATTENTION, SOFTMAX, CROSS_ENTROPY, DROPOUT, ELEMENTWISE, COPIES, OPTIMIZER, OTHER = OP_CLASSES

# DROPOUT_SCOPE and CROSS_ENTROPY_SCOPE: the record_function ranges the speed-ups open, named where they are opened.

_OPTIMIZER_NAMES = ("_fused_adam", "_foreach_", "linalg_vector_norm", "clip_grad", "zero_grad")
_OPTIMIZER_SCOPES = ("optimizer.", "optimizer#")
_MATMUL_NAMES = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::addmv", "aten::mv", "aten::dot",
                 "aten::_addmm_activation", "mkldnn", "onednn")
_ATTENTION_NAMES = ("bmm", "baddbmm", "scaled_dot_product", "flash_attention", "efficient_attention")
_SOFTMAX_NAMES = ("aten::softmax", "aten::_softmax", "aten::_softmax_backward_data", "aten::_safe_softmax")
_CROSS_ENTROPY_NAMES = ("log_softmax", "nll_loss", "cross_entropy", "logsumexp")
_DROPOUT_NAMES = ("dropout", "bernoulli")
_ELEMENTWISE_NAMES = ("layer_norm", "gelu", "tanh", "erf", "aten::add", "aten::sub", "aten::mul", "aten::div",
                      "aten::sum", "aten::mean", "aten::exp", "aten::log", "aten::where", "aten::masked_fill",
                      "aten::rsqrt", "aten::sqrt", "aten::pow", "aten::neg", "aten::max", "aten::amax", "aten::argmax",
                      "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::ge", "aten::le", "aten::bitwise",
                      "aten::__and__", "aten::__or__", "aten::logical", "aten::threshold", "aten::relu",
                      "aten::silu", "aten::clamp", "aten::abs", "aten::sign")
_COPY_NAMES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::cat", "aten::stack",
               "aten::index", "aten::_index_put_impl_", "aten::index_put", "aten::index_select", "aten::gather",
               "aten::scatter", "aten::masked_select", "aten::nonzero", "aten::fill_", "aten::zero_",
               "aten::embedding", "aten::narrow_copy", "aten::_unsafe_view", "aten::repeat", "aten::expand_copy")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(p in name for p in patterns)


def classify_op(name: str, scopes: Iterable[str] = ()) -> str:
    """The class of an op named ``name`` run inside ``scopes`` (the names of the ops and ranges around it, or for a
    backward op those of its forward op, itself included)."""
    lowered = name.lower()
    scopes = [s.lower() for s in scopes]
    if _matches(lowered, _OPTIMIZER_NAMES) or any(s.startswith(_OPTIMIZER_SCOPES) or _matches(s, _OPTIMIZER_NAMES)
                                                  for s in scopes):
        return OPTIMIZER
    if _matches(lowered, _DROPOUT_NAMES) or any(_matches(s, _DROPOUT_NAMES) or s == DROPOUT_SCOPE for s in scopes):
        return DROPOUT
    in_attention = any(_matches(s, _ATTENTION_NAMES) for s in scopes)
    if _matches(lowered, _ATTENTION_NAMES):
        return ATTENTION
    if _matches(lowered, _MATMUL_NAMES):
        return ATTENTION if in_attention else MATMUL
    if _matches(lowered, _CROSS_ENTROPY_NAMES) or any(s == CROSS_ENTROPY_SCOPE or _matches(s, _CROSS_ENTROPY_NAMES)
                                                      for s in scopes):
        return CROSS_ENTROPY
    if _matches(lowered, _SOFTMAX_NAMES) or any(_matches(s, _SOFTMAX_NAMES) for s in scopes):
        return SOFTMAX
    if _matches(lowered, _COPY_NAMES):
        return COPIES
    if _matches(lowered, _ELEMENTWISE_NAMES):
        return ELEMENTWISE
    if in_attention:
        return ATTENTION
    return OTHER


def _forward_scopes(event) -> list[str]:
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def _is_backward(event) -> bool:
    names = [event.name] + _forward_scopes(event)
    return any(n.startswith("autograd::engine::evaluate_function") or n.endswith("Backward0") or
               n.endswith("Backward1") for n in names)


def classify_events(events) -> list[tuple[object, str]]:
    """Each of ``events`` (torch.profiler FunctionEvents of one thread) with its op class."""
    events = sorted(events, key=lambda e: e.time_range.start)
    # A forward op's scope (itself and what encloses it), by autograd sequence number, for its backward ops. Ops
    # that create no autograd node carry the number the next node will get, so the last outermost op with a number
    # is the one that made the node.
    forward_scope: dict[int, list[str]] = {}
    for event in events:
        number = getattr(event, "sequence_nr", -1)
        parent = event.cpu_parent
        if number >= 0 and not _is_backward(event) and (parent is None or parent.sequence_nr != number):
            forward_scope[number] = [event.name] + _forward_scopes(event)
    classified = []
    for event in events:
        scopes = _forward_scopes(event)
        if _is_backward(event):
            node = next((e for e in [event, *_ancestors(event)] if getattr(e, "sequence_nr", -1) >= 0), None)
            scopes = scopes + forward_scope.get(node.sequence_nr, []) if node is not None else scopes
        classified.append((event, classify_op(event.name, scopes)))
    return classified


def op_class_seconds(events, wall_seconds: float) -> dict[str, float]:
    """Seconds per op class in ``events`` (torch.profiler FunctionEvents of the main thread) over ``wall_seconds``;
    the time in no op goes to "other", and the classes sum to ``max(wall_seconds, time in ops)``."""
    seconds = dict.fromkeys(OP_CLASSES, 0.0)
    for event, name in classify_events(events):
        seconds[name] += event.self_cpu_time_total / 1e6
    seconds[OTHER] += max(0.0, wall_seconds - sum(seconds.values()))
    return seconds


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def shares(seconds: dict[str, float]) -> dict[str, float]:
    """Each class's share of the total (fractions summing to 1)."""
    total = sum(seconds.values())
    return {name: value / total if total else 0.0 for name, value in seconds.items()}


class StepProfiler(TrainerCallback):
    """Profile optimizer steps ``first_step`` + 1 to ``first_step`` + ``steps`` (Trainer steps count from 1) with
    torch.profiler; afterwards :attr:`seconds` holds seconds per op class and :attr:`wall_seconds` the steps' time."""

    def __init__(self, first_step: int, steps: int):
        self.first_step, self.steps = first_step, steps
        self.profiler = None
        self.started = self.wall_seconds = None
        self.seconds: dict[str, float] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first_step and self.profiler is None:
            import torch

            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None and state.global_step == self.first_step + self.steps:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.wall_seconds = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            self.started = None
            self.seconds = op_class_seconds(self.profiler.events(), self.wall_seconds)

    def per_step(self) -> dict[str, float]:
        """Seconds per op class per profiled step."""
        return {name: value / self.steps for name, value in (self.seconds or {}).items()}


def op_class_table(profiles: dict[str, dict[str, float]]) -> str:
    """A Markdown table, op classes down and the named profiles across (``{name: seconds per class per step}``):
    each class's share of its profile's time and its milliseconds per step, then the totals."""
    from mlm_lab.tables import markdown_table

    rows = []
    for name in (*OP_CLASSES, "total"):
        row = {"op class": name}
        for label, seconds in profiles.items():
            total = sum(seconds.values())
            row[f"{label} share"] = 1.0 if name == "total" else shares(seconds)[name]
            row[f"{label} ms/step"] = 1e3 * (total if name == "total" else seconds[name])
        rows.append(row)
    columns = [("op class", "op class", "{}")]
    for label in profiles:
        columns += [(f"{label} share", f"{label} share", "{:.1%}"), (f"{label} ms/step", f"{label} ms/step", "{:,.0f}")]
    return markdown_table(rows, columns)
