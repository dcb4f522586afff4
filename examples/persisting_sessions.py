"""The session-persistence recipe, in two separate processes.

Step 1 creates ``user-123-conversation`` and talks; the process exits.
Step 2, a new process, resumes the session, asks "What were we discussing?",
prints the answer, lists sessions, prints the history and deletes the session.

Run both steps:      python examples/persisting_sessions.py
Run one step:        python examples/persisting_sessions.py create|resume

The client starts copilotd in the background if it is not running (it keeps
running afterwards; ``copilotd status`` shows its pid). Run it again after an
interruption: a session left by an earlier run is continued, not an error.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from copilot_client import (
    CopilotClient,
    MessageOptions,
    SessionConfig,
    SessionExistsError,
    SessionNotFoundError,
)

SESSION_ID = "user-123-conversation"


async def create_and_talk() -> None:
    client = CopilotClient()
    await client.start()

    # Create session with a memorable ID
    try:
        session = await client.create_session(
            SessionConfig(
                session_id=SESSION_ID,
                model="gpt-5",
            )
        )
    except SessionExistsError:
        # An earlier run stopped before its last step deleted the session.
        print(f"{SESSION_ID} is left from an earlier run: continuing it")
        session = await client.resume_session(SESSION_ID)

    answer = await session.send_and_wait(MessageOptions(prompt="Let's discuss TypeScript generics"))
    print("assistant:", answer.data.content if answer else None)

    # Session ID is preserved
    print(session.session_id)  # "user-123-conversation"

    # Destroy session but keep data on disk
    await session.destroy()
    await client.stop()


async def resume_and_finish() -> None:
    client = CopilotClient()
    await client.start()

    # Resume the previous session
    try:
        session = await client.resume_session(SESSION_ID)
    except SessionNotFoundError:
        print(f"no session {SESSION_ID} to resume: run the create step first", file=sys.stderr)
        await client.stop()
        sys.exit(1)

    # Previous context is restored
    answer = await session.send_and_wait(MessageOptions(prompt="What were we discussing?"))
    print("assistant:", answer.data.content if answer else None)

    sessions = await client.list_sessions()
    for s in sessions:
        print("Session:", s.session_id)

    messages = await session.get_messages()
    for msg in messages:
        print(f"[{msg.type}] {msg.data.content}")

    await session.destroy()

    # Remove session and all its data from disk
    await client.delete_session(SESSION_ID)
    await client.stop()


def main() -> None:
    steps = {"create": create_and_talk, "resume": resume_and_finish}
    if len(sys.argv) > 1:
        asyncio.run(steps[sys.argv[1]]())
        return
    for step in steps:
        print(f"--- process: {step} ---", flush=True)
        subprocess.run([sys.executable, __file__, step], check=True)


if __name__ == "__main__":
    main()
