"""Flag values that are more than a type, parsed and checked where the flags are read (arguments.py), before any
text or model is loaded: durations, warm-up lengths, word lists, named evaluation sets. A leaf: nothing here imports the library."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from mlm_pretraining.errors import InputError

# The name of an evaluation set in --validation_file name=path.
SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# --max_train_time: days, hours, minutes, seconds, each optional, in that order.
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str | float, flag: str = "--max_train_time") -> float:
    """Seconds in a duration such as ``90m``, ``8h``, ``1h30m``, ``2d``, ``45s`` or plain seconds (``3600``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower().replace(" ", "")
        match = _DURATION.fullmatch(value)
        try:
            seconds = float(value)
        except ValueError:
            if not value or match is None or not any(match.groups()):
                raise InputError(f"{flag} '{text}' is not a duration: give seconds (3600) or a combination of "
                                 "d, h, m, s such as 90m, 8h, 1h30m.") from None
            days, hours, minutes, secs = (float(g or 0) for g in match.groups())
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{flag} must be a positive duration, got '{text}'.")
    return seconds


def parse_warmup_steps(value: str) -> str | int:
    """--head_warmup_steps as given: 'auto' or a non-negative integer; an InputError naming the flag otherwise."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise InputError(f"--head_warmup_steps must be 'auto' or a non-negative integer (0: no warm-up), got "
                         f"'{value}'.")
    return steps


def read_token_file(path: str) -> list[str]:
    """The tokens in ``path`` (--add_tokens): one a line, blank lines skipped, duplicates dropped, order kept."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--add_tokens: no such file '{path}'. Give a text file with one token a line.")
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"--add_tokens: '{path}' is not valid UTF-8 (byte {err.start}).") from None
    tokens: list[str] = []
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if not token:
            continue
        if len(token.split()) > 1:
            raise InputError(f"--add_tokens: '{path}' line {number} holds '{token}', which has a space; give one "
                             "token a line, without spaces.")
        if token not in tokens:
            tokens.append(token)
    if not tokens:
        raise InputError(f"--add_tokens: '{path}' holds no token; give one token a line.")
    return tokens

def parse_named_files(entries: list[str] | None, flag: str) -> dict[str, list[str]]:
    """``name=path`` entries by name (``domain=dev.jsonl general=wiki.txt``), or every entry under the name ''
    when none is named. Mixing named and unnamed entries is refused, and so is a name given twice (a set of several
    files is one entry: a folder or a quoted glob, ``domain='dev/*.jsonl'``)."""
    if not entries:
        return {}
    named: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and SET_NAME.match(name) and not os.path.exists(entry):
            if name in named:
                raise InputError(f"{flag}: the set name '{name}' is given twice ({named[name][0]}, {path}); give each "
                                 f"set its own name, or one set of several files as a folder or a quoted glob "
                                 f"({name}='dev/*.txt').")
            named[name] = [path]
        else:
            named.setdefault("", []).append(entry)
    if "" in named and len(named) > 1:
        raise InputError(f"{flag}: give every set a name (name=path, e.g. domain=dev.txt general=wiki.txt) or none; "
                         f"'{named[''][0]}' has no name.")
    return named
