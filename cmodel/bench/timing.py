"""Interleaved timing and the machine line shared by the benchmarks
(:mod:`.linear`, :mod:`.conv`, :mod:`.model`, the demo).

Contenders run in rounds, A B C A B C ..., so load from other processes on a
shared machine hits each alike; medians are reported.  Two effects on the
2-core VMs this project is measured on shape the round:

* Thread pools that just ran keep spinning for a while (OpenBLAS workers
  for up to ~0.1 s, libgomp unless ``OMP_WAIT_POLICY=PASSIVE``), and on 2
  CPUs a spinning pool of one library stalls the next library's parallel
  regions by whole scheduler ticks.  ``settle_s`` of sleep before a
  contender's turn lets them go idle.
* After an idle spell of 50 ms or more, the next ~0.1 s of work ran up to 2x
  slower (measured: a 1 ms sparse GEMV at 1.1 ms back to back, 2.0 ms in
  bursts of 5 after a 0.15 s sleep, 1.1 ms again once 0.1 s of untimed calls
  ran first).  ``warm_s`` of untimed calls after the sleep keeps that out of
  the timings; a contender always gets at least one untimed call, which also
  pays for waking its own pool.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import numba


def cpu_seconds() -> float:
    """CPU time of this process (all threads), in seconds (microsecond resolution)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def interleave(candidates, repeats: int, *, timed: int = 1, settle_s: float = 0.0, warm_s: float = 0.0):
    """Time ``candidates`` in interleaved rounds.

    Args:
        candidates: ``(name, fn)`` pairs, or a dict name -> fn; ``fn()`` is one call.
        repeats: rounds.
        timed: timed calls per contender per round, after its untimed ones.
        settle_s: sleep before each contender's turn.
        warm_s: untimed calls for at least this long (and at least one) before
            the timed ones.

    Returns:
        ``(medians, busy)``: per name the median seconds of one call, and the
        CPU seconds per wall second of its timed calls (busy threads).
    """
    items = list(candidates.items()) if isinstance(candidates, dict) else list(candidates)
    times = {name: [] for name, _ in items}
    cpu = dict.fromkeys(times, 0.0)
    for _ in range(repeats):
        for name, fn in items:
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            fn()
            while time.perf_counter() - start < warm_s:
                fn()
            for _ in range(timed):
                c0 = cpu_seconds()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name] += cpu_seconds() - c0
    medians = {name: statistics.median(t) for name, t in times.items()}
    busy = {name: cpu[name] / sum(t) if sum(t) > 0 else 0.0 for name, t in times.items()}
    return medians, busy

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _machine() -> str:
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not started"
    return f"{_cpu_model() or platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs, numba {numba.__version__} (threading layer: {layer})"
