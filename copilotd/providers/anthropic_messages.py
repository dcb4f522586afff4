"""Anthropic Messages, streaming, through the official ``anthropic`` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import anthropic
from anthropic.types import ToolParam

from copilotd.providers.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelProvider,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    empty_answer_error,
)
from copilotd.providers.environment import (
    ANTHROPIC_CUSTOM_HEADERS,
    environment_headers,
    isolated_client,
)
from copilotd.providers.http_errors import sdk_errors
from copilotd.providers.settings import ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS, Connection

# The SDK insists on a credential and would otherwise look for one in the
# environment and in profile files; a server that needs none ignores this.
NO_KEY = "no-key"


class AnthropicMessagesProvider(ModelProvider):
    def __init__(self, connection: Connection) -> None:
        self.name = connection.name
        self._label = f"anthropic provider {connection.name!r} at {connection.base_url}"
        self._connection = connection
        self._client = isolated_client(
            lambda headers: _client(connection, headers),
            connection.headers,
            {} if connection.use_environment else environment_headers(ANTHROPIC_CUSTOM_HEADERS),
            anthropic.omit,
            "anthropic",
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        if self._connection.missing_secret:
            raise ProviderError(
                f"{self._label}: {self._connection.missing_secret}", error_type="configuration"
            )
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache_read = cache_write = 0
        call_id = ""
        answered = False
        # Tool calls by content block index: id, name and the input's JSON pieces.
        calls: dict[int, tuple[str, str, list[str]]] = {}
        with sdk_errors(anthropic, self._label, self._connection.timeout):
            response = await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_output_tokens or ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS,
                messages=_alternating(request.messages),
                stream=True,
                system=system or anthropic.omit,
                **_tool_arguments(request),
            )
            async with response:
                async for event in response:
                    # The SDK does not validate: a count the server left out is absent.
                    if event.type == "message_start":
                        call_id = event.message.id
                        start = event.message.usage
                        input_tokens = getattr(start, "input_tokens", None)
                        output_tokens = getattr(start, "output_tokens", None)
                        cache_read = getattr(start, "cache_read_input_tokens", None) or 0
                        cache_write = getattr(start, "cache_creation_input_tokens", None) or 0
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        if event.delta.text:
                            answered = True
                            yield TextDelta(event.delta.text)
                    elif event.type == "content_block_delta" and (
                        event.delta.type == "input_json_delta" and event.index in calls
                    ):
                        calls[event.index][2].append(event.delta.partial_json)
                    elif event.type == "content_block_start":
                        if event.content_block.type == "tool_use":
                            answered = True
                            block = event.content_block
                            calls[event.index] = (block.id, block.name, [])
                    elif event.type == "message_delta":
                        answered = answered or bool(event.delta.stop_reason)
                        output_tokens = getattr(event.usage, "output_tokens", output_tokens)
            if not answered:
                raise empty_answer_error(self._label)
        for _, (tool_use_id, name, pieces) in sorted(calls.items()):
            # A call without input streams no piece; the model meant no arguments.
            yield ToolCall(tool_use_id, name, "".join(pieces) or "{}")
        yield Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            call_id=call_id,
        )

    async def aclose(self) -> None:
        await self._client.close()


def _client(connection: Connection, headers: Mapping[str, object]) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=None if connection.bearer_token else (connection.api_key or NO_KEY),
        auth_token=connection.bearer_token,
        base_url=connection.base_url,
        max_retries=0,  # RetryingProvider retries
        timeout=anthropic.Timeout(connection.timeout, connect=connection.connect_timeout),
        # Omit values remove a header the SDK would add.
        default_headers=cast("dict[str, str]", dict(headers)),
    )


GONE_TOOL = "no longer available: no client holding it is attached"


def _tool_arguments(request: ChatRequest) -> dict[str, Any]:
    """The request's ``tools`` (and ``tool_choice``).

    Anthropic refuses a history with tool blocks in a request that defines
    no tools, which is what a session gets once the clients holding its tools
    have gone: the tools the history called are then defined again, bare,
    and the model may not call them.
    """
    if request.tools:
        return {"tools": [_tool(tool) for tool in request.tools]}
    called = dict.fromkeys(call.name for m in request.messages for call in m.tool_calls)
    if not called:
        return {}
    return {
        "tools": [
            {"name": name, "description": GONE_TOOL, "input_schema": {"type": "object"}}
            for name in called
        ],
        "tool_choice": {"type": "none"},
    }


def _tool(tool: ToolSpec) -> ToolParam:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": json.loads(tool.parameters_json_schema),
    }


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """The message as content blocks: a tool result is a user's ``tool_result``, the
    calls of an assistant message its ``tool_use`` blocks after its text."""
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
        ]
    # The API refuses an empty text block (an assistant message may be calls only).
    blocks = [{"type": "text", "text": message.content}] if message.content else []
    blocks.extend(
        {"type": "tool_use", "id": call.call_id, "name": call.name, "input": _input(call)}
        for call in message.tool_calls
    )
    return blocks


def _input(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments_json)
    except ValueError:  # the API wants an object; the model wrote something else
        return {}


def _alternating(messages: Sequence[ChatMessage]) -> list[Any]:
    """The non-system messages, consecutive ones of the same role joined.

    A failed turn leaves a user message without an answer, so the history
    can hold two user messages in a row; the Messages API wants turns to
    alternate. Tool results are user messages there, so the results of one
    round and a user message after them join too (results first, as the API
    wants).
    """
    merged: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "user" if message.role == "tool" else message.role
        plain = message.role != "tool" and not message.tool_calls
        if merged and merged[-1]["role"] == role:
            last = merged[-1]
            if plain and isinstance(last["content"], str):
                last["content"] += "\n\n" + message.content
            else:
                if isinstance(last["content"], str):
                    last["content"] = [{"type": "text", "text": last["content"]}]
                last["content"].extend(_blocks(message))
        elif plain:
            merged.append({"role": role, "content": message.content})
        else:
            merged.append({"role": role, "content": _blocks(message)})
    return merged
