"""Memory freed by a photo goes back to the system, so a day of camera photos stays small.

A run allocates and frees buffers of a photo's size all the time (a download, a decode). glibc
serves a block over its mmap threshold with mmap and unmaps it when freed, but each time such a
block is freed it raises the threshold to that block's size (up to 32 MiB): from the first
camera photo on, photos land on the heap instead, where what they leave behind stays mapped.
A day of 1,000 camera photos (9 MB each) peaked at 937 MiB so, and at 759 MiB with the
threshold fixed at 1 MiB, which also turns the raising off (benchmarks/bench_memory.py).

It is a setting of the whole process, so only the owners of one call it (the CLI and the
Lambda handler), never `export`, which may run inside somebody else's.
"""

from __future__ import annotations

import ctypes
from typing import Final

_M_MMAP_THRESHOLD: Final = -3
"""mallopt's parameter number in glibc's malloc.h."""
THRESHOLD_BYTES: Final = 1 << 20


def unmap_large_blocks() -> bool:
    """Fix glibc's mmap threshold at `THRESHOLD_BYTES`; False where the C library has no
    `mallopt` (macOS) or refuses it, which changes nothing but the peak."""
    # The process's own symbols hold the C library's: no search for it (find_library would
    # start ldconfig at every CLI start).
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES))
