"""A real HTTP server on 127.0.0.1 that speaks the model providers' streaming wire formats.

It stands in for OpenAI, Azure OpenAI and Anthropic (the only parts of the
tests that are outside this machine): an aiohttp server on an ephemeral port,
in its own thread with its own event loop, as a remote server would be.

* ``POST /v1/chat/completions`` and ``POST /openai/deployments/{name}/chat/completions``
  answer in the OpenAI Chat Completions streaming format (server-sent events
  of ``chat.completion.chunk`` objects, a usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``).
* ``POST /v1/messages`` answers in the Anthropic Messages streaming format
  (``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta``…, ``content_block_stop``, ``message_delta`` with
  the usage, ``message_stop``).
* Errors use each API's JSON error body, with ``Retry-After`` when asked.
* Tool calls (``Reply(calls=...)``) stream as OpenAI ``tool_calls`` deltas or
  Anthropic ``tool_use`` blocks, their arguments split across chunks. Like a
  real provider, the server is strict about the history: a request with a
  tool call and no result for it, or a result with no call before it (or,
  for Anthropic, tool blocks and no ``tools``), gets ``400`` with the API's
  error body (and is recorded, outcome "refused").

Every request is recorded (path, query, headers, JSON body, how it ended).
Tests script the replies: ``server.script(Reply(...), ...)`` queues replies
for the next requests; with none queued, the server answers with
``default_text``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Upper bound on waiting for the server to see something; reaching it fails the test.
WAIT_TIMEOUT = 30.0


# Characters of a call's JSON arguments per streamed fragment: small, so that
# every call's arguments arrive in several pieces, as real providers send them.
ARGUMENT_PIECE = 7


@dataclass(frozen=True)
class Call:
    """A tool call for the server to stream (its id: ``call_N`` in the reply's order)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str = ""


@dataclass(frozen=True)
class Reply:
    """What the server does with one request.

    Args:
        chunks: text pieces to stream (one SSE chunk each).
        delay: seconds to wait before each chunk.
        status: an HTTP error status to answer with instead of a stream.
        message: the error message (in the API's JSON error body).
        retry_after: value of the ``Retry-After`` header of an error.
        drop: close the connection without an answer (before any byte), or,
            with ``drop_after_chunks``, after that many chunks.
        drop_after_chunks: see ``drop``.
        hang: send nothing until the client gives up.
        usage: (input_tokens, output_tokens) to report; default: counted words.
            A None count is left out of the usage the server sends.
        body: the JSON error body to answer with (with ``status``), instead of
            the API's own shape (e.g. FastAPI's ``{"detail": ...}``).
        empty: answer ``200 OK`` with an event stream that has no event at
            all, as llama.cpp's server does for a prompt over its context.
        gate: hold the stream after its first chunk until this is set (the
            test does something while the turn is under way).
        calls: tool calls to stream after the text, in one assistant message.
        whole_calls: (OpenAI) send each call in one chunk with no ``index``,
            as some compatible servers (older Ollama) do.
    """

    chunks: tuple[str, ...] = ()
    delay: float = 0.0
    status: int = 0
    message: str = ""
    retry_after: str | None = None
    drop: bool = False
    drop_after_chunks: int | None = None
    hang: bool = False
    usage: tuple[int | None, int | None] | None = None
    body: dict[str, Any] | None = None
    empty: bool = False
    gate: threading.Event | None = None
    calls: tuple[Call, ...] = ()
    whole_calls: bool = False


def calls(*asked: Call, text: tuple[str, ...] = ()) -> Reply:
    """A reply asking for ``asked`` (each gets an id ``call_<name>_<n>`` unless it has one)."""
    named = tuple(
        call if call.call_id else Call(call.name, call.arguments, f"call_{call.name}_{n}")
        for n, call in enumerate(asked)
    )
    return Reply(chunks=text, calls=named)


def stream(
    *chunks: str, delay: float = 0.0, usage: tuple[int | None, int | None] | None = None
) -> Reply:
    return Reply(chunks=chunks, delay=delay, usage=usage)


def error(status: int, message: str, retry_after: str | None = None) -> Reply:
    return Reply(status=status, message=message, retry_after=retry_after)


@dataclass
class Request:
    """A request the server received and how it ended."""

    api: str  # "openai", "azure" or "anthropic"
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float  # time.monotonic() in the server
    chunks_sent: int = 0
    outcome: str = "running"  # "completed", "error", "refused", "dropped", "disconnected"
    ended_at: float | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


@dataclass
class _State:
    lock: threading.Condition = field(default_factory=threading.Condition)
    requests: list[Request] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)


class FakeModelServer:
    """The server, running in a background thread; use as a context manager."""

    def __init__(self, default_text: str = "Hello from the fake model.") -> None:
        self.default_text = default_text
        self._state = _State()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifetime -------------------------------------------------------------

    def start(self) -> FakeModelServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT_TIMEOUT)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure)
        app.router.add_post("/v1/messages", self._anthropic)
        # Cancel a handler when its client goes away, as a real server notices.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(
                WAIT_TIMEOUT
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_TIMEOUT)

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting and inspection --------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue ``replies`` for the next requests, in order."""
        with self._state.lock:
            self._state.replies.extend(replies)

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.requests)

    def wait_for(self, condition: Callable[[list[Request]], bool]) -> list[Request]:
        """Block until ``condition(requests)`` holds (checked on every change)."""
        with self._state.lock:
            if not self._state.lock.wait_for(lambda: condition(self._state.requests), WAIT_TIMEOUT):
                raise TimeoutError(f"fake model server: condition not met: {self._state.requests}")
            return list(self._state.requests)

    async def wait_for_async(self, condition: Callable[[list[Request]], bool]) -> list[Request]:
        return await asyncio.to_thread(self.wait_for, condition)

    @contextlib.contextmanager
    def _recording(self, request: Request) -> Iterator[None]:
        self._update(lambda: self._state.requests.append(request))
        try:
            yield
        except (asyncio.CancelledError, ConnectionResetError):
            self._end(request, "disconnected")
            raise
        if request.outcome == "running":
            self._end(request, "completed")

    def _update(self, change: Callable[[], object]) -> None:
        with self._state.lock:
            change()
            self._state.lock.notify_all()

    def _end(self, request: Request, outcome: str) -> None:
        def change() -> None:
            request.outcome = outcome
            request.ended_at = time.monotonic()

        self._update(change)

    def _next_reply(self) -> Reply:
        with self._state.lock:
            if self._state.replies:
                return self._state.replies.pop(0)
        return Reply(chunks=tuple(_split(self.default_text)))

    # -- handlers ---------------------------------------------------------------

    async def _receive(self, http: web.Request, api: str) -> Request:
        return Request(
            api=api,
            path=http.path,
            query=dict(http.query),
            headers={k.lower(): v for k, v in http.headers.items()},
            body=await http.json(),
            received_at=time.monotonic(),
        )

    async def _openai(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(await self._receive(http, "openai"), http)

    async def _azure(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(await self._receive(http, "azure"), http)

    async def _anthropic(self, http: web.Request) -> web.StreamResponse:
        return await self._serve(await self._receive(http, "anthropic"), http)

    async def _serve(self, request: Request, http: web.Request) -> web.StreamResponse:
        problem = _tool_history_problem(request)
        if problem is not None:
            # Refused before a reply is taken: the scripted one waits for a valid request.
            with self._recording(request):
                self._end(request, "refused")
                return _error_response(request.api, Reply(status=400, message=problem))
        reply = self._next_reply()
        with self._recording(request):
            if reply.hang:
                await asyncio.Event().wait()  # until the client disconnects
            if reply.drop and reply.drop_after_chunks is None:
                self._end(request, "dropped")
                _drop(http)
                return web.Response()
            if reply.status:
                self._end(request, "error")
                return _error_response(request.api, reply)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(http)
            if reply.empty:
                await response.write_eof()
                return response
            events = _anthropic_events if request.api == "anthropic" else _openai_events
            for kind, payload in events(request, reply):
                if kind == "chunk":
                    if reply.drop_after_chunks is not None and (
                        request.chunks_sent >= reply.drop_after_chunks
                    ):
                        self._end(request, "dropped")
                        _drop(http)
                        return response
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                await response.write(payload)
                if kind == "chunk":
                    self._update(lambda: setattr(request, "chunks_sent", request.chunks_sent + 1))
                    if reply.gate is not None and request.chunks_sent == 1:
                        await asyncio.to_thread(reply.gate.wait, WAIT_TIMEOUT)
            await response.write_eof()
            return response


def _drop(http: web.Request) -> None:
    transport = http.transport
    if transport is not None:
        transport.abort()


def _split(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {body}\n\n".encode()


def _usage(request: Request, reply: Reply) -> tuple[int | None, int | None]:
    if reply.usage is not None:
        return reply.usage
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in request.messages)
    return prompt_words, sum(len(c.split()) for c in reply.chunks)


def _openai_events(request: Request, reply: Reply) -> Iterator[tuple[str, bytes]]:
    model = request.body.get("model") or request.path.split("/")[3]
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield "meta", _sse(chunk({"role": "assistant", "content": ""}))
    for text in reply.chunks:
        yield "chunk", _sse(chunk({"content": text}))
    for index, call in enumerate(reply.calls):
        if reply.whole_calls:
            function = {"name": call.name, "arguments": json.dumps(call.arguments)}
            whole = {"id": call.call_id, "type": "function", "function": function}
            yield "chunk", _sse(chunk({"tool_calls": [whole]}))
            continue
        start = {"index": index, "id": call.call_id, "type": "function"}
        function = {"name": call.name, "arguments": ""}
        yield "chunk", _sse(chunk({"tool_calls": [{**start, "function": function}]}))
        for piece in _pieces(call):
            fragment = {"index": index, "function": {"arguments": piece}}
            yield "chunk", _sse(chunk({"tool_calls": [fragment]}))
    yield "meta", _sse(chunk({}, "tool_calls" if reply.calls else "stop"))
    if request.body.get("stream_options", {}).get("include_usage"):
        prompt, completion = _usage(request, reply)
        counts = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage = {key: count for key, count in counts.items() if count is not None}
        if prompt is not None and completion is not None:
            usage["total_tokens"] = prompt + completion
        yield "meta", _sse({**base, "choices": [], "usage": usage})
    yield "meta", _sse("[DONE]")


def _anthropic_events(request: Request, reply: Reply) -> Iterator[tuple[str, bytes]]:
    prompt, completion = _usage(request, reply)
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": request.body.get("model"),
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {} if prompt is None else {"input_tokens": prompt, "output_tokens": 1},
    }
    yield "meta", _sse({"type": "message_start", "message": message}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield "meta", _sse(block, "content_block_start")
    yield "meta", _sse({"type": "ping"}, "ping")
    for text in reply.chunks:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        yield "chunk", _sse(delta, "content_block_delta")
    yield "meta", _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    for index, call in enumerate(reply.calls, start=1):
        use = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
        start = {"type": "content_block_start", "index": index, "content_block": use}
        yield "chunk", _sse(start, "content_block_start")
        for piece in _pieces(call):
            delta = {"type": "input_json_delta", "partial_json": piece}
            fragment = {"type": "content_block_delta", "index": index, "delta": delta}
            yield "chunk", _sse(fragment, "content_block_delta")
        yield "meta", _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if reply.calls else "end_turn", "stop_sequence": None},
        "usage": {} if completion is None else {"output_tokens": completion},
    }
    yield "meta", _sse(end, "message_delta")
    yield "meta", _sse({"type": "message_stop"}, "message_stop")


def _pieces(call: Call) -> list[str]:
    text = json.dumps(call.arguments)
    return [text[i : i + ARGUMENT_PIECE] for i in range(0, len(text), ARGUMENT_PIECE)]


def _tool_history_problem(request: Request) -> str | None:
    """What a strict provider says of a history whose calls and results do not pair up."""
    if request.api == "anthropic":
        uses_tools = any(
            _blocks(m, "tool_use") or _blocks(m, "tool_result") for m in request.messages
        )
        if uses_tools and not request.body.get("tools"):
            return "Requests which include `tool_use` or `tool_result` blocks must define tools."
        return _anthropic_history_problem(request.messages)
    return _openai_history_problem(request.messages)


def _openai_history_problem(messages: list[dict[str, Any]]) -> str | None:
    """OpenAI's rule: each ``tool_calls`` message is followed by one ``tool`` message per
    call, and a ``tool`` message answers a call of the assistant message before it."""
    unanswered: set[str] = set()
    for index, message in enumerate(messages):
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in unanswered:
                return (
                    f"Invalid parameter: messages[{index}]: messages with role 'tool' must be "
                    f"a response to a preceding message with 'tool_calls' ({call_id!r})."
                )
            unanswered.discard(call_id)
            continue
        if unanswered:
            break
        if message.get("role") == "assistant":
            unanswered = {call["id"] for call in message.get("tool_calls") or ()}
    if unanswered:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(sorted(unanswered))}"
        )
    return None


def _blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [block for block in content if block.get("type") == kind]


def _anthropic_history_problem(messages: list[dict[str, Any]]) -> str | None:
    """Anthropic's rule: the ``tool_use`` blocks of an assistant message are answered by
    ``tool_result`` blocks in the very next (user) message, and only those."""
    used: set[str] = set()
    for index, message in enumerate(messages):
        results = {block["tool_use_id"] for block in _blocks(message, "tool_result")}
        if results - used:
            return (
                f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(sorted(results - used))}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message."
            )
        if used - results:
            return (
                f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(used - results))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )
        used = {block["id"] for block in _blocks(message, "tool_use")}
    if used:
        return (
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
            f"blocks immediately after: {', '.join(sorted(used))}. Each `tool_use` block must "
            "have a corresponding `tool_result` block in the next message."
        )
    return None


_OPENAI_ERROR_TYPES = {401: "invalid_request_error", 429: "requests", 403: "permission_error"}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _error_response(api: str, reply: Reply) -> web.Response:
    headers = {}
    if reply.retry_after is not None:
        headers["Retry-After"] = reply.retry_after
    if reply.body is not None:
        body: dict[str, Any] = reply.body
    elif api == "anthropic":
        body = {
            "type": "error",
            "error": {
                "type": _ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error"),
                "message": reply.message,
            },
        }
        headers["request-id"] = "req_fake"
    else:
        body = {
            "error": {
                "message": reply.message,
                "type": _OPENAI_ERROR_TYPES.get(reply.status, "server_error"),
                "param": None,
                "code": None,
            }
        }
    return web.json_response(body, status=reply.status, headers=headers)
