"""Client-side tools, in the Copilot SDK's shapes: ``Tool``, ``define_tool``,
``ToolInvocation`` and ``ToolResult``, and the runner that answers a session's
calls with the handlers.

The daemon records every call the model makes (``tool.execution_start``,
``external_tool.requested``) and waits, across restarts, for one result. A
session holding tools with handlers attaches to the session through its
event stream with those tools (``ToolClient``); the daemon sends each call
to ONE attached client holding its tool (``external_tool.assigned``, on
that client's stream only), and again to another if that client goes away
before answering. The runner runs the calls assigned to it and sends the
result with ``HandlePendingToolCall``; a result that comes second (another
client answered first) is told so and ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from copilot_client._errors import CopilotError, ToolCallAnsweredError, UnknownToolCallError
from copilot_client._permissions import PermissionHandlerFunc, PermissionRequest
from copilot_client._permissions import decide as decide_permission
from copilot_client._session_events import SessionEvent
from copilot_client.proto.v1 import copilot_pb2, events_pb2

log = logging.getLogger("copilot_client.tools")

ResultType = Literal["success", "failure", "rejected", "denied", "timeout"]
FAILED_FOR_THE_MODEL = "the tool failed; its client logged the details"


@dataclass(frozen=True)
class ToolInvocation:
    """One call of a tool by the model, as a handler receives it."""

    session_id: str
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    """The arguments the model gave, parsed from JSON."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool answers; ``text_result_for_llm`` is what the model sees."""

    text_result_for_llm: str
    result_type: ResultType = "success"
    error: str | None = None
    """For the client's eyes (never sent to the model)."""

    def to_proto(self) -> events_pb2.ToolResult:
        return events_pb2.ToolResult(
            text_result_for_llm=self.text_result_for_llm,
            result_type=self.result_type,
            error=self.error or "",
        )

    @classmethod
    def coerce(cls, value: object) -> ToolResult:
        """A handler's return value as a result: text as is, anything else as JSON."""
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, str):
            return cls(value)
        return cls(json.dumps(value, default=str))


ToolHandler = Callable[[ToolInvocation], Any]


@dataclass
class Tool:
    """A tool the model may call (the Copilot SDK's ``Tool``).

    Args:
        name: 1 to 64 letters, digits, ``_`` or ``-``; unique in a session.
        description: What the tool does, for the model.
        parameters: The JSON schema of its arguments (an object schema).
        handler: Runs a call and returns a string, a JSON-serialisable value
            or a ``ToolResult`` (it may be a coroutine function). Without a
            handler the tool is only declared: answer its calls with
            ``session.handle_pending_tool_call``.
        skip_permission: The call needs no permission request.
        is_terminal: The tool's result ends the turn: the model is not called
            again, and the turn's answer is the result's text.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    handler: ToolHandler | None = field(default=None, repr=False)
    skip_permission: bool = False
    is_terminal: bool = False

    def to_proto(self) -> events_pb2.ToolDefinition:
        return events_pb2.ToolDefinition(
            name=self.name,
            description=self.description,
            parameters_json_schema=json.dumps(self.parameters) if self.parameters else "",
            skip_permission=self.skip_permission,
            is_terminal=self.is_terminal,
            has_handler=self.handler is not None,
        )


F = TypeVar("F", bound=Callable[..., Any])


def _pydantic_model(function: Callable[..., Any]) -> Any:
    """The pydantic model the function's first parameter is annotated with, if any."""
    try:
        from pydantic import BaseModel
    except ImportError:  # the client needs only grpcio and protobuf
        return None
    parameters = list(inspect.signature(function, eval_str=True).parameters.values())
    if not parameters:
        return None
    annotation = parameters[0].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def define_tool(
    name: str | None = None,
    *,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    skip_permission: bool = False,
    is_terminal: bool = False,
) -> Callable[[Callable[..., Any]], Tool]:
    """Make a ``Tool`` of a function (the Copilot SDK's decorator).

    The parameters come from the function's first parameter when it is
    annotated with a pydantic model (the handler then receives the validated
    model), else from ``parameters`` (the handler receives the arguments as a
    dict). A second parameter, when the function has one, receives the
    ``ToolInvocation``. The description defaults to the docstring.
    """

    def decorate(function: Callable[..., Any]) -> Tool:
        model = _pydantic_model(function)
        schema = model.model_json_schema() if model is not None else parameters
        wants_invocation = len(inspect.signature(function).parameters) > 1

        async def handler(invocation: ToolInvocation) -> Any:
            arguments: Any = invocation.arguments
            if model is not None:
                arguments = model.model_validate(arguments)
            result = function(arguments, invocation) if wants_invocation else function(arguments)
            return await result if inspect.isawaitable(result) else result

        return Tool(
            name=name or function.__name__,
            description=description or inspect.getdoc(function) or "",
            parameters=schema,
            handler=handler,
            skip_permission=skip_permission,
            is_terminal=is_terminal,
        )

    return decorate


async def run_tool(tool: Tool, invocation: ToolInvocation) -> ToolResult:
    """The handler's result; an exception becomes a failure without its details."""
    assert tool.handler is not None
    try:
        value = tool.handler(invocation)
        if inspect.isawaitable(value):
            value = await value
        return ToolResult.coerce(value)
    except Exception:
        # The model sees that the tool failed, not the exception (it may hold
        # paths, keys or data the model should not be given).
        log.exception(
            "tool %s failed on call %s of session %s",
            tool.name,
            invocation.tool_call_id,
            invocation.session_id,
        )
        return ToolResult(FAILED_FOR_THE_MODEL, "failure", FAILED_FOR_THE_MODEL)


def invocation_of(
    session_id: str,
    call: events_pb2.ExternalToolRequestedData
    | events_pb2.PermissionRequestedData
    | copilot_pb2.PendingToolCall,
) -> ToolInvocation:
    try:
        arguments = json.loads(call.arguments_json) if call.arguments_json else {}
    except ValueError:
        arguments = {}
    return ToolInvocation(
        session_id,
        call.tool_call_id,
        call.tool_name,
        arguments if isinstance(arguments, dict) else {},
    )


def handled_tools(tools: Iterable[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools if tool.handler is not None}


Answer = Callable[[str, ToolResult], Awaitable[object]]
# (request id, approved, reason) to the daemon.
Decide = Callable[[str, bool, str], Awaitable[object]]


def permission_request_of(
    call: events_pb2.PermissionRequestedData | copilot_pb2.PendingToolCall,
) -> PermissionRequest:
    invocation = invocation_of("", call)
    return PermissionRequest(
        call.tool_call_id, call.tool_call_id, call.tool_name, invocation.arguments
    )


class ToolRunner:
    """Runs a session's requested calls with the handlers it holds, each once,
    and decides the permission requests of the tools it declared."""

    def __init__(
        self,
        session_id: str,
        tools: Iterable[Tool],
        answer: Answer,
        decide: Decide,
        on_permission_request: PermissionHandlerFunc | None = None,
    ) -> None:
        self._session_id = session_id
        tools = list(tools)
        self._tools = handled_tools(tools)
        # The requests this client decides: those of the tools it would run
        # (denied when it has no permission handler), and of every tool it
        # declared when it has one. A tool only declared, with no permission
        # handler, is left to another client or to the app.
        self._guarded = {
            tool.name
            for tool in tools
            if not tool.skip_permission
            and (tool.handler is not None or on_permission_request is not None)
        }
        self._answer = answer
        self._decide = decide
        self._on_permission_request = on_permission_request
        self._has_permission_handler = on_permission_request is not None
        self._started: set[str] = set()
        self._asked: set[str] = set()
        # Calls whose handler runs now: told to the daemon on every re-attach,
        # so that a call this client is running stays its own.
        self._running: set[str] = set()
        # Strong references: the loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._tools or self._guarded)

    def tool_client(self, client_id: str) -> copilot_pb2.ToolClient:
        """How this client attaches to the session: what it runs and decides."""
        return copilot_pb2.ToolClient(
            client_id=client_id,
            tools=[tool.to_proto() for tool in self._tools.values()],
            permission_tools=sorted(self._guarded),
            permission_handler=self._has_permission_handler,
            running_calls=sorted(self._running),
        )

    def on_event(self, event: SessionEvent) -> None:
        # Only what the daemon assigned to this client: the requests every
        # subscriber sees are another client's to answer as often as not.
        if event.type_name == "external_tool.assigned":
            self.start(invocation_of(self._session_id, event.proto.external_tool_assigned))
        elif event.type_name == "permission.assigned":
            self.ask(permission_request_of(event.proto.permission_assigned))

    def ask(self, request: PermissionRequest) -> None:
        """Decide ``request`` (once) if this session declared its tool."""
        if request.tool_name not in self._guarded or request.request_id in self._asked:
            return
        self._asked.add(request.request_id)
        self._spawn(self._ask(request), f"copilot-permission-{request.request_id}")

    async def _ask(self, request: PermissionRequest) -> None:
        result = await decide_permission(self._on_permission_request, request, self._session_id)
        try:
            await self._decide(request.request_id, result.approved, result.reason or "")
        except (ToolCallAnsweredError, UnknownToolCallError) as error:
            # Another client decided first, or the call was closed meanwhile.
            log.info("permission decision %s not recorded: %s", request.request_id, error)
        except CopilotError:
            log.exception("permission decision %s could not be sent", request.request_id)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, invocation: ToolInvocation) -> None:
        tool = self._tools.get(invocation.tool_name)
        if tool is None or invocation.tool_call_id in self._started:
            return
        self._started.add(invocation.tool_call_id)
        self._spawn(self._run(tool, invocation), f"copilot-tool-{invocation.tool_call_id}")

    async def _run(self, tool: Tool, invocation: ToolInvocation) -> None:
        call_id = invocation.tool_call_id
        self._running.add(call_id)
        try:
            result = await run_tool(tool, invocation)
            await self._answer(call_id, result)
        except (ToolCallAnsweredError, UnknownToolCallError) as error:
            # Another client answered first, or the call was closed meanwhile.
            log.info("result of tool call %s not recorded: %s", call_id, error)
        except CopilotError:
            # Not recorded (the daemon was away): the call is still open, and
            # the daemon may assign it here again; run it again then.
            self._started.discard(call_id)
            log.exception("result of tool call %s could not be sent", call_id)
        finally:
            self._running.discard(call_id)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
