"""Prometheus metrics: RPCs, turns, provider latency and errors, store size, sessions.

Served only with ``copilotd serve --metrics HOST:PORT``, and only on a
loopback address: the endpoint has no authentication.

* RPCs are counted and timed by a gRPC server interceptor (every service:
  the API, health, reflection).
* Turns and provider figures are read from the events the daemon publishes
  (``MeteredFanOut``), so the turn engine carries no metrics code: a turn
  lasts from its ``assistant.turn_start`` to its ``assistant.turn_end``; the
  provider's first-token latency runs from ``turn_start`` to the first
  delta; a provider error is a ``session.error``.
* Store size, session count, running turns and the memory of idle sessions'
  cached contexts are read when scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.runtime.metrics_address import MetricsAddress as MetricsAddress
from copilotd.runtime.metrics_address import MetricsAddressError as MetricsAddressError
from copilotd.sessions.fanout import FanOut

log = logging.getLogger(__name__)

NAMESPACE: Final = "copilotd"
# Turns wait on models: seconds to minutes.
TURN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RPC_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)


@dataclass
class _Turn:
    session_id: str
    started: float
    provider: str
    first_token_seen: bool = False


class Metrics:
    """The daemon's metrics in their own registry (nothing global is touched)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.rpcs = Counter(
            "rpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "rpc_duration_seconds",
            "Time from a call's arrival to its end (streams: the whole stream).",
            ["method"],
            namespace=NAMESPACE,
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.turns = Counter(
            "turns",
            "Turns ended, by outcome (completed, aborted, error, interrupted).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.turn_seconds = Histogram(
            "turn_duration_seconds",
            "Time from assistant.turn_start to assistant.turn_end.",
            ["provider"],
            namespace=NAMESPACE,
            buckets=TURN_BUCKETS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "provider_first_token_seconds",
            "Time from assistant.turn_start to the model's first streamed text.",
            ["provider"],
            namespace=NAMESPACE,
            buckets=TURN_BUCKETS,
            registry=self.registry,
        )
        self.provider_errors = Counter(
            "provider_errors",
            "Turns that failed (session.error), by provider and error type.",
            ["provider", "error_type"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.events = Counter(
            "events_persisted",
            "Events committed to the store, by type.",
            ["type"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self._turns: dict[str, _Turn] = {}
        self._provider_of: Callable[[str], str] = lambda session_id: "unknown"
        self._server: Any = None
        self.address = ""

    # -- wiring --------------------------------------------------------------------

    def watch(
        self,
        *,
        session_count: Callable[[], int],
        store_bytes: Callable[[], int],
        running_turns: Callable[[], int],
        provider_of: Callable[[str], str],
        idle_context_bytes: Callable[[], int],
    ) -> None:
        """Read the live figures at scrape time; name a session's provider for labels."""
        self._provider_of = provider_of
        self.registry.register(
            _LiveFigures(session_count, store_bytes, running_turns, idle_context_bytes)
        )

    def serve(self, address: MetricsAddress) -> str:
        """Start the HTTP endpoint (a thread); returns the ``host:port`` it listens on."""
        server, _thread = start_http_server(address.port, address.host, registry=self.registry)
        self._server = server
        host, port = str(server.server_address[0]), int(server.server_address[1])
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("metrics on http://%s/metrics", self.address)
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _RpcInterceptor(self)

    # -- events --------------------------------------------------------------------

    def observe(self, session_id: str, events: Sequence[SessionEvent]) -> None:
        now = time.monotonic()
        for event in events:
            if not event.ephemeral:
                self.events.labels(event.type).inc()
            if event.type == ev.ASSISTANT_TURN_START:
                turn_id = event.assistant_turn_start.turn_id
                self._turns[turn_id] = _Turn(session_id, now, self._provider_of(session_id))
            elif event.type == ev.ASSISTANT_MESSAGE_DELTA:
                turn = self._turns.get(event.assistant_message_delta.turn_id)
                if turn is not None and not turn.first_token_seen:
                    turn.first_token_seen = True
                    self.first_token_seconds.labels(turn.provider).observe(now - turn.started)
            elif event.type == ev.SESSION_ERROR:
                turn = self._turns.get(event.session_error.turn_id)
                provider = turn.provider if turn is not None else self._provider_of(session_id)
                self.provider_errors.labels(provider, event.session_error.error_type).inc()
            elif event.type == ev.ASSISTANT_TURN_END:
                data = event.assistant_turn_end
                outcome = ev.TurnEndReason.Name(data.reason).removeprefix("TURN_END_REASON_")
                self.turns.labels(outcome.lower()).inc()
                turn = self._turns.pop(data.turn_id, None)
                if turn is not None:
                    self.turn_seconds.labels(turn.provider).observe(now - turn.started)


class MeteredFanOut(FanOut[SessionEvent]):
    """The fan-out, also showing every published event to ``Metrics``."""

    def __init__(self, metrics: Metrics, **options: Any) -> None:
        super().__init__(**options)
        self._metrics = metrics

    def has_audience(self, key: str) -> bool:
        return True  # the metrics see every event

    def publish(self, session_id: str, events: Sequence[SessionEvent]) -> None:
        try:
            self._metrics.observe(session_id, events)
        except Exception:  # metrics must never stand in the way of events
            log.exception("metrics: observing events failed")
        super().publish(session_id, events)


class _LiveFigures(Collector):
    def __init__(
        self,
        session_count: Callable[[], int],
        store_bytes: Callable[[], int],
        running_turns: Callable[[], int],
        idle_context_bytes: Callable[[], int],
    ) -> None:
        self._figures = (
            ("sessions", "Sessions in the store.", session_count),
            ("store_size_bytes", "Bytes the store's data occupies.", store_bytes),
            ("turns_running", "Turns running now.", running_turns),
            (
                "idle_context_bytes",
                "Memory held by the cached model contexts of idle sessions (bounded).",
                idle_context_bytes,
            ),
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, documentation, read in self._figures:
            try:
                value = read()
            except Exception:  # the store is closing: leave the figure out
                continue
            yield GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class _RpcInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call, whatever its shape, by method and final status."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        record = self._recorder(method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _timed_unary(handler.stream_unary, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _timed_stream(handler.stream_stream, record),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _recorder(self, method: str) -> Callable[[str, float], None]:
        def record(code: str, seconds: float) -> None:
            self._metrics.rpcs.labels(method, code).inc()
            self._metrics.rpc_seconds.labels(method).observe(seconds)

        return record


def _final_code(context: Any, error: BaseException | None) -> str:
    """The status a call ended with, as the servicer set it."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class _CountedContext:
    """The call's context, passed on to the servicer, that counts an abort first.

    ``context.abort`` sends the status to the client at once, before the
    handler's exception reaches the interceptor: counting only afterwards
    would let a client that saw the error read metrics that do not count it
    yet.
    """

    def __init__(self, context: Any, record: Callable[[str], None]) -> None:
        self._context = context
        self._record = record
        self.counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> None:
        if not self.counted:
            self.counted = True
            self._record(code.name)
        await self._context.abort(code, details, *args)


def _timed_unary(
    behavior: Callable[[Any, Any], Awaitable[Any]], record: Callable[[str, float], None]
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def timed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        counted = _CountedContext(context, lambda code: record(code, time.perf_counter() - started))
        error: BaseException | None = None
        try:
            return await behavior(request, counted)
        except BaseException as raised:
            error = raised
            raise
        finally:
            if not counted.counted:
                record(_final_code(context, error), time.perf_counter() - started)

    return timed


def _timed_stream(
    behavior: Callable[[Any, Any], Any], record: Callable[[str, float], None]
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        counted = _CountedContext(context, lambda code: record(code, time.perf_counter() - started))
        error: BaseException | None = None
        try:
            result = behavior(request, counted)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:  # a handler that writes with context.write() and returns None
                await result
        except BaseException as raised:
            error = raised
            raise
        finally:
            if not counted.counted:
                record(_final_code(context, error), time.perf_counter() - started)

    return timed
