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
"""

from ._client import CopilotClient
from ._compaction import CompactionResult, InfiniteSessionConfig
from ._errors import (
    BackupUnsupportedError,
    CompactionFailedError,
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
    "CompactionResult",
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

# Show the public names as living here (like httpx), not in private modules.
for _value in list(globals().values()):
    if isinstance(_value, type) and _value.__module__.startswith("copilot_client._"):
        _value.__module__ = "copilot_client"
del _value
