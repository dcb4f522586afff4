"""A client process holding the tool ``get_weather``, for the tool tests.

Usage: python -m tests.support.clients.tool_worker SESSION_ID ANSWER PENDING [PERMISSION [TOOL]]

Resumes the session with a handler for TOOL (default ``get_weather``) that prints
{"running": CALL_ID} and then answers ANSWER, or never answers when ANSWER is
"block" (the test then kills the process mid-call). PENDING is "continue" to
take over the calls left waiting (continue_pending_work=True) or "close" to
have them closed. PERMISSION is "skip" (the default: the tool is declared
with skip_permission), "approve_all" (PermissionHandler.approve_all),
"none" (no permission handler: the client denies by default) or "block" (a
handler that prints {"asked": REQUEST_ID} and never decides). Prints
{"ready": true} once attached, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from copilot_client import (
    CopilotClient,
    PermissionHandler,
    PermissionInvocation,
    PermissionRequest,
    Tool,
    ToolInvocation,
)
from copilot_client._permissions import PermissionHandlerFunc

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


async def main(
    session_id: str,
    answer: str,
    pending: str,
    permission: str = "skip",
    tool_name: str = "get_weather",
) -> None:
    async def get_weather(invocation: ToolInvocation) -> str:
        print(json.dumps({"running": invocation.tool_call_id}), flush=True)
        if answer == "block":
            await asyncio.Event().wait()
        return f"{answer} in {invocation.arguments.get('city')}"

    async def never_decide(request: PermissionRequest, invocation: PermissionInvocation) -> bool:
        print(json.dumps({"asked": request.request_id}), flush=True)
        await asyncio.Event().wait()
        return False

    handlers: dict[str, PermissionHandlerFunc] = {
        "approve_all": PermissionHandler.approve_all,
        "block": never_decide,
    }
    tool = Tool(
        tool_name,
        "The weather in a city",
        WEATHER_SCHEMA,
        get_weather,
        skip_permission=permission == "skip",
    )
    async with CopilotClient(auto_start=False) as client:
        session = await client.resume_session(
            session_id,
            tools=[tool],
            on_permission_request=handlers.get(permission),
            continue_pending_work=pending == "continue",
        )
        await session.attach()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
