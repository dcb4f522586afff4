"""A new session from a client's SessionConfig: every field checked, its first event made."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.errors import InvalidArgumentError, Reason
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.providers import ProviderRegistry, check_provider_config, public_provider_config
from copilotd.sessions.compaction import check_infinite_sessions
from copilotd.sessions.tools import check_tools
from copilotd.sessions.validation import check_enum, check_label, check_session_id

__all__ = ["NewSession", "new_session"]


@dataclass(frozen=True)
class NewSession:
    metadata: SessionMetadata
    start: SessionEvent
    """Its ``session.start`` event, to be committed with it."""
    own_provider: bool
    """It brings its own provider (whose secrets the registry then holds)."""


def new_session(
    config: copilot_pb2.SessionConfig,
    providers: ProviderRegistry,
    *,
    version: str,
    max_prompt_bytes: int,
) -> NewSession:
    """The metadata and first event of the session ``config`` asks for; raises a
    ``ServiceError`` naming the field for anything it cannot take."""
    session_id = config.session_id or str(uuid.uuid4())
    check_session_id(session_id)
    model = check_label(config.model, "config.model") or providers.default_model
    metadata = SessionMetadata(session_id=session_id, model=model)
    check_tools(config.tools, "config.tools")
    metadata.tools.extend(config.tools)
    if config.HasField("infinite_sessions"):
        check_infinite_sessions(config.infinite_sessions, "config.infinite_sessions")
        metadata.infinite_sessions.CopyFrom(config.infinite_sessions)
    if config.HasField("system_message"):
        check_enum(
            config.system_message.mode,
            copilot_pb2.SystemMessageMode,
            "config.system_message.mode",
        )
        check_label(
            config.system_message.content,
            "config.system_message.content",
            max_prompt_bytes,
        )
        metadata.system_message.CopyFrom(config.system_message)
    start = ev.make_event(
        ev.SESSION_START, session_id=session_id, model=model, producer_version=version
    )
    own_provider = config.HasField("provider")
    if own_provider:  # stored without its secrets; they stay in memory
        check_provider_config(config.provider)
        if not config.model and not config.provider.wire_model:
            raise InvalidArgumentError(
                "a session with its own provider needs a model: set SessionConfig.model "
                "(or the provider's wire_model) to a model that provider serves",
                Reason.ERROR_REASON_INVALID_PROVIDER,
            )
        metadata.provider.CopyFrom(public_provider_config(config.provider))
        start.session_start.provider.CopyFrom(metadata.provider)
    else:
        providers.check_model(model)
    return NewSession(metadata, start, own_provider)
