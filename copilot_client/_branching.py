"""Fork and rewind calls, shared by the client and the session objects."""

from __future__ import annotations

from ._session_events import SessionEvent
from ._types import SessionMetadata
from .proto.v1 import copilot_pb2
from .service import ServiceClient, UseCallTimeout

__all__ = ["fork_session", "rewind_session"]


async def fork_session(
    transport: ServiceClient,
    source_session_id: str,
    new_session_id: str | None,
    up_to_sequence: int | None,
    *,
    deadline: float | UseCallTimeout | None,
) -> SessionMetadata:
    request = copilot_pb2.ForkSessionRequest(
        source_session_id=source_session_id, new_session_id=new_session_id or ""
    )
    if up_to_sequence is not None:
        request.up_to_sequence = up_to_sequence
    response = await transport.call(transport.stub.ForkSession, request, deadline=deadline)
    return SessionMetadata.from_proto(response.session)


async def rewind_session(
    transport: ServiceClient,
    session_id: str,
    to_sequence: int,
    *,
    abort_turn: bool,
    reason: str,
    expected_last_sequence: int | None,
    deadline: float | UseCallTimeout | None,
) -> tuple[SessionMetadata, SessionEvent]:
    request = copilot_pb2.RewindSessionRequest(
        session_id=session_id, to_sequence=to_sequence, abort_turn=abort_turn, reason=reason
    )
    if expected_last_sequence is not None:
        request.expected_last_sequence = expected_last_sequence
    response = await transport.call(transport.stub.RewindSession, request, deadline=deadline)
    return SessionMetadata.from_proto(response.session), SessionEvent.from_proto(response.rewind)
