"""Client load from several processes, and the arithmetic of what they measured.

Workers are separate Python processes (``spawn``: nothing of the parent's
gRPC state is inherited). Each prepares (connects, creates its sessions, warms
up), waits at a shared barrier, then runs its load until a deadline and
returns what it timed. All clocks are ``time.monotonic`` (CLOCK_MONOTONIC, the
same in every process), so the parent can line the processes up.
"""

from __future__ import annotations

import bisect
import math
import multiprocessing
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier, Event
from typing import Any

_CONTEXT = multiprocessing.get_context("spawn")
BARRIER_TIMEOUT = 300.0


@dataclass
class Timed:
    """What one worker process measured.

    Attributes:
        started: when its load began (after the barrier).
        deadline: when it stopped starting new operations.
        spans: (start, end) of every operation, all clients of the process.
        extra: anything else the worker reports.
    """

    started: float
    deadline: float
    spans: list[tuple[float, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


Worker = Callable[[dict[str, Any], Barrier], Timed]


def _run_worker(worker: Worker, params: dict[str, Any], barrier: Barrier, results: Any) -> None:
    try:
        results.put((params["index"], worker(params, barrier)))
    except BaseException:
        barrier.abort()
        results.put((params["index"], traceback.format_exc()))


def run_processes(
    jobs: Sequence[tuple[Worker, dict[str, Any]]], on_start: Callable[[], None] | None = None
) -> list[Timed]:
    """Run each ``(worker, params)`` in its own process, released together; results in order.

    ``on_start`` is called in this process when the workers are released.
    """
    barrier = _CONTEXT.Barrier(len(jobs) + (on_start is not None))
    results = _CONTEXT.Queue()
    processes = [
        _CONTEXT.Process(
            target=_run_worker, args=(worker, {**p, "index": i}, barrier, results), daemon=True
        )
        for i, (worker, p) in enumerate(jobs)
    ]
    for process in processes:
        process.start()
    collected: dict[int, Timed] = {}
    failures: list[str] = []
    try:
        if on_start is not None:
            try:
                barrier.wait(BARRIER_TIMEOUT)
                on_start()
            except threading.BrokenBarrierError:
                pass  # a worker failed; its traceback is in the results
        for _ in processes:
            index, result = results.get(timeout=BARRIER_TIMEOUT + 600)
            if isinstance(result, str):
                failures.append(result)
            else:
                collected[index] = result
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    if failures:
        raise RuntimeError("a benchmark worker failed:\n" + failures[0])
    return [collected[i] for i in range(len(jobs))]


class CpuSampler:
    """Samples a process's CPU time in a thread, to read it over any window later.

    Args:
        read: returns the process's CPU seconds so far.
        interval: seconds between samples.
    """

    def __init__(self, read: Callable[[], float], interval: float = 0.05) -> None:
        self._read = read
        self._interval = interval
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self._samples.append((time.monotonic(), self._read()))
            if self._stop.wait(self._interval):
                return

    def between(self, start: float, end: float) -> float:
        """CPU seconds used from ``start`` to ``end`` (interpolated between samples)."""
        return self._at(end) - self._at(start)

    def _at(self, moment: float) -> float:
        times = [t for t, _ in self._samples]
        i = bisect.bisect_left(times, moment)
        if i == 0:
            return self._samples[0][1]
        if i == len(times):
            return self._samples[-1][1]
        (t0, c0), (t1, c1) = self._samples[i - 1], self._samples[i]
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0)


def shared_event() -> Event:
    """An event the parent can set and workers see (pass it in a worker's params)."""
    return _CONTEXT.Event()


def wait_at(barrier: Barrier) -> float:
    """Wait for every process of the run; returns the start time."""
    barrier.wait(BARRIER_TIMEOUT)
    return time.monotonic()


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over at most ``parts`` processes, as evenly as possible."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# Arithmetic


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds, and the count."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
    }
