"""Bad input for the RPCs tests/test_bad_input.py does not fuzz: the rest of
CopilotService (SendMessageAndWait, models, fork and rewind, the deprecated admin
methods) and
every method of copilot.admin.v1.CopilotAdminService, the client-streaming
ImportSession and the server-streaming BackupStore included.

Same rules against one real daemon of this module's own: every call ends with
a documented refusal (never UNKNOWN or INTERNAL) carrying the reason trailer
and a message, or succeeds; the daemon survives with its store whole. The
first test checks that the two modules together fuzz every method both
services declare, so a new RPC cannot go unfuzzed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from copilotd import events as ev
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.fuzzing import (
    CALL_TIMEOUT,
    EXISTING,
    REQUESTS,
    SERVICE,
    any_enum,
    check_refusal,
    enum_number,
    labels,
    nasty_text,
    prompts,
    session_ids,
    uint32,
    uint64,
)
from tests.support.store_check import check_store

ADMIN = "/copilot.admin.v1.CopilotAdminService/"
CASES = 600
tally: Counter[str] = Counter()


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Daemon:
    def __init__(self) -> None:
        self.root = short_temp_dir("fuzz")
        self.process = DaemonProcess(self.root)
        self.process.start()
        assert self.process.process is not None
        self.pid = self.process.process.pid
        self.channel = grpc.insecure_channel(f"unix:{self.process.socket_path}")

    def unary(self, path: str) -> grpc.UnaryUnaryMultiCallable[Message, bytes]:
        return self.channel.unary_unary(path, serialize, bytes)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Daemon]:
    daemon = Daemon()
    for session_id in EXISTING:
        daemon.unary(SERVICE + "CreateSession")(
            pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
        )
    yield daemon
    daemon.channel.close()
    daemon.process.kill()
    shutil.rmtree(daemon.root, ignore_errors=True)


# -- strategies ----------------------------------------------------------------

valid_times = st.builds(Timestamp, seconds=st.integers(0, 2**33), nanos=st.integers(0, 999_999_999))
# Out of range: before year 1, after 9999, nanos over a second.
wild_times = st.builds(
    Timestamp, seconds=st.integers(-(2**62), 2**62), nanos=st.integers(-(2**31), 2**31 - 1)
)
timestamps = st.one_of(st.none(), valid_times, wild_times)
event_types = st.one_of(st.sampled_from(sorted(ev.PAYLOAD_FIELD)), nasty_text)


def imported_event(
    event_id: str, sequence: int, when: Timestamp | None, kind: str, text: str
) -> events_pb2.SessionEvent:
    event = events_pb2.SessionEvent(id=event_id, sequence=sequence, type=kind)
    if when is not None:
        event.timestamp.CopyFrom(when)
    if kind in ev.PAYLOAD_FIELD:
        payload = getattr(event, ev.PAYLOAD_FIELD[kind])
        payload.SetInParent()
        if kind in ev.MESSAGE_TYPES:
            payload.content = text
    return event


events = st.builds(
    imported_event, nasty_text, st.integers(0, 5) | uint64, timestamps, event_types, prompts
)


def metadata() -> st.SearchStrategy[pb.SessionMetadata]:
    return st.builds(
        pb.SessionMetadata,
        session_id=st.one_of(st.just(""), session_ids),
        model=labels,
        last_sequence=st.integers(0, 5) | uint64,
        pinned=st.booleans(),
    )


def import_streams(module: Any) -> st.SearchStrategy[list[Message]]:
    """A header (or none, or two), then batches of random events; or a whole history."""
    header = st.builds(
        module.ImportHeader,
        metadata=metadata(),
        event_count=st.integers(0, 5) | uint64,
        on_conflict=any_enum,
    )
    first = st.builds(
        module.ImportSessionRequest, header=header, events=st.lists(events, max_size=3)
    )
    more = st.builds(module.ImportSessionRequest, events=st.lists(events, max_size=3))
    return st.one_of(
        st.tuples(first, st.lists(more, max_size=3)).map(lambda parts: [parts[0], *parts[1]]),
        st.lists(st.one_of(first, more), max_size=3),
        whole_histories(module),
        whole_histories(module),
    )


def whole_histories(module: Any) -> st.SearchStrategy[list[Message]]:
    """A history that passes the structural checks (numbered 1..N, chained, stored
    types), so that what lies past them (timestamps, ids, conflicts) is reached too."""
    stored_types = sorted(set(ev.PAYLOAD_FIELD) - ev.EPHEMERAL_TYPES)

    def build(
        session_id: str, conflict: int, kinds: list[str], times: list[Timestamp | None], text: str
    ) -> list[Message]:
        history = []
        for position, (kind, when) in enumerate(zip(kinds, times, strict=False), start=1):
            event = imported_event(f"e{position}", position, when, kind, text)
            event.parent_id = f"e{position - 1}" if position > 1 else ""
            history.append(event)
        header = module.ImportHeader(event_count=len(history), on_conflict=enum_number(conflict))
        header.metadata.session_id = session_id
        return [module.ImportSessionRequest(header=header, events=history)]

    kinds = st.lists(st.sampled_from(stored_types), min_size=1, max_size=4).map(
        lambda rest: [ev.SESSION_START, *rest]
    )
    return st.builds(
        build,
        st.one_of(st.from_regex(r"imp[a-z0-9]{1,8}", fullmatch=True), session_ids),
        any_enum,
        kinds,
        st.lists(st.one_of(valid_times, valid_times, wild_times), min_size=5, max_size=5),
        prompts,
    )


def policies(module: Any) -> st.SearchStrategy[Message]:
    def build(age: int, count: int | None, sweep: int) -> Any:
        policy = module.RetentionPolicy(max_age_seconds=age, sweep_interval_seconds=sweep)
        if count is not None:
            policy.max_sessions = count
        return policy

    return st.builds(build, st.integers(0, 10) | uint64, st.none() | uint32, uint64)


def send_and_wait_requests() -> st.SearchStrategy[pb.SendMessageAndWaitRequest]:
    def build(sid: str, prompt: str, source: str, mid: str, mode: int, expected: int | None) -> Any:
        request = pb.SendMessageAndWaitRequest(
            session_id=sid, prompt=prompt, source=source, message_id=mid, mode=enum_number(mode)
        )
        if expected is not None:
            request.expected_last_sequence = expected
        return request

    message_ids = st.one_of(
        st.just(""), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), nasty_text
    )
    return st.builds(build, session_ids, prompts, labels, message_ids, any_enum, st.none() | uint64)


def admin_requests(module: Any, prefix: str) -> dict[str, tuple[str, st.SearchStrategy[Any]]]:
    """The five admin methods, as served under ``prefix`` with ``module``'s messages."""
    return {
        prefix + "GetDaemonStatus": ("unary", st.just(module.GetDaemonStatusRequest())),
        prefix + "SetSessionPinned": (
            "unary",
            st.builds(module.SetSessionPinnedRequest, session_id=session_ids, pinned=st.booleans()),
        ),
        prefix + "PruneSessions": (
            "unary",
            st.builds(
                module.PruneSessionsRequest,
                policy=policies(module),
                # Mostly dry runs: a real one may prune the sessions the others aim at.
                dry_run=st.sampled_from([True, True, True, False]),
            ),
        ),
        prefix + "ImportSession": ("client stream", import_streams(module)),
        prefix + "BackupStore": ("server stream", st.just(module.BackupStoreRequest())),
    }


CALLS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    SERVICE + "SendMessageAndWait": ("unary", send_and_wait_requests()),
    SERVICE + "ListModels": ("unary", st.just(pb.ListModelsRequest())),
    SERVICE + "CompactSession": (
        "unary",
        st.builds(
            pb.CompactSessionRequest,
            session_id=session_ids,
            custom_instructions=st.one_of(labels, nasty_text, st.just("é" * 3_000_000)),
        ),
    ),
    SERVICE + "SetModel": (
        "unary",
        st.builds(
            pb.SetModelRequest, session_id=session_ids, model=st.one_of(labels, st.just("offline"))
        ),
    ),
    SERVICE + "SearchSessions": (
        "unary",
        st.builds(
            pb.SearchSessionsRequest,
            # FTS5 syntax errors, operators and stray quotes among them.
            query=st.one_of(
                nasty_text,
                labels,
                st.sampled_from(['"', "AND", "a OR", "NEAR(", "*", "config.toml", "-x"]),
            ),
            page_size=uint32,
            page_token=st.one_of(st.just(""), nasty_text),
            session_id_prefix=st.one_of(st.just(""), nasty_text),
            since=timestamps,
            until=timestamps,
        ),
    ),
    SERVICE + "ListPendingToolCalls": (
        "unary",
        st.builds(pb.ListPendingToolCallsRequest, session_id=session_ids),
    ),
    SERVICE + "HandlePendingToolCall": (
        "unary",
        st.builds(
            pb.HandlePendingToolCallRequest,
            session_id=session_ids,
            tool_call_id=st.one_of(labels, nasty_text),
            result=st.builds(
                events_pb2.ToolResult,
                text_result_for_llm=st.one_of(labels, nasty_text),
                result_type=st.one_of(
                    st.sampled_from(["success", "failure", "rejected", "denied", "timeout"]),
                    nasty_text,
                ),
                error=labels,
            ),
        ),
    ),
    SERVICE + "HandlePendingPermission": (
        "unary",
        st.builds(
            pb.HandlePendingPermissionRequest,
            session_id=session_ids,
            request_id=st.one_of(labels, nasty_text),
            approved=st.booleans(),
            reason=st.one_of(labels, nasty_text),
        ),
    ),
    SERVICE + "ForkSession": (
        "unary",
        st.builds(
            pb.ForkSessionRequest,
            source_session_id=session_ids,
            new_session_id=st.one_of(st.just(""), session_ids, nasty_text),
            up_to_sequence=st.one_of(st.none(), uint64),
        ),
    ),
    SERVICE + "RewindSession": (
        "unary",
        st.builds(
            pb.RewindSessionRequest,
            session_id=session_ids,
            to_sequence=uint64,
            abort_turn=st.booleans(),
            reason=st.one_of(labels, nasty_text),
            expected_last_sequence=st.one_of(st.none(), uint64),
        ),
    ),
    **admin_requests(pb, SERVICE),
    **admin_requests(admin_pb2, ADMIN),
}


# -- calling -------------------------------------------------------------------


def call(daemon: Daemon, path: str, kind: str, request: Any) -> None:
    if kind == "client stream":
        daemon.channel.stream_unary(path, serialize, bytes)(iter(request), timeout=CALL_TIMEOUT)
    elif kind == "server stream":
        stream = daemon.channel.unary_stream(path, serialize, bytes)(request, timeout=CALL_TIMEOUT)
        try:
            next(stream)
        finally:
            stream.cancel()
    else:
        daemon.channel.unary_unary(path, serialize, bytes)(request, timeout=CALL_TIMEOUT)


def test_the_two_modules_fuzz_every_method_of_both_services() -> None:
    declared = {
        f"/{service.full_name}/{method.name}"
        for service in (
            pb.DESCRIPTOR.services_by_name["CopilotService"],
            admin_pb2.DESCRIPTOR.services_by_name["CopilotAdminService"],
        )
        for method in service.methods
    }
    fuzzed = {SERVICE + name for name in REQUESTS} | CALLS.keys()
    assert declared - fuzzed == set(), "not fuzzed"
    assert fuzzed - declared == set(), "not served"


any_call = st.sampled_from(sorted(CALLS)).flatmap(
    lambda path: st.tuples(st.just(path), st.just(CALLS[path][0]), CALLS[path][1])
)


@settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=any_call)
def test_the_other_rpcs_with_random_and_invalid_fields(
    fuzzed: Daemon, case: tuple[str, str, Any]
) -> None:
    path, kind, request = case
    method = path.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "." + path.rsplit("/", 1)[-1]
    tally["cases"] += 1
    try:
        call(fuzzed, path, kind, request)
        tally[f"{method} ok"] += 1
    except grpc.RpcError as error:
        check_refusal(error, method)
        tally[f"{method} {error.code().name}"] += 1


@pytest.mark.parametrize("path", [SERVICE + "PruneSessions", ADMIN + "PruneSessions"])
def test_retention_ages_beyond_the_calendar(fuzzed: Daemon, path: str) -> None:
    """Found by the fuzzing above: an age reaching back before year 1 failed with
    INTERNAL (the cutoff overflowed). It selects nothing by age; an age no
    timedelta holds is refused, saying what the limit is."""
    prune = fuzzed.unary(path)
    before_year_one = pb.RetentionPolicy(max_age_seconds=64_000_000_000)
    answer = pb.PruneSessionsResponse.FromString(
        prune(pb.PruneSessionsRequest(policy=before_year_one, dry_run=True), timeout=CALL_TIMEOUT)
    )
    assert list(answer.sessions) == []
    with pytest.raises(grpc.RpcError) as caught:
        prune(
            pb.PruneSessionsRequest(policy=pb.RetentionPolicy(max_age_seconds=2**64 - 1)),
            timeout=CALL_TIMEOUT,
        )
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_age_seconds 18446744073709551615 is over the longest age" in error.details()


def test_the_daemon_survived_and_its_store_is_whole(fuzzed: Daemon) -> None:
    """Runs last in this module: same process, still serving; a clean stop; a whole store."""
    assert fuzzed.process.process is not None
    assert fuzzed.process.process.poll() is None and fuzzed.process.process.pid == fuzzed.pid
    assert fuzzed.unary(SERVICE + "Ping")(pb.PingRequest(), timeout=10)
    assert "Traceback" not in "".join(fuzzed.process.output)
    fuzzed.channel.close()
    assert fuzzed.process.terminate() == 0
    report = check_store(fuzzed.process.data_dir)
    print(f"\nFIGURES bad input (other RPCs): {dict(sorted(tally.items()))}")
    print(
        f"store after fuzzing: {len(report.sessions)} sessions, {report.event_count} events, whole"
    )
