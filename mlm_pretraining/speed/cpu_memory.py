"""Freed CPU memory kept in the process for the next tensors, so a training step reuses its buffers.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (128 KiB at first, rising
to at most 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` when freed, and it trims the heap's free top
back to the system: so every step's activations, gradients and dropout masks (MiniLM at batch 32 × 128: ~600 MB a
step) arrive as new pages, each zeroed by the kernel on first touch: ~150,000 page faults a step, paid inside
whichever op first writes the buffer. :func:`keep_freed_memory` sets, with ``mallopt`` (the C call, in this process
only, not an environment variable), an mmap threshold of 1 GiB and a trim threshold of 2 GiB: blocks are then
carved from the heap and reused step after step, as a GPU's caching allocator does. The price is that the process
keeps its peak memory until it exits. Only glibc on Linux has ``mallopt``; elsewhere nothing changes.

The heap settles over the first few steps, not at once: torch asks for 64-byte-aligned blocks (``posix_memalign``),
which glibc cuts from a chunk 96 bytes larger, handing the slack to its per-thread cache (tcache: up to 7 small free
chunks per size, kept apart from their neighbours). Until those cache bins are full, a freed block is a few bytes short
of the next request of its size and the heap grows by a fresh block instead; then blocks are reused.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h) and the values we set.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2**30
# glibc before 2.35 refuses thresholds above 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); then that is used.
MMAP_THRESHOLD_OLD_GLIBC = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks (up to 1 GiB) for reuse instead of unmapping or trimming them; return whether
    it could (True on Linux with glibc). Idempotent; affects this process (and processes it forks later)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        logger.info("Freed CPU memory is left to the system allocator (no glibc mallopt on %s).", sys.platform)
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_threshold = MMAP_THRESHOLD
    if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:
        mmap_threshold = MMAP_THRESHOLD_OLD_GLIBC
        if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:
            return False
    if libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    _done = True
    logger.info("Freed CPU memory is kept for reuse (glibc mallopt: blocks up to %d MiB from the heap, no trimming): "
                "fewer page faults per step; the process keeps its peak memory.", mmap_threshold // 2**20)
    return True
