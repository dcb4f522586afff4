"""A client process that keeps writing while the daemon is killed under it.

Usage: python -m tests.support.clients.crash_worker NAME SESSIONS SEED PACE

Runs SESSIONS concurrent tasks. Each creates a session, sends it a few
messages one after another (each starts a turn, or queues behind the running
one), then moves on to a new session. Every other message goes through
``send_and_wait`` with no handler, the one-call path that rides out a crash
on its own (it is acknowledged when it returns the answer to that message).
Every write the daemon acknowledged is printed as a JSON line at once
({"create": id} or {"send": id, "id": message id}, with "answer": the answer's
event id when send_and_wait returned one); a write that failed (the
daemon was being killed) is retried as a new write, never reported. PACE is
the longest pause between two writes of a task, in seconds. The process ends
when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

from copilot_client import (
    CopilotClient,
    CopilotError,
    CopilotSession,
    DaemonUnavailableError,
    SessionExistsError,
)

MESSAGES_PER_SESSION = 6
# How long a send_and_wait may ride out restarts before it is tried again.
WAIT_TIMEOUT = 30.0
# While the daemon is down, calls fail at once; wait this long before the next try.
RETRY_PAUSE = 0.05


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def open_session(client: CopilotClient, session_id: str) -> CopilotSession:
    exists = False
    while True:
        try:
            if exists:
                return await client.resume_session(session_id)
            session = await client.create_session(session_id=session_id)
            say(create=session_id)
            return session
        except SessionExistsError:
            exists = True  # created, but the daemon died before it answered: not acknowledged
        except DaemonUnavailableError:
            await asyncio.sleep(RETRY_PAUSE)


async def send(session: CopilotSession, prompt: str) -> None:
    while True:
        try:
            message_id = await session.send(prompt)
        except DaemonUnavailableError:
            await asyncio.sleep(RETRY_PAUSE)
            continue
        say(send=session.session_id, id=message_id)
        return


async def send_and_wait(session: CopilotSession, prompt: str) -> None:
    while True:
        try:
            answer = await session.send_and_wait(prompt, timeout=WAIT_TIMEOUT)
        except (CopilotError, TimeoutError):
            await asyncio.sleep(RETRY_PAUSE)
            continue
        if answer is not None and answer.data.user_message_id:
            # Its turn was interrupted when there is no answer: recorded, but
            # its id is not known here, so it is not reported.
            # The answer too: the harness checks it is on disk after the next kill.
            say(send=session.session_id, id=answer.data.user_message_id, answer=answer.id)
        return


async def task(
    client: CopilotClient, name: str, slot: int, rng: random.Random, pace: float
) -> None:
    generation = 0
    while True:
        session = await open_session(client, f"{name}-{slot}-{generation}")
        for index in range(MESSAGES_PER_SESSION):
            prompt = f"message {index} of {session.session_id}"
            await (send_and_wait if index % 2 else send)(session, prompt)
            await asyncio.sleep(rng.uniform(0, pace))
        await session.destroy()
        generation += 1


async def main(name: str, sessions: int, seed: int, pace: float) -> None:
    rng = random.Random(seed)
    # Not ``async with``: that connects at once, and the daemon may be down at this
    # moment (killed by the harness); each call connects, and is retried, by itself.
    client = CopilotClient(auto_start=False)
    try:
        tasks = [
            asyncio.create_task(task(client, name, slot, random.Random(rng.random()), pace))
            for slot in range(sessions)
        ]
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        done, _ = await asyncio.wait([stdin_closed, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            if finished is not stdin_closed and finished.exception() is not None:
                say(error=repr(finished.exception()))
        for running in tasks:
            running.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
