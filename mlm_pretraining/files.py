"""Writing a file so that a reader (a resumed run, a rerun, another process) sees the old file or the new one,
never half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` as :func:`write_bytes_atomically` does."""
    return write_bytes_atomically(path, text.encode("utf-8"))
