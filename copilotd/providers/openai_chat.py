"""OpenAI Chat Completions, streaming, through the official ``openai`` SDK.

Serves OpenAI itself, Azure OpenAI (``type = "azure"``: deployments and
``api-version``) and every server that speaks the same API through its
``base_url``: Ollama, vLLM, llama.cpp's server, LM Studio, ….
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionToolParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

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
    OPENAI_CUSTOM_HEADERS,
    OPENAI_HEADER_VARIABLES,
    environment_headers,
    isolated_client,
)
from copilotd.providers.http_errors import sdk_errors
from copilotd.providers.settings import Connection

# The SDK insists on a credential; servers that need none (Ollama, vLLM)
# ignore this one.
NO_KEY = "no-key"


class OpenAIChatProvider(ModelProvider):
    def __init__(self, connection: Connection) -> None:
        self.name = connection.name
        self._label = f"{connection.type} provider {connection.name!r} at {connection.base_url}"
        self._connection = connection
        self._client = isolated_client(
            lambda headers: _client(connection, headers),
            connection.headers,
            {}
            if connection.use_environment
            else environment_headers(OPENAI_CUSTOM_HEADERS, OPENAI_HEADER_VARIABLES),
            openai.omit,
            "openai",
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        if self._connection.missing_secret:
            raise ProviderError(
                f"{self._label}: {self._connection.missing_secret}", error_type="configuration"
            )
        limit = request.max_output_tokens or openai.omit
        # Newer OpenAI models refuse max_tokens; older compatible servers know only it.
        modern = self._connection.max_tokens_param == "max_completion_tokens"
        usage: Usage | None = None
        with sdk_errors(openai, self._label, self._connection.timeout):
            response = await self._client.chat.completions.create(
                model=request.model,
                # The messages go in extra_body, which the SDK sends as given: its
                # per-message transform of `messages` (key aliases and file
                # encodings, which plain text never needs) costs about 0.25 ms
                # of event-loop time per message - 100 ms for 400 messages.
                messages=[],
                extra_body=_body(request),
                stream=True,
                stream_options=(
                    {"include_usage": True} if self._connection.stream_usage else openai.omit
                ),
                max_completion_tokens=limit if modern else openai.omit,
                max_tokens=openai.omit if modern else limit,
            )
            answered = False
            calls = _StreamedCalls()
            async with response:
                async for chunk in response:
                    if chunk.usage is not None:
                        usage = Usage(
                            # The SDK does not validate: a count the server left out is absent.
                            input_tokens=getattr(chunk.usage, "prompt_tokens", None),
                            output_tokens=getattr(chunk.usage, "completion_tokens", None),
                            cache_read_tokens=_cached_tokens(chunk.usage),
                            call_id=chunk.id or "",
                        )
                    for choice in chunk.choices:
                        if choice.delta is not None and choice.delta.tool_calls:
                            calls.add(choice.delta.tool_calls)
                        if choice.finish_reason or calls:
                            answered = True
                        if choice.delta is not None and choice.delta.content:
                            answered = True
                            yield TextDelta(choice.delta.content)
            if not answered:
                raise empty_answer_error(self._label)
        for call in calls.finished():
            yield call
        if usage is not None:
            yield usage

    async def aclose(self) -> None:
        await self._client.close()


def _client(connection: Connection, headers: Mapping[str, object]) -> openai.AsyncOpenAI:
    options: dict[str, Any] = {
        "max_retries": 0,  # RetryingProvider retries
        "timeout": openai.Timeout(connection.timeout, connect=connection.connect_timeout),
        # Omit values remove a header the SDK would add.
        "default_headers": cast("dict[str, str]", dict(headers)),
    }
    if connection.type == "azure":
        return openai.AsyncAzureOpenAI(
            azure_endpoint=connection.base_url,
            api_version=connection.api_version,
            api_key=None if connection.bearer_token else (connection.api_key or NO_KEY),
            azure_ad_token=connection.bearer_token,
            **options,
        )
    return openai.AsyncOpenAI(
        api_key=connection.api_key or connection.bearer_token or NO_KEY,
        base_url=connection.base_url,
        **options,
    )


def _cached_tokens(usage: Any) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return int(getattr(details, "cached_tokens", 0) or 0)


class _StreamedCalls:
    """The tool calls of a streamed answer, put together from their pieces.

    A call's first piece carries its index, id and name; the arguments come
    in fragments under the same index, and several calls may interleave.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, str, list[str]]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, pieces: Sequence[ChoiceDeltaToolCall]) -> None:
        for piece in pieces:
            index = self._index(piece)
            call_id, name, arguments = self._calls.setdefault(index, ("", "", []))
            function = piece.function
            if function is not None and function.arguments:
                arguments.append(function.arguments)
            self._calls[index] = (
                piece.id or call_id,
                (function.name if function is not None else None) or name,
                arguments,
            )

    def _index(self, piece: ChoiceDeltaToolCall) -> int:
        # The SDK does not validate: some servers (older Ollama) send each call
        # whole, with its id and no index.
        if isinstance(piece.index, int):
            return piece.index
        if piece.id or not self._calls:
            return max(self._calls, default=-1) + 1
        return max(self._calls)

    def finished(self) -> list[ToolCall]:
        # A call without arguments has "" on the wire; the model meant no arguments.
        return [
            ToolCall(call_id, name, "".join(arguments) or "{}")
            for _, (call_id, name, arguments) in sorted(self._calls.items())
        ]


def _body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    return body


def _tool(tool: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": json.loads(tool.parameters_json_schema),
        },
    }


def _call(call: ToolCall) -> ChatCompletionMessageToolCallParam:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }


def _message(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return ChatCompletionSystemMessageParam(role="system", content=message.content)
    if message.role == "assistant" and message.tool_calls:
        return ChatCompletionAssistantMessageParam(
            role="assistant",
            content=message.content or None,
            tool_calls=[_call(call) for call in message.tool_calls],
        )
    if message.role == "assistant":
        return ChatCompletionAssistantMessageParam(role="assistant", content=message.content)
    if message.role == "tool":
        return ChatCompletionToolMessageParam(
            role="tool", tool_call_id=message.tool_call_id, content=message.content
        )
    return ChatCompletionUserMessageParam(role="user", content=message.content)
