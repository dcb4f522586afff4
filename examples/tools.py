"""An app with one client-side tool that outlives the process meant to answer it.

Step "ask" creates the session ``weather-demo`` with the tool ``get_weather``
and asks for the weather in Paris. The model (the offline one: no network,
no key) calls the tool; this process's lookup hangs, as a slow service
would, and the process is killed in the middle of it (SIGKILL). The call
stays recorded in the daemon, waiting.

Step "resume", a new process, resumes the session with the same tool and
``continue_pending_work=True``: its handler runs the waiting call, the model
gets the result and answers, and the step prints the call, its result and
the final answer, then deletes the session.

Run both (the first process is killed by the second step's launcher):
    python examples/tools.py
Run one step:   python examples/tools.py ask|resume

The offline model calls a tool for each prompt line ``call NAME {JSON}``
naming a declared tool; a real model decides from the tool's description.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from copilot_client import (
    CopilotClient,
    PermissionHandler,
    SessionEvent,
    SessionEventType,
    SessionExistsError,
    SessionNotFoundError,
    Tool,
    ToolInvocation,
)

SESSION_ID = "weather-demo"
PROMPT = 'What is the weather in Paris?\ncall get_weather {"city": "Paris"}'
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
RUNNING = "tool running:"
# The tool only reads the weather: every call may run. Without a permission
# handler the client would deny its calls (deny by default).
APPROVE = PermissionHandler.approve_all


def weather_tool(*, service_down: bool) -> Tool:
    async def get_weather(invocation: ToolInvocation) -> str:
        print(RUNNING, invocation.tool_name, invocation.arguments, flush=True)
        if service_down:
            await asyncio.Event().wait()  # the lookup never returns: the process gets killed
        return f"sunny, 21 degrees in {invocation.arguments['city']}"

    return Tool("get_weather", "The current weather in a city", SCHEMA, get_weather)


async def ask() -> None:
    async with CopilotClient() as client:
        tools = [weather_tool(service_down=True)]
        try:
            session = await client.create_session(
                session_id=SESSION_ID, tools=tools, on_permission_request=APPROVE
            )
        except SessionExistsError:  # left by an earlier, interrupted run
            await client.delete_session(SESSION_ID)
            session = await client.create_session(
                session_id=SESSION_ID, tools=tools, on_permission_request=APPROVE
            )
        # Waits for the answer, which this process will not live to see.
        await session.send_and_wait(PROMPT, timeout=3600)


async def resume() -> None:
    async with CopilotClient() as client:
        turn_ended = asyncio.Event()

        def on_event(event: SessionEvent) -> None:
            if event.type is SessionEventType.ASSISTANT_TURN_END:
                turn_ended.set()

        # The waiting call goes to this process's handler as the session resumes.
        try:
            session = await client.resume_session(
                SESSION_ID,
                tools=[weather_tool(service_down=False)],
                on_permission_request=APPROVE,
                continue_pending_work=True,
            )
        except SessionNotFoundError:
            session = None
        if session is None or not session.metadata.turn_running:
            print(f"{SESSION_ID} waits for no tool call: run the ask step first", file=sys.stderr)
            sys.exit(1)
        session.on(on_event)  # from the resume on: the turn's end is not missed
        await turn_ended.wait()
        for event in await session.get_events():
            data = event.proto
            if event.type is SessionEventType.TOOL_EXECUTION_START:
                start = data.tool_execution_start
                print(f"call:   {start.tool_name} {start.arguments_json}")
            elif event.type is SessionEventType.TOOL_EXECUTION_COMPLETE:
                print(f"result: {data.tool_execution_complete.result.text_result_for_llm}")
            elif event.type is SessionEventType.ASSISTANT_MESSAGE and event.data.content:
                print(f"answer: {event.data.content}")
        await client.delete_session(SESSION_ID)


def both() -> None:
    """Runs "ask", kills it while its tool runs, then runs "resume"."""
    asking = subprocess.Popen([sys.executable, __file__, "ask"], stdout=subprocess.PIPE, text=True)
    assert asking.stdout is not None
    for line in asking.stdout:
        print("[ask]", line, end="")
        if line.startswith(RUNNING):
            break
    asking.kill()
    asking.wait()
    print("[ask] killed in the middle of the tool call")
    subprocess.run([sys.executable, __file__, "resume"], check=True)


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "both"
    if step == "both":
        both()
    else:
        asyncio.run({"ask": ask, "resume": resume}[step]())
