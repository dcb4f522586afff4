"""copilot_client: the thin async client of copilotd.

copilotd is a local daemon that owns chat sessions; this client creates,
resumes, lists and deletes them by id and talks to them::

    async with CopilotClient() as client:
        session = await client.create_session(SessionConfig(session_id="user-123"))
        answer = await session.send_and_wait(MessageOptions(prompt="Hello"))
        print(answer.data.content if answer else None)

Public modules beside this one: :mod:`copilot_client.service` (the low-level
``ServiceClient``: raw RPCs and the mapping of gRPC errors to these
exceptions), :mod:`copilot_client.paths` (where the daemon's socket and data
live) and :mod:`copilot_client.wire` (metadata keys, lifecycle types, page
limits and environment variables both ends agree on). Modules whose names
start with an underscore are private.

The names below are loaded when first used (PEP 562): a program, or the
daemon, that needs only :mod:`copilot_client.paths` or the generated stubs
does not pay for the whole client at start-up (``tests/test_import_budget.py``).
"""

import sys as _sys
import typing as _typing
from importlib import import_module as _import_module

# Names the module defines are its public surface: helpers carry an underscore.
if _typing.TYPE_CHECKING:
    from ._client import CopilotClient
    from ._compaction import CompactionResult, CompactionTokensUsed, InfiniteSessionConfig
    from ._errors import (
        BackupUnsupportedError,
        CompactionFailedError,
        CompactionInProgressError,
        CopilotError,
        DaemonTimeoutError,
        DaemonUnavailableError,
        FailedPreconditionError,
        InvalidArgumentError,
        InvalidImportError,
        InvalidPointError,
        MessageAlreadyAnsweredError,
        NoRetentionPolicyError,
        NothingToCompactError,
        PermissionAnsweredError,
        PointInsideToolCallError,
        PointInsideTurnError,
        ProviderSecretRequiredError,
        ResourceExhaustedError,
        RPCError,
        SequenceConflictError,
        SequenceOutOfRangeError,
        SequenceRewoundError,
        SessionExistsError,
        SessionFailedError,
        SessionNotFoundError,
        SubscriberTooSlowError,
        ToolCallAnsweredError,
        TurnHolderUnreachableError,
        TurnRunningError,
        UnauthenticatedError,
        UnknownPermissionRequestError,
        UnknownToolCallError,
        UntrustedSocketError,
    )
    from ._lifecycle import LifecycleHandler
    from ._models import ModelInfo, ProviderConfig
    from ._permissions import (
        PermissionHandler,
        PermissionInvocation,
        PermissionRequest,
        PermissionRequestResult,
    )
    from ._session import CopilotSession, EventHandler
    from ._session_events import EventData, SessionEvent, SessionEventType
    from ._tool_types import PendingToolCall, ToolDeclaration
    from ._tools import Tool, ToolInvocation, ToolResult, define_tool
    from ._types import (
        LifecycleEvent,
        MessageOptions,
        SearchHit,
        SearchPage,
        SessionConfig,
        SessionListPage,
        SessionMetadata,
        SystemMessageConfig,
    )

__version__ = "0.1.0"

__all__ = [
    "BackupUnsupportedError",
    "CompactionFailedError",
    "CompactionInProgressError",
    "CompactionResult",
    "CompactionTokensUsed",
    "CopilotClient",
    "CopilotError",
    "CopilotSession",
    "DaemonTimeoutError",
    "DaemonUnavailableError",
    "EventData",
    "EventHandler",
    "FailedPreconditionError",
    "InfiniteSessionConfig",
    "InvalidArgumentError",
    "InvalidImportError",
    "InvalidPointError",
    "LifecycleEvent",
    "LifecycleHandler",
    "MessageAlreadyAnsweredError",
    "MessageOptions",
    "ModelInfo",
    "NoRetentionPolicyError",
    "NothingToCompactError",
    "PendingToolCall",
    "PermissionAnsweredError",
    "PermissionHandler",
    "PermissionInvocation",
    "PermissionRequest",
    "PermissionRequestResult",
    "PointInsideToolCallError",
    "PointInsideTurnError",
    "ProviderConfig",
    "ProviderSecretRequiredError",
    "RPCError",
    "ResourceExhaustedError",
    "SearchHit",
    "SearchPage",
    "SequenceConflictError",
    "SequenceOutOfRangeError",
    "SequenceRewoundError",
    "SessionConfig",
    "SessionEvent",
    "SessionEventType",
    "SessionExistsError",
    "SessionFailedError",
    "SessionListPage",
    "SessionMetadata",
    "SessionNotFoundError",
    "SubscriberTooSlowError",
    "SystemMessageConfig",
    "Tool",
    "ToolCallAnsweredError",
    "ToolDeclaration",
    "ToolInvocation",
    "ToolResult",
    "TurnHolderUnreachableError",
    "TurnRunningError",
    "UnauthenticatedError",
    "UnknownPermissionRequestError",
    "UnknownToolCallError",
    "UntrustedSocketError",
    "__version__",
    "define_tool",
]

# Each exported name -> the private module that defines it (loaded on first use).
_EXPORTS: _typing.Final[dict[str, str]] = {
    "CopilotClient": "._client",
    "CompactionResult": "._compaction",
    "CompactionTokensUsed": "._compaction",
    "InfiniteSessionConfig": "._compaction",
    "BackupUnsupportedError": "._errors",
    "CompactionFailedError": "._errors",
    "CompactionInProgressError": "._errors",
    "CopilotError": "._errors",
    "DaemonTimeoutError": "._errors",
    "DaemonUnavailableError": "._errors",
    "FailedPreconditionError": "._errors",
    "InvalidArgumentError": "._errors",
    "InvalidImportError": "._errors",
    "InvalidPointError": "._errors",
    "MessageAlreadyAnsweredError": "._errors",
    "NoRetentionPolicyError": "._errors",
    "NothingToCompactError": "._errors",
    "PermissionAnsweredError": "._errors",
    "PointInsideToolCallError": "._errors",
    "PointInsideTurnError": "._errors",
    "ProviderSecretRequiredError": "._errors",
    "RPCError": "._errors",
    "ResourceExhaustedError": "._errors",
    "SequenceConflictError": "._errors",
    "SequenceOutOfRangeError": "._errors",
    "SequenceRewoundError": "._errors",
    "SessionExistsError": "._errors",
    "SessionFailedError": "._errors",
    "SessionNotFoundError": "._errors",
    "SubscriberTooSlowError": "._errors",
    "ToolCallAnsweredError": "._errors",
    "TurnHolderUnreachableError": "._errors",
    "TurnRunningError": "._errors",
    "UnauthenticatedError": "._errors",
    "UnknownPermissionRequestError": "._errors",
    "UnknownToolCallError": "._errors",
    "UntrustedSocketError": "._errors",
    "LifecycleHandler": "._lifecycle",
    "ModelInfo": "._models",
    "ProviderConfig": "._models",
    "PermissionHandler": "._permissions",
    "PermissionInvocation": "._permissions",
    "PermissionRequest": "._permissions",
    "PermissionRequestResult": "._permissions",
    "CopilotSession": "._session",
    "EventHandler": "._session",
    "EventData": "._session_events",
    "SessionEvent": "._session_events",
    "SessionEventType": "._session_events",
    "PendingToolCall": "._tool_types",
    "ToolDeclaration": "._tool_types",
    "Tool": "._tools",
    "ToolInvocation": "._tools",
    "ToolResult": "._tools",
    "define_tool": "._tools",
    "LifecycleEvent": "._types",
    "MessageOptions": "._types",
    "SearchHit": "._types",
    "SearchPage": "._types",
    "SessionConfig": "._types",
    "SessionListPage": "._types",
    "SessionMetadata": "._types",
    "SystemMessageConfig": "._types",
}


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import_module(module, __name__)
    _publish_loaded()
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _publish_loaded() -> None:
    """Binds every exported name whose module is loaded, and shows it as living
    here (like httpx), not in a private module: in reprs, tracebacks, docs."""
    namespace = globals()
    for name, module in _EXPORTS.items():
        loaded = _sys.modules.get(__name__ + module)
        if loaded is None or name in namespace:
            continue
        value = getattr(loaded, name)
        if isinstance(value, type) and value.__module__.startswith(__name__ + "._"):
            value.__module__ = __name__
        namespace[name] = value
