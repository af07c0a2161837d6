"""Keep freed memory in the process, so a training step does not fault in fresh pages.

glibc serves every allocation above 32 MiB with its own mmap and unmaps it on free, so the
next step's tensors are fresh pages that the kernel faults in and zeroes again. A graph
model's step allocates dozens of (nodes × d) tensors: at 16M interactions (960k nodes, 245 MiB
per table) torch's profiler put 2.3 s of a 5.1 s LightGCN step in the fills, copies and
additions that write fresh tensors, and 0.43 s with mmap turned off and the trim threshold at
its maximum (2 GiB), which is what this module does. Measured on this project's 2-core CPU,
one LightGCN step: 5.5 s → 2.65 s at 16M, 0.105 → 0.094 s at 1M; one epoch at 1M 13.4 → 12.0 s.

The price is memory: with mmap off, freed blocks stay in one heap that fragments, so the peak
grows (16M training: 6.1 GiB against 4.1 GiB; 1M whole run: 1.42 against 1.14 GiB). Training
therefore keeps freed memory only where the estimated peak, times KEEP_FREED_PEAK_FACTOR, fits
in the memory available (recsys.train.loop.check_memory), and returns it otherwise. Left alone
where the user set glibc's malloc variables (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_,
GLIBC_TUNABLES) or RECSYS_KEEP_FREED=0, and off glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: measured peak with freed memory kept over the peak without (1.50 at 16M, 1.24 at 1M)
KEEP_FREED_PEAK_FACTOR = 1.6
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


_kept = False  # whether this process keeps freed memory now


def keep_freed_memory(keep: bool = True) -> bool:
    """Keep freed blocks in the heap (`keep`) or return them to the system, glibc's default.

    Returns True when malloc is in that state, False where recsys leaves malloc alone. glibc's
    settings are only touched to switch, so a process that never kept freed memory keeps
    glibc's own (dynamic) mmap threshold.
    """
    global _kept
    if os.environ.get("RECSYS_KEEP_FREED", "1") == "0" or any(
        v in os.environ for v in USER_SETTINGS
    ):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if keep == _kept:
        return True
    # mallopt's value is a C int: 2 GiB - 1 is the largest trim threshold it takes.
    values = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1} if keep else GLIBC_DEFAULTS
    try:
        libc = ctypes.CDLL(None)
        applied = all(libc.mallopt(param, value) == 1 for param, value in values.items())
    except (OSError, AttributeError):
        return False
    if applied:
        _kept = keep
    return applied
