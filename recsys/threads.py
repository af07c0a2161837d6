"""How many threads recsys computes with: the cores it may use, less those others keep busy.

torch's OpenMP workers meet at a barrier after every parallel region, so a worker whose core
another process holds stalls all of them. On this project's 2-core machine with two busy
background processes, one LightGCL epoch on ml-100k took 0.80 s with 1 thread and 29.8 s with
2 (OpenMP's default spin-waiting), 2.1 s with 2 passive-waiting threads. So recsys asks OpenMP
to wait passively (`OMP_WAIT_POLICY`, set in recsys/__init__.py before torch loads) and, unless
told a number, uses the cores this process may use minus the cores other processes kept busy,
measured from /proc/stat less this process's own CPU time, and looked at again every epoch.
"""

from __future__ import annotations

import os
import time

import torch

#: seconds of the first look at the machine, before any work has run
FIRST_LOOK_SECONDS = 0.2


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cpus: list[int]) -> float | None:
    """Busy (non-idle) CPU seconds so far on `cpus`, from /proc/stat; None where it is absent."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:8]]  # user nice system idle iowait irq softirq
            busy += sum(values) - values[3] - values[4]
    return busy / tick


class CoreWatch:
    """Cores that other processes kept busy since the last look."""

    def __init__(self):
        self.cpus = allowed_cpus()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float | None, float]:
        return time.perf_counter(), _busy_seconds(self.cpus), time.process_time()

    def others_busy(self) -> float:
        """Average cores in use by other processes since the previous call (0 if unknown)."""
        now = self._sample()
        (wall0, busy0, own0), (wall1, busy1, own1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return 0.0
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / (wall1 - wall0))

    def free_cores(self) -> int:
        return max(1, len(self.cpus) - round(self.others_busy()))


_watch: CoreWatch | None = None


def use_threads(threads: int | None) -> int:
    """Compute with `threads` threads, or (None) with the free cores, re-checked by `rebalance`.

    Sets torch's intra-op threads, which `implicit` and the evaluator follow, and FAISS's.
    Returns the number chosen.
    """
    global _watch
    if threads is None:
        _watch = CoreWatch()
        time.sleep(FIRST_LOOK_SECONDS)
        threads = _watch.free_cores()
    else:
        _watch = None
    _apply(threads)
    return threads


def rebalance() -> int:
    """In automatic mode, follow the free cores since the last call; returns the thread count."""
    if _watch is not None:
        _apply(_watch.free_cores())
    return torch.get_num_threads()


def _apply(threads: int) -> None:
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    import faiss  # its own OpenMP pool

    faiss.omp_set_num_threads(threads)
