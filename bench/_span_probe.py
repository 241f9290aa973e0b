"""Per-call probes for `span_trace.py`: wall and thread CPU time, page faults, preemption and
collector runs around one call, their summaries, and page-cache eviction for cold starts."""

from __future__ import annotations

import gc
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

_gc_runs = [0]
gc.callbacks.append(lambda phase, info: _gc_runs.__setitem__(0, _gc_runs[0] + (phase == "start")))


def measure(fn: Any, q: np.ndarray) -> tuple[float, float, int, int, int, int]:
    """One call: wall s, this thread's CPU s, minor and major page faults, involuntary context
    switches (preempted by another process) and collector runs while it ran. The probes cost
    about 2 us; they sit outside the timed interval."""
    gc0 = _gc_runs[0]
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    c = time.thread_time()
    t = time.perf_counter()
    fn(q)
    dt = time.perf_counter() - t
    dc = time.thread_time() - c
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    return (
        dt,
        dc,
        r1.ru_minflt - r0.ru_minflt,
        r1.ru_majflt - r0.ru_majflt,
        r1.ru_nivcsw - r0.ru_nivcsw,
        _gc_runs[0] - gc0,
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1e3
    if arr.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "n": int(arr.size),
    }


def summarize(calls: list[tuple[float, float, int, int, int, int]]) -> dict[str, Any]:
    """Wall and CPU percentiles, faults per call, and what the slowest 1 % of calls had in
    common: preemption (an involuntary context switch), page faults, a collector run."""
    a = np.asarray(calls, np.float64).reshape(-1, 6)
    wall, cpu, minf, majf, ivcs, gcs = a.T
    slow = wall >= np.percentile(wall, 99) if wall.size else wall.astype(bool)
    return {
        "wall": percentiles(wall.tolist()),
        "cpu": percentiles(cpu.tolist()),
        # the tail of the calls no other process interrupted: what the code itself costs
        "wall_not_preempted": percentiles(wall[ivcs == 0].tolist()),
        "minor_faults_per_call": {"mean": float(minf.mean()), "max": int(minf.max())},
        "major_faults": int(majf.sum()),
        "preempted_share": float((ivcs > 0).mean()),
        "gc_runs": int(gcs.sum()),
        "slowest_1pct": {
            "n": int(slow.sum()),
            "preempted": int((ivcs[slow] > 0).sum()),
            "with_faults": int((minf[slow] + majf[slow] > 0).sum()),
            "with_gc": int((gcs[slow] > 0).sum()),
            "mean_wall_minus_cpu_ms": float((wall[slow] - cpu[slow]).mean() * 1e3),
        },
    }


def memory_kib() -> dict[str, int]:
    """This process's resident memory by kind (/proc/self/smaps_rollup, KiB)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in ("Rss", "Anonymous", "AnonHugePages", "FilePmdMapped", "Private_Clean"):
            out[key] = int(value.split()[0])
    return out


def evict(directory: Path) -> None:
    """Drop the index files' clean, unmapped pages from the page cache (only ours: other
    processes' files stay cached), so the next open starts as after a reboot or reclaim."""
    for f in directory.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
