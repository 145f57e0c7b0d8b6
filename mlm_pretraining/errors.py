"""Bad input: one exception type, reported by the command-line entry points as one line without a traceback."""

from __future__ import annotations

import sys


class InputError(ValueError):
    """A problem with the user's flags or files, reported as one clear message without a traceback."""


def run_cli(main, script: str):
    """Call a script's ``main()``; bad input (an :class:`InputError`) ends with its message and exit status 2."""
    try:
        return main()
    except InputError as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        sys.exit(2)


def as_list(value):
    """``None`` and lists unchanged, anything else wrapped in a one-element list (for nargs='+' fields)."""
    if value is None or isinstance(value, list):
        return value
    return [value]
