"""Bad input: one exception type, reported by the command-line entry points as one line without a traceback."""

from __future__ import annotations

import sys


class InputError(ValueError):
    """A problem with the user's flags or files, reported as one clear message without a traceback."""


def run_cli(main, script: str):
    """Call a script's ``main()``; bad input (an :class:`InputError`) ends with its message and exit status 2. A
    torch.distributed process group the run opened (torchrun, accelerate) is ended before the interpreter exits."""
    try:
        return main()
    except InputError as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        _end_process_group()


def _end_process_group() -> None:
    # Left open, a gloo worker thread may still hold a collective's tensor when the interpreter finalizes; releasing
    # it needs the GIL, which finalization no longer gives, and the C++ runtime aborts the process ("terminate called
    # without an active exception"; seen once in 76 torchrun runs, tests/test_distributed.py shows the mechanism).
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def as_list(value):
    """``None`` and lists unchanged, anything else wrapped in a one-element list (for nargs='+' fields)."""
    if value is None or isinstance(value, list):
        return value
    return [value]
