"""Hypothesis strategies for bad requests, and the rule every refusal must follow.

tests/test_bad_input.py and tests/test_bad_input_all_rpcs.py fuzz the
daemon's RPCs with these; REQUESTS holds one strategy per CopilotService
method the first of them fuzzes.
"""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import strategies as st

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from copilot_client.wire import LIFECYCLE_TYPES
from copilotd.limits import MAX_LABEL_BYTES
from tests.support.wire import reason_of

MAX_PROMPT_BYTES = 4096
EXISTING = ["alpha", "beta-1", "gamma:2@x"]
# What the daemon may answer to a request it could not or would not serve.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
SERVICE = "/copilot.v1.CopilotService/"
CALL_TIMEOUT = 20


# -- strategies ----------------------------------------------------------------

uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
# Hypothesis picks among one_of's branches evenly: a branch repeated is weighted.
any_enum = st.one_of(st.integers(0, 2), st.integers(0, 2), st.integers(-(2**31), 2**31 - 1))
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),
    st.sampled_from(["", " ", "../x", "a/b", "a\x00b", "é" * 3, "\u202e", "x" * 129]),
)
session_ids = st.one_of(
    st.sampled_from(EXISTING),
    st.sampled_from(EXISTING),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
    nasty_text,
)
prompts = st.one_of(
    st.text(min_size=1, max_size=200),
    st.from_regex(r"[a-z]{1,20}", fullmatch=True),
    st.just(""),
    st.just("é" * (MAX_PROMPT_BYTES // 2 + 1)),  # just over the limit
)
labels = st.one_of(
    st.text(max_size=30), st.just(""), st.just(""), st.just("m" * (MAX_LABEL_BYTES + 1))
)


def tools() -> st.SearchStrategy[list[events_pb2.ToolDefinition]]:
    tool = st.builds(
        events_pb2.ToolDefinition,
        name=nasty_text,
        description=st.text(max_size=50),
        parameters_json_schema=st.text(max_size=50),
    )
    return st.lists(tool, max_size=3)


def infinite_sessions() -> st.SearchStrategy[events_pb2.InfiniteSessionConfig | None]:
    # NaN, infinities, negatives and values past 1 among the shares.
    shares = st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True))
    return st.none() | st.builds(
        events_pb2.InfiniteSessionConfig,
        enabled=st.booleans(),
        background_compaction_threshold=shares,
        buffer_exhaustion_threshold=shares,
        summary_max_tokens=uint32,
    )


def session_configs() -> st.SearchStrategy[pb.SessionConfig]:
    system = st.builds(pb.SystemMessage, content=st.text(max_size=100), mode=any_enum)
    return st.builds(
        pb.SessionConfig,
        session_id=st.one_of(st.just(""), session_ids),
        model=labels,
        system_message=st.one_of(st.none(), system),
        tools=tools(),
        infinite_sessions=infinite_sessions(),
    )


def enum_number(value: int) -> Any:
    """``value`` for an enum field: the stubs accept only defined values, the wire any number."""
    return value


def send_requests() -> st.SearchStrategy[pb.SendMessageRequest]:
    def build(sid: str, prompt: str, source: str, mode: int, expected: int | None) -> Any:
        request = pb.SendMessageRequest(
            session_id=sid, prompt=prompt, source=source, mode=enum_number(mode)
        )
        if expected is not None:
            request.expected_last_sequence = expected
        return request

    return st.builds(build, session_ids, prompts, labels, any_enum, st.none() | uint64)


REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "Ping": st.just(pb.PingRequest()),
    "CreateSession": st.builds(pb.CreateSessionRequest, config=session_configs()),
    "GetSession": st.builds(pb.GetSessionRequest, session_id=session_ids),
    "ResumeSession": st.builds(
        pb.ResumeSessionRequest,
        session_id=session_ids,
        tail_events=uint32,
        tools=tools(),
        infinite_sessions=infinite_sessions(),
    ),
    "ListSessions": st.builds(
        pb.ListSessionsRequest, page_size=uint32, page_token=st.one_of(nasty_text, st.just(""))
    ),
    "DeleteSession": st.builds(
        pb.DeleteSessionRequest, session_id=st.one_of(nasty_text, st.from_regex(r"z[0-9]{1,3}"))
    ),
    "SendMessage": send_requests(),
    "AbortTurn": st.builds(pb.AbortTurnRequest, session_id=session_ids, reason=labels),
    "ListEvents": st.builds(
        pb.ListEventsRequest,
        session_id=session_ids,
        cursor=uint64,
        page_size=uint32,
        order=any_enum,
    ),
    "StreamEvents": st.builds(
        pb.StreamEventsRequest, session_id=session_ids, after_sequence=uint64
    ),
    "WatchLifecycle": st.builds(
        pb.WatchLifecycleRequest,
        types=st.lists(st.one_of(nasty_text, st.sampled_from(sorted(LIFECYCLE_TYPES))), max_size=3),
    ),
}


def check_refusal(error: grpc.RpcError, method: str) -> None:
    code = error.code()
    assert code in REFUSALS, f"{method}: {code} {error.details()}"
    assert error.details(), method
    assert str(reason_of(error)).startswith("ERROR_REASON_"), f"{method}: no reason trailer"
