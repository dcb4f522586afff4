"""The requests ``CopilotClient.create_session`` and ``resume_session`` send.

Apart from ``_client`` because that module imports only the standard library
(see its comment); this one is loaded when the client starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from ._compaction import InfiniteSessionConfig
from ._models import ProviderConfig
from ._permissions import PermissionHandlerFunc
from ._tools import Tool
from ._types import SessionConfig
from .proto.v1 import copilot_pb2

__all__ = ["RESUME_TAIL_EVENTS", "create_request", "resume_request"]

RESUME_TAIL_EVENTS = 50
_CONFIG_FIELDS = frozenset(f.name for f in fields(SessionConfig))


def create_request(
    config: SessionConfig | Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> tuple[copilot_pb2.CreateSessionRequest, SessionConfig]:
    """The request for ``config`` with ``kwargs`` overriding its fields, and that config.

    Raises:
        TypeError: For a keyword that is not a ``SessionConfig`` field.
    """
    unknown = set(kwargs) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"create_session() got unexpected keyword arguments: {sorted(unknown)}")
    if config is None:
        config = SessionConfig()
    elif isinstance(config, Mapping):
        config = SessionConfig(**config)
    config = replace(config, **kwargs)
    return copilot_pb2.CreateSessionRequest(config=config.to_proto()), config


def resume_request(
    session_id: str,
    config: SessionConfig | Mapping[str, Any] | None,
    *,
    provider: ProviderConfig | Mapping[str, Any] | None,
    tools: Sequence[Tool] | None,
    on_permission_request: PermissionHandlerFunc | None,
    continue_pending_work: bool,
    infinite_sessions: InfiniteSessionConfig | Mapping[str, Any] | None,
) -> tuple[copilot_pb2.ResumeSessionRequest, Sequence[Tool] | None, PermissionHandlerFunc | None]:
    """The request resuming ``session_id``, with the tools and permission handler
    the handle runs (explicit arguments first, then ``config``'s)."""
    if provider is None and config is not None:
        provider = config.get("provider") if isinstance(config, Mapping) else config.provider
    request = copilot_pb2.ResumeSessionRequest(
        session_id=session_id, tail_events=RESUME_TAIL_EVENTS
    )
    if provider is not None:
        request.provider.CopyFrom(ProviderConfig.coerce(provider).to_proto())
    if tools is None and isinstance(config, SessionConfig) and config.tools:
        tools = config.tools
    if on_permission_request is None and isinstance(config, SessionConfig):
        on_permission_request = config.on_permission_request
    if tools is not None:
        request.tools.extend(tool.to_proto() for tool in tools)
        request.replace_tools = True
    request.continue_pending_work = continue_pending_work
    if infinite_sessions is None and isinstance(config, SessionConfig):
        infinite_sessions = config.infinite_sessions
    if infinite_sessions is not None:
        infinite = InfiniteSessionConfig.coerce(infinite_sessions)
        request.infinite_sessions.CopyFrom(infinite.to_proto())
    return request, tools, on_permission_request
