"""Interleaved load: copilotd's turns, bare pings and the baseline's turns in alternating slots.

The machine these figures are compared on is shared, and its background load
changes by the second. Measured one after the other, two figures that should
be compared (turns/s against pings/s, ours against the baseline) can differ
by what the neighbours did in between. So every worker process holds all the
kinds of load of a run (a copilotd client, a ``SQLiteSession``) and they take
turns: slot 0 pings, slot 1 copilotd turns, slot 2 baseline turns, slot 3
pings again, and so on, all processes switching together. A figure counts
only operations that started after a slot's settling time (in-flight ones of
the previous kind finish first) and ended within the slot.
"""

from __future__ import annotations

import asyncio
import functools
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.synchronize import Barrier
from typing import Any

from bench._procs import CpuSampler, Timed, latency_summary, wait_at

Operation = Callable[[], Awaitable[object]]
# The start of each slot not counted: the previous kind's calls in flight end.
SETTLE_FRACTION = 0.1
WARMUP = 2

PINGS, TURNS, BASELINE = "pings", "copilotd", "baseline"


async def _prepare(params: dict[str, Any]) -> tuple[dict[str, list[Operation]], list[Any]]:
    """The operations of each kind, one per client, and what to close afterwards."""
    from bench import _ours

    operations: dict[str, list[Operation]] = {}
    closing: list[Any] = []
    names = [f"{params['prefix']}-{params['index']}-{k}" for k in range(params["clients"])]
    # Copilotd's turns on the daemon of ``socket``, and on any other daemons a
    # kind of its own is given (``turn_sockets``: kind -> socket).
    sockets = {TURNS: params["socket"], **params.get("turn_sockets", {})}
    for kind, socket in sockets.items():
        if kind not in params["kinds"] and not (kind == TURNS and PINGS in params["kinds"]):
            continue
        clients = [await _ours.connect(socket) for _ in names]
        closing += clients
        if kind == TURNS:
            operations[PINGS] = [client.ping for client in clients]
        turns: list[Operation] = []
        for client, name in zip(clients, names, strict=True):
            session = await client.create_session(session_id=name, model="gpt-5")
            text = _ours.prompt(params["prompt_bytes"], name)
            turns.append(functools.partial(session.send_and_wait, text, timeout=120))
        operations[kind] = turns
    if BASELINE in params["kinds"]:
        from bench import _baseline

        sessions = [_baseline.open_session(name, params["path"]) for name in names]
        closing += sessions
        items = _baseline.turn_items(params["prompt_bytes"], params["prefix"])
        operations[BASELINE] = [functools.partial(s.add_items, items) for s in sessions]
        params["synchronous"] = await _baseline.synchronous_setting(sessions[0])
    return {kind: operations[kind] for kind in params["kinds"]}, closing


async def _run(params: dict[str, Any], barrier: Barrier) -> Timed:
    operations, closing = await _prepare(params)
    for kind_operations in operations.values():
        for operation in kind_operations:
            for _ in range(WARMUP):
                await operation()
    started = await asyncio.to_thread(wait_at, barrier)
    slot, kinds = params["slot_seconds"], params["kinds"]
    timed = Timed(started=started, deadline=started + slot * params["slots"])
    slots: list[dict[str, Any]] = []
    timed.extra = {"slots": slots, "synchronous": params.get("synchronous")}

    async def loop(operation: Operation, spans: list[tuple[float, float]], end: float) -> None:
        while (begin := time.monotonic()) < end:
            await operation()
            spans.append((begin, time.monotonic()))

    async def cpu_at(moment: float, record: dict[str, Any], key: str) -> None:
        await asyncio.sleep(max(0.0, moment - time.monotonic()))
        record[key] = time.process_time()

    for number in range(params["slots"]):
        kind = kinds[number % len(kinds)]
        begin, end = started + number * slot, started + (number + 1) * slot
        settled = begin + SETTLE_FRACTION * slot
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        record: dict[str, Any] = {"kind": kind, "settled": settled, "end": end, "spans": []}
        slots.append(record)
        await asyncio.gather(
            cpu_at(settled, record, "cpu_settled"),
            cpu_at(end, record, "cpu_end"),
            *(loop(op, record["spans"], end) for op in operations[kind]),
        )
        timed.spans.extend(record["spans"])
    for resource in closing:
        result = resource.stop() if hasattr(resource, "stop") else resource.close()
        if asyncio.iscoroutine(result):
            await result
    return timed


def worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_run(params, barrier))


def jobs(
    kinds: Sequence[str], per_process: Sequence[int], common: dict[str, Any]
) -> list[tuple[Callable[[dict[str, Any], Barrier], Timed], dict[str, Any]]]:
    return [(worker, {**common, "kinds": list(kinds), "clients": n}) for n in per_process]


def figures(
    results: Sequence[Timed], kind: str, daemon_cpu: CpuSampler | None = None
) -> dict[str, Any]:
    """Throughput, latency, shares and CPU per operation of one kind, over its slots."""
    counts: list[int] = []
    latencies: list[float] = []
    client_cpu = 0.0
    windows: list[tuple[float, float]] = []
    for index, timed in enumerate(results):
        count = 0
        for slot in timed.extra["slots"]:
            if slot["kind"] != kind:
                continue
            inside = [(s, e) for s, e in slot["spans"] if s >= slot["settled"] and e <= slot["end"]]
            count += len(inside)
            latencies.extend(e - s for s, e in inside)
            client_cpu += slot["cpu_end"] - slot["cpu_settled"]
            if index == 0:
                windows.append((slot["settled"], slot["end"]))
        counts.append(count)
    slot_time = sum(end - begin for begin, end in windows)
    operations = sum(counts)
    mean = statistics.fmean(counts) if counts else math.nan
    shares = [c / mean if mean else math.nan for c in counts]
    result: dict[str, Any] = {
        "per_second": operations / slot_time if slot_time else math.nan,
        "measured_s": slot_time,
        "operations": operations,
        "shares": shares,
        "share_min": min(shares),
        "share_max": max(shares),
        "client_cpu_ms_per_operation": 1000 * client_cpu / max(1, operations),
        **latency_summary(latencies),
    }
    if daemon_cpu is not None:
        used = sum(daemon_cpu.between(begin, end) for begin, end in windows)
        result["daemon_cpu_ms_per_operation"] = 1000 * used / max(1, operations)
    return result
