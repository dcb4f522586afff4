"""Bad input against ONE real daemon: property tests on every RPC, raw bytes, raw sockets.

Hypothesis generates requests with random and invalid fields for every RPC
of the service, undecodable request bodies, and garbage written straight to
the Unix socket. Every call must end with a status code from the documented
set (never UNKNOWN or INTERNAL), each refusal with the "copilot-error-reason"
trailer and a message; the daemon must never crash (same pid, still answers
Ping) and its store must be whole afterwards (checked from disk by the last
test of this module, which stops the daemon). Each test prints how many
cases it ran.
"""

from __future__ import annotations

import shutil
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.limits import MAX_LABEL_BYTES
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.fuzzing import (
    CALL_TIMEOUT,
    EXISTING,
    MAX_PROMPT_BYTES,
    REQUESTS,
    SERVICE,
    check_refusal,
    enum_number,
)
from tests.support.store_check import check_store
from tests.support.wire import reason_of

UNARY_METHODS = [
    "Ping",
    "CreateSession",
    "GetSession",
    "ResumeSession",
    "ListSessions",
    "DeleteSession",
    "SendMessage",
    "AbortTurn",
    "ListEvents",
]
STREAM_METHODS = ["StreamEvents", "WatchLifecycle"]
CASES = {"rpc": 1500, "raw": 500, "socket": 200}
tally: Counter[str] = Counter()


class Daemon:
    def __init__(self) -> None:
        self.root = short_temp_dir("fuzz")
        self.process = DaemonProcess(self.root, ["--max-prompt-bytes", str(MAX_PROMPT_BYTES)])
        self.process.start()
        assert self.process.process is not None
        self.pid = self.process.process.pid
        self.channel = grpc.insecure_channel(f"unix:{self.process.socket_path}")
        self.stub = copilot_pb2_grpc.CopilotServiceStub(self.channel)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Daemon]:
    daemon = Daemon()
    for session_id in EXISTING:
        daemon.stub.CreateSession(
            pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
        )
    yield daemon
    daemon.channel.close()
    daemon.process.kill()
    shutil.rmtree(daemon.root, ignore_errors=True)


# -- calling -------------------------------------------------------------------


def call_unary(daemon: Daemon, method: str, request: Any) -> None:
    rpc: Callable[..., Any] = getattr(daemon.stub, method)
    try:
        rpc(request, timeout=CALL_TIMEOUT)
        tally[f"{method} ok"] += 1
    except grpc.RpcError as error:
        check_refusal(error, method)
        tally[f"{method} {error.code().name}"] += 1


def stir(daemon: Daemon) -> None:
    """Cause one lifecycle event of each type, so that a live watch has something to send."""
    tally["stirred"] += 1
    session_id = f"stir-{tally['stirred']}"
    daemon.stub.CreateSession(
        pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
    )
    daemon.stub.ResumeSession(pb.ResumeSessionRequest(session_id=session_id))
    daemon.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))


def next_response(daemon: Daemon, method: str, call: Any) -> None:
    """The first response: the catch-up batch, a lifecycle event, or the refusal."""
    if method == "WatchLifecycle":
        call.initial_metadata()  # sent once the watch is live (or refused)
        stir(daemon)
    next(call)


def call_stream(daemon: Daemon, method: str, request: Any) -> None:
    call = getattr(daemon.stub, method)(request, timeout=CALL_TIMEOUT)
    try:
        next_response(daemon, method, call)
        tally[f"{method} ok"] += 1
    except grpc.RpcError as error:
        check_refusal(error, method)
        tally[f"{method} {error.code().name}"] += 1
    finally:
        call.cancel()


any_request = st.sampled_from(sorted(REQUESTS)).flatmap(
    lambda method: st.tuples(st.just(method), REQUESTS[method])
)


@settings(
    max_examples=CASES["rpc"],
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=any_request)
def test_every_rpc_with_random_and_invalid_fields(fuzzed: Daemon, case: tuple[str, Any]) -> None:
    method, request = case
    tally["rpc cases"] += 1
    if method in STREAM_METHODS:
        call_stream(fuzzed, method, request)
    else:
        call_unary(fuzzed, method, request)


@settings(max_examples=CASES["raw"], deadline=None, database=None)
@given(method=st.sampled_from(UNARY_METHODS + STREAM_METHODS), body=st.binary(max_size=512))
def test_raw_request_bodies(fuzzed: Daemon, method: str, body: bytes) -> None:
    """Bytes that may not decode as the method's request: INVALID_ARGUMENT, or a valid call."""
    tally["raw cases"] += 1
    identity: Callable[[bytes], bytes] = bytes
    path = SERVICE + method
    try:
        if method in STREAM_METHODS:
            call = fuzzed.channel.unary_stream(path, identity, identity)(body, timeout=CALL_TIMEOUT)
            try:
                next_response(fuzzed, method, call)
            finally:
                call.cancel()
        else:
            fuzzed.channel.unary_unary(path, identity, identity)(body, timeout=30)
        tally["raw ok"] += 1
    except grpc.RpcError as error:
        check_refusal(error, method)
        tally[f"raw {error.code().name}"] += 1


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@settings(max_examples=CASES["socket"], deadline=None, database=None)
@given(garbage=st.binary(min_size=1, max_size=4096), preface=st.booleans())
def test_garbage_on_the_raw_socket(fuzzed: Daemon, garbage: bytes, preface: bool) -> None:
    """The daemon hangs up on a peer that does not speak HTTP/2 (or speaks it wrong)."""
    tally["socket cases"] += 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(30)
        peer.connect(str(fuzzed.process.socket_path))
        try:
            peer.sendall((HTTP2_PREFACE if preface else b"") + garbage)
            peer.shutdown(socket.SHUT_WR)
            while peer.recv(65536):
                pass  # whatever it says (a SETTINGS or GOAWAY frame), until it hangs up
        except (ConnectionResetError, BrokenPipeError):
            pass  # hung up even before reading everything: also fine
    tally["socket hung up"] += 1


def test_unknown_enum_values_are_refused(fuzzed: Daemon) -> None:
    stub = fuzzed.stub
    stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="quiet")))
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: stub.SendMessage(
                pb.SendMessageRequest(session_id="quiet", prompt="x", mode=enum_number(99))
            ),
            "mode",
        ),
        (
            lambda: stub.ListEvents(
                pb.ListEventsRequest(session_id="alpha", order=enum_number(99))
            ),
            "order",
        ),
        (
            lambda: stub.CreateSession(
                pb.CreateSessionRequest(
                    config=pb.SessionConfig(
                        session_id="enum",
                        system_message=pb.SystemMessage(content="x", mode=enum_number(99)),
                    )
                )
            ),
            "config.system_message.mode",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "ERROR_REASON_INVALID_ARGUMENT"
        assert f"{field} has the unknown value 99" in error.details()
        assert "Upgrade copilotd" in error.details()
    # Nothing was written: not the message, not the session.
    assert stub.GetSession(pb.GetSessionRequest(session_id="quiet")).session.last_sequence == 1
    with pytest.raises(grpc.RpcError, match="NOT_FOUND"):
        stub.GetSession(pb.GetSessionRequest(session_id="enum"))


def test_oversized_labels_are_refused(fuzzed: Daemon) -> None:
    big = "x" * (MAX_LABEL_BYTES + 1)
    stub = fuzzed.stub
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: stub.SendMessage(
                pb.SendMessageRequest(session_id="beta-1", prompt="x", source=big)
            ),
            "source",
        ),
        (lambda: stub.AbortTurn(pb.AbortTurnRequest(session_id="beta-1", reason=big)), "reason"),
        (
            lambda: stub.CreateSession(
                pb.CreateSessionRequest(config=pb.SessionConfig(session_id="big", model=big))
            ),
            "config.model",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{field} is {MAX_LABEL_BYTES + 1} bytes, over the limit" in error.details()


def test_message_size_limits(fuzzed: Daemon) -> None:
    """Over --max-prompt-bytes: INVALID_ARGUMENT; over the message bound (8 MiB here):
    gRPC's RESOURCE_EXHAUSTED (more in tests/test_message_size.py)."""
    stub = fuzzed.stub
    with pytest.raises(grpc.RpcError) as caught:
        stub.SendMessage(pb.SendMessageRequest(session_id="beta-1", prompt="p" * 5000))
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "ERROR_REASON_PROMPT_TOO_LARGE"
    with pytest.raises(grpc.RpcError) as caught:
        stub.SendMessage(pb.SendMessageRequest(session_id="beta-1", prompt="p" * (9 << 20)))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


def test_the_daemon_survived_and_its_store_is_whole(fuzzed: Daemon) -> None:
    """Runs last in this module: same process, still serving; a clean stop; a whole store."""
    assert fuzzed.process.process is not None
    assert fuzzed.process.process.poll() is None and fuzzed.process.process.pid == fuzzed.pid
    assert fuzzed.stub.Ping(pb.PingRequest(), timeout=10).version
    assert "Traceback" not in "".join(fuzzed.process.output)
    fuzzed.channel.close()
    assert fuzzed.process.terminate() == 0
    report = check_store(fuzzed.process.data_dir)
    assert set(EXISTING) <= report.sessions.keys()
    print(f"\nFIGURES bad input: {dict(sorted(tally.items()))}")
    print(
        f"store after fuzzing: {len(report.sessions)} sessions, {report.event_count} events, whole"
    )
