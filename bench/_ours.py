"""copilotd's side: worker processes that drive a daemon through ``copilot_client``.

Everything goes through the public client, as an application would use it:
``send_and_wait`` for a turn (the user message durable, the offline model's
answer streamed and durable), ``resume_session`` (one RPC: a durable
``session.resume`` event and the last 50 events), ``list_sessions_page``,
``ping``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Barrier
from typing import Any

from bench._procs import Timed, latency_summary, wait_at
from copilot_client import CopilotClient

WARMUP_TURNS = 2
# Resumed sessions of each size whose first turn is timed.
FIRST_TURNS = 3
# Latency figures are measured in interleaved rounds of this many calls of
# each kind, so that noise from a shared machine hits them all alike.
ROUND_CALLS = 10


def prompt(size: int, tag: str) -> str:
    text = f"{tag}: please summarise what we said so far and suggest the next step. "
    return (text * (size // len(text) + 1))[:size]


async def connect(socket_path: str) -> CopilotClient:
    client = CopilotClient(socket_path=socket_path, auto_start=False)
    await client.start()
    return client


# Load: turns and pings from several clients per process


async def _load(
    params: dict[str, Any],
    barrier: Barrier,
    prepare: Callable[[CopilotClient, str], Awaitable[Callable[[], Awaitable[object]]]],
) -> Timed:
    clients = [await connect(params["socket"]) for _ in range(params["clients"])]
    operations = [
        await prepare(client, f"{params['prefix']}-{params['index']}-{k}")
        for k, client in enumerate(clients)
    ]
    for operation in operations:
        for _ in range(WARMUP_TURNS):
            await operation()
    started = await asyncio.to_thread(wait_at, barrier)
    deadline = started + params["seconds"]
    timed = Timed(started=started, deadline=deadline)
    stop = params.get("stop")  # set by the parent to end the run early

    async def loop(operation: Callable[[], Awaitable[object]]) -> None:
        while (begin := time.monotonic()) < deadline and not (stop and stop.is_set()):
            await operation()
            timed.spans.append((begin, time.monotonic()))

    cpu = time.process_time()
    await asyncio.gather(*(loop(op) for op in operations))
    timed.extra["cpu_seconds"] = time.process_time() - cpu
    timed.deadline = min(deadline, time.monotonic())
    for client in clients:
        await client.stop()
    return timed


async def _turns(params: dict[str, Any], barrier: Barrier) -> Timed:
    async def prepare(client: CopilotClient, name: str) -> Callable[[], Awaitable[object]]:
        session = await client.create_session(session_id=name, model="gpt-5")
        text = prompt(params["prompt_bytes"], name)
        return lambda: session.send_and_wait(text, timeout=120)

    return await _load(params, barrier, prepare)


def turns_worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_turns(params, barrier))


# Latency probes: one client, sequential calls


async def _timed(operation: Callable[[], Awaitable[object]]) -> float:
    begin = time.monotonic()
    await operation()
    return time.monotonic() - begin


async def _probe(params: dict[str, Any], barrier: Barrier) -> Timed:
    client = await connect(params["socket"])
    resume_ids: dict[str, list[str]] = params["resume_ids"]
    turns: dict[str, int] = {size: 0 for size in resume_ids}

    async def resume(session_id: str) -> None:
        session = await client.resume_session(session_id)
        await session.destroy()

    def resumer(size: str) -> Callable[[], Awaitable[object]]:
        ids = resume_ids[size]

        def next_resume() -> Awaitable[None]:
            turns[size] += 1
            return resume(ids[turns[size] % len(ids)])

        return next_resume

    kinds: dict[str, Callable[[], Awaitable[object]]] = {
        "ping": client.ping,
        **{f"resume_{size}": resumer(size) for size in resume_ids},
        "list_first_page": lambda: client.list_sessions_page(page_size=50),
    }
    for operation in kinds.values():  # warm up: connection, caches, code paths
        for _ in range(3):
            await operation()
    started = await asyncio.to_thread(wait_at, barrier)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(max(1, params["calls"] // ROUND_CALLS)):
        for kind, operation in kinds.items():
            for _ in range(ROUND_CALLS):
                samples[kind].append(await _timed(operation))
    listed: list[int] = []

    async def full_listing() -> None:
        listed.append(len(await client.list_sessions()))

    samples["list_all"] = [await _timed(full_listing) for _ in range(params["full_listings"])]
    samples["create"] = []
    for number in range(params["calls"]):
        name = f"bench-create-{number}"
        samples["create"].append(await _timed(functools.partial(_create, client, name)))
    samples.update(await _first_turns(client, params))
    await client.stop()
    timed = Timed(started=started, deadline=time.monotonic())
    timed.extra = {kind: latency_summary(values) for kind, values in samples.items()}
    timed.extra["listed_sessions"] = listed
    return timed


async def _create(client: CopilotClient, name: str) -> None:
    session = await client.create_session(session_id=name, model="gpt-5")
    await session.destroy()


async def _first_turns(client: CopilotClient, params: dict[str, Any]) -> dict[str, list[float]]:
    """A resumed session's first turn, which is when its context is loaded."""
    text = prompt(params["prompt_bytes"], "first turn")
    samples: dict[str, list[float]] = {}
    for size, ids in params["resume_ids"].items():
        samples[f"first_turn_{size}"] = []
        for session_id in ids[: params["first_turns"]]:
            session = await client.resume_session(session_id)
            samples[f"first_turn_{size}"].append(
                await _timed(functools.partial(session.send_and_wait, text, timeout=300))
            )
            await session.destroy()
    return samples


def probe_worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_probe(params, barrier))


# Deleting a large session while another session keeps working


async def _delete(params: dict[str, Any], barrier: Barrier) -> Timed:
    client = await connect(params["socket"])
    started = await asyncio.to_thread(wait_at, barrier)
    await asyncio.sleep(params["delay"])
    begin = time.monotonic()
    await client.delete_session(params["session_id"])
    end = time.monotonic()
    await client.stop()
    timed = Timed(started=started, deadline=end, spans=[(begin, end)])
    return timed


def delete_worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_delete(params, barrier))
