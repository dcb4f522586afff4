"""Watching copilotd with standard tools: gRPC reflection, JSON logs, Prometheus metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from copilot_client import CopilotClient, SessionNotFoundError
from copilotd import events as ev
from copilotd.runtime import metrics as metrics_module
from copilotd.runtime.metrics import Metrics, MetricsAddress, MetricsAddressError
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer
from tests.support.metrics import scrape, start_metered, value

# -- reflection ----------------------------------------------------------------------------


def test_reflection_lists_the_services_and_is_enough_to_call_them(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "copilot.v1.CopilotService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services

        # What a generic tool (grpcurl, Postman, evans) does: learn the schema from
        # the server, then call a method knowing nothing else.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("copilot.v1.CopilotService")
        methods = {method.name for method in service.methods}
        assert {"CreateSession", "SendMessage", "StreamEvents", "GetDaemonStatus"} <= methods
        ping = service.FindMethodByName("Ping")
        request_class = message_factory.GetMessageClass(ping.input_type)
        response_class = message_factory.GetMessageClass(ping.output_type)
        # Both message classes exist only at run time, built from the schema.
        call: grpc.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
            "/copilot.v1.CopilotService/Ping",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        response = call(request_class(), timeout=30)
        assert response.version
        status_type = pool.FindMessageTypeByName("copilot.v1.SessionMetadata")
        assert "pinned" in status_type.fields_by_name


# -- logs ----------------------------------------------------------------------------------


def test_json_logs(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, ["--log-json"]).start()
    try:
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    records = [json.loads(line) for line in daemon.output]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    messages = [record["message"] for record in records]
    assert any(f"serving on unix:{daemon.socket_path}" in message for message in messages)
    assert messages[-1] == "stopped; store closed cleanly"


# -- metrics -------------------------------------------------------------------------------


@pytest.fixture
def metered(short_tmp: Path) -> Iterator[tuple[DaemonProcess, str]]:
    daemon, url = start_metered(short_tmp)
    yield daemon, url
    daemon.kill()


async def test_metrics_move_when_turns_run(metered: tuple[DaemonProcess, str]) -> None:
    daemon, url = metered
    before = scrape(url)
    assert value(before, "copilotd_turns_total", outcome="completed") == 0
    assert value(before, "copilotd_sessions") == 0

    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="measured")
        await session.send_and_wait("one")
        await session.send_and_wait("two")
        with pytest.raises(SessionNotFoundError):
            await client.delete_session("missing")
    after = scrape(url)

    send = "/copilot.v1.CopilotService/SendMessageAndWait"  # send_and_wait, no handlers
    assert value(after, "copilotd_rpc_requests_total", method=send, code="OK") == 2
    assert value(after, "copilotd_rpc_duration_seconds_count", method=send) == 2
    delete = "/copilot.v1.CopilotService/DeleteSession"
    assert value(after, "copilotd_rpc_requests_total", method=delete, code="NOT_FOUND") == 1
    assert value(after, "copilotd_turns_total", outcome="completed") == 2
    assert value(after, "copilotd_turn_duration_seconds_count", provider="offline") == 2
    assert value(after, "copilotd_provider_first_token_seconds_count", provider="offline") == 2
    assert value(after, "copilotd_events_persisted_total", type="user.message") == 2
    assert value(after, "copilotd_sessions") == 1
    assert value(after, "copilotd_store_size_bytes") > 0
    assert value(after, "copilotd_turns_running") == 0
    # The session is idle: its cached context (two prompts, two answers) is counted.
    assert value(after, "copilotd_idle_context_bytes") > 2 * len("one")
    assert value(after, "process_resident_memory_bytes") > 0

    status = json.loads(ok(copilotd(daemon, "status", "--json")))
    assert url == f"http://{status['metrics']}/metrics"


async def test_a_sessions_own_provider_is_labelled_by_its_type_only(
    metered: tuple[DaemonProcess, str],
) -> None:
    daemon, url = metered
    with FakeModelServer() as server:
        own = {"type": "openai", "base_url": f"{server.url}/v1"}
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            for name in ("own-a", "own-b"):
                session = await client.create_session(session_id=name, model="m", provider=own)
                await session.send_and_wait("hi")
    samples = scrape(url)
    providers = {value for _, labels in samples for key, value in labels if key == "provider"}
    assert providers == {"session's own openai"}
    assert (
        value(samples, "copilotd_turn_duration_seconds_count", provider="session's own openai") == 2
    )
    assert not [labels for _, labels in samples if any("own-" in v for _, v in labels)]


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("0.0.0.0:9464", "binds only to a loopback address"),
        ("192.168.1.10:9464", "binds only to a loopback address"),
        ("9464", "expected HOST:PORT"),
        ("localhost:99999", "expected HOST:PORT"),
    ],
)
def test_metrics_only_on_loopback(short_tmp: Path, address: str, complaint: str) -> None:
    daemon = DaemonProcess(short_tmp, ["--metrics", address])
    with pytest.raises(RuntimeError, match="did not start") as failure:
        daemon.start()
    assert complaint in str(failure.value)
    assert daemon.process is not None and daemon.process.wait(30) == 1


@pytest.mark.parametrize("address", ["127.0.0.1:9464", "localhost:0", "[::1]:9464", "127.8.0.1:1"])
def test_loopback_addresses_are_accepted(address: str) -> None:
    assert MetricsAddress.parse(address).port == int(address.rsplit(":", 1)[1])


def test_metrics_address_errors_are_value_errors() -> None:
    with pytest.raises(MetricsAddressError):
        MetricsAddress.parse("example.com:80")


def test_provider_errors_and_outcomes_are_counted_from_events() -> None:
    metrics = Metrics()
    turn = "t1"
    start = ev.make_event(ev.ASSISTANT_TURN_START, turn_id=turn, user_message_id="u1")
    failure = ev.make_event(
        ev.SESSION_ERROR, error_type="rate_limit", message="slow down", turn_id=turn
    )
    end = ev.make_event(
        ev.ASSISTANT_TURN_END, turn_id=turn, reason=ev.TurnEndReason.TURN_END_REASON_ERROR
    )
    metrics.observe("s", [start])
    metrics.observe("s", [failure, end])
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "copilotd_provider_errors_total", {"provider": "unknown", "error_type": "rate_limit"}
        )
        == 1
    )
    assert registry.get_sample_value("copilotd_turns_total", {"outcome": "error"}) == 1
    assert (
        registry.get_sample_value("copilotd_turn_duration_seconds_count", {"provider": "unknown"})
        == 1
    )
    assert (
        registry.get_sample_value(
            "copilotd_provider_first_token_seconds_count", {"provider": "unknown"}
        )
        is None
    )  # no text came before the failure


async def test_an_aborted_call_is_counted_before_its_status_goes_out() -> None:
    """``context.abort`` sends the status at once: a client that saw the error
    must find it counted when it reads the metrics."""
    counted: list[str] = []

    class Context:
        def code(self) -> None:
            return None

        async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
            # What the client would see now, the metric must already hold.
            assert counted == ["NOT_FOUND"], counted
            raise grpc.aio.AbortError()

    async def behavior(request: object, context: Any) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")

    timed = metrics_module._timed_unary(behavior, lambda code, seconds: counted.append(code))
    with pytest.raises(grpc.aio.AbortError):
        await timed(object(), Context())
    assert counted == ["NOT_FOUND"]  # once, not again when the handler ends
