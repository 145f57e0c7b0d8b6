"""Bad input: one exception type, reported by the command-line entry points as one line without a traceback."""

from __future__ import annotations

import sys
from pathlib import Path


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
    # Destroying the group joins its workers, unless something still holds the group: under FSDP2, torch's DTensor
    # caches keep the device mesh, and with it the group and its two worker threads, until the interpreter ends (the
    # same abort, seen once in CI). Those workers are then waited for until idle, with nothing left to release.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        wait_until_idle(GLOO_WORKER)


GLOO_WORKER = "pt_gloo_runloop"  # the name torch gives a gloo process group's worker threads (Linux)


def wait_until_idle(thread_name: str, timeout: float = 10.0, interval: float = 0.01, polls: int = 3) -> bool:
    """Sleep, releasing the GIL, until every thread of this process named ``thread_name`` has been asleep (waiting,
    not runnable) at ``polls`` consecutive looks ``interval`` seconds apart: a worker that finished a task, or waits
    for the GIL to release one, runs before then. True when they are (or there are none, or no /proc to look in:
    Linux only); False after ``timeout`` seconds."""
    import time

    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < polls:
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
        quiet = quiet + 1 if "R" not in thread_states(thread_name) else 0
    return True


def thread_states(thread_name: str) -> list[str]:
    """The scheduler state letter (R running or runnable, S sleeping, ...) of each thread of this process named
    ``thread_name``; none without Linux's /proc."""
    tasks = Path("/proc/self/task")
    states = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            if (task / "comm").read_text().strip() == thread_name:
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return states


def as_list(value):
    """``None`` and lists unchanged, anything else wrapped in a one-element list (for nargs='+' fields)."""
    if value is None or isinstance(value, list):
        return value
    return [value]
