"""The client: connects to (or starts) copilotd and hands out sessions."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, overload

from . import _autostart
from ._deadlines import per_call
from ._errors import CopilotError, SessionNotFoundError
from .paths import MAX_SOCKET_PATH_BYTES, resolve_data_dir, resolve_socket_path
from .wire import ADDRESS_ENV, DEFAULT_CALL_TIMEOUT, MAX_PAGE_SIZE, TOKEN_ENV

if TYPE_CHECKING:
    from datetime import datetime

    from ._compaction import InfiniteSessionConfig
    from ._lifecycle import LifecycleHandler, LifecycleWatch
    from ._models import ModelInfo, ProviderConfig
    from ._permissions import PermissionHandlerFunc
    from ._session import CopilotSession
    from ._session_events import SessionEvent
    from ._tools import Tool
    from ._types import SearchPage, SessionConfig, SessionListPage, SessionMetadata
    from .proto.v1 import copilot_pb2_grpc
    from .service import ServiceClient

# Only the standard library at import: grpc, protobuf and the modules above load in start(),
# after an auto-start launched the daemon, so that they load while it starts.

__all__ = ["CopilotClient"]


class CopilotClient:
    """A connection to the local copilotd, which owns the sessions.

    ``stop()`` closes this client's connection only; the daemon keeps running
    and keeps every session. Methods called before :meth:`start` start the
    client first.

    Args:
        socket_path: The daemon's socket; default ``$COPILOTD_SOCKET``, else
            ``$XDG_RUNTIME_DIR/copilotd/copilotd.sock``.
        data_dir: Where an auto-started daemon keeps its data and log; default
            ``$COPILOTD_DATA_DIR``, else ``$XDG_DATA_HOME/copilotd``.
        auto_start: Start the daemon when nothing serves the socket.
        daemon_command: The command that runs the daemon (``serve ...`` is
            appended); default ``python -m copilotd``, else ``copilotd`` on PATH.
        start_timeout: Seconds to wait for an auto-started daemon to serve.
        address: ``HOST:PORT`` of a daemon serving TCP (``copilotd serve
            --listen``), used instead of the socket; default ``$COPILOTD_ADDRESS``.
            A daemon on TCP is never auto-started.
        token: The bearer token the daemon's TCP port requires; default
            ``$COPILOTD_TOKEN``. Not sent over the Unix socket.
        tls_root_cert: PEM file of the daemon's certificate (or of its CA): the
            TCP connection then uses TLS. Without it, plain TCP is used, which
            grpc allows to loopback addresses only.
        timeout: Seconds each call may take before it raises
            ``DaemonTimeoutError`` (a frozen or stuck daemon); ``None`` for no
            limit. Calls take their own ``timeout=`` too (``math.inf``: none).
            Connecting at start is bounded by it as well.
    """

    def __init__(
        self,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        auto_start: bool = True,
        daemon_command: Sequence[str] | None = None,
        start_timeout: float = 10.0,
        address: str | None = None,
        token: str | None = None,
        tls_root_cert: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self._address = address or os.environ.get(ADDRESS_ENV) or None
        self._socket_path = resolve_socket_path(socket_path)
        if len(os.fsencode(self._socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"socket path {self._socket_path} is longer than {MAX_SOCKET_PATH_BYTES} "
                "bytes, the limit of Unix sockets; choose a shorter one"
            )
        self._data_dir = resolve_data_dir(data_dir)
        self._auto_start = auto_start and self._address is None
        self._daemon_command = list(daemon_command) if daemon_command else None
        self._start_timeout = start_timeout
        self._token = token or os.environ.get(TOKEN_ENV) or None
        self._tls_root_cert = Path(tls_root_cert) if tls_root_cert else None
        self._call_timeout = timeout
        self._service: ServiceClient | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._daemon_version: str | None = None
        self._sessions: set[CopilotSession] = set()
        self._lifecycle: LifecycleWatch | None = None

    def __repr__(self) -> str:
        if self._address:
            return f"CopilotClient(address={self._address!r})"
        return f"CopilotClient(socket_path={str(self._socket_path)!r})"

    @property
    def socket_path(self) -> Path:
        """The daemon's socket."""
        return self._socket_path

    @property
    def data_dir(self) -> Path:
        """Where an auto-started daemon keeps its data and its log."""
        return self._data_dir

    # -- lifetime ------------------------------------------------------------

    async def start(self) -> None:
        """Connects to the daemon, starting it first if needed and allowed.

        Raises:
            DaemonUnavailableError: The daemon is not reachable and could not
                be (or was not allowed to be) started.
        """
        async with self._start_lock:
            if self._started:
                return
            try:
                self._daemon_version = await _autostart.connect(
                    self._open_transport,
                    socket_path=self._socket_path,
                    data_dir=self._data_dir,
                    auto_start=self._auto_start,
                    daemon_command=self._daemon_command,
                    start_timeout=self._start_timeout,
                )
            except BaseException:
                await self._close_transport()
                raise
            self._started = True

    @property
    def _transport(self) -> ServiceClient:
        if self._service is None:
            from .service import ServiceClient

            self._service = ServiceClient(
                self._socket_path,
                address=self._address,
                token=self._token,
                tls_root_cert=self._tls_root_cert,
                call_timeout=self._call_timeout,
            )
        return self._service

    async def _close_transport(self) -> None:
        if self._service is not None:  # never made: nothing to close, and no grpc to import
            await self._service.close()

    def _open_transport(self) -> ServiceClient:
        # What the calls use, loaded while an auto-started daemon starts.
        from . import _branching, _history, _lifecycle, _search, _session  # noqa: F401

        self._transport.open()
        return self._transport

    async def stop(self) -> None:
        """Detaches this client's sessions and closes the connection.

        Never stops the daemon: sessions and their turns carry on there.
        """
        for session in list(self._sessions):
            await session.destroy()
        self._sessions.clear()
        if self._lifecycle is not None:
            await self._lifecycle.close()
            self._lifecycle = None
        await self._close_transport()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _stub(self) -> copilot_pb2_grpc.CopilotServiceAsyncStub:
        if not self._started:
            await self.start()
        return self._transport.stub

    # -- lifecycle -----------------------------------------------------------

    @overload
    def on_lifecycle(self, handler: LifecycleHandler, /) -> Callable[[], None]: ...
    @overload
    def on_lifecycle(self, event_type: str, handler: LifecycleHandler, /) -> Callable[[], None]: ...

    def on_lifecycle(
        self, first: str | LifecycleHandler, handler: LifecycleHandler | None = None, /
    ) -> Callable[[], None]:
        """Calls ``handler`` for session lifecycle events, whichever process caused them.

        ``on_lifecycle(handler)`` gets every type; ``on_lifecycle("session.created",
        handler)`` one ("session.created", "session.deleted", "session.updated").
        The client must be started. Events are delivered from the moment the
        watch is live: ``await lifecycle_ready()`` to be sure it is.

        Returns:
            A function that removes the handler.
        """
        if not self._started:
            raise CopilotError("start the client before subscribing to lifecycle events")
        if self._lifecycle is None:
            from ._lifecycle import LifecycleWatch

            self._lifecycle = LifecycleWatch(self._transport)
        return self._lifecycle.subscribe(first, handler)

    async def lifecycle_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Waits until the lifecycle watch started by :meth:`on_lifecycle` is live."""
        if self._lifecycle is None:
            raise CopilotError("no lifecycle handler is registered")
        async with asyncio.timeout(timeout):
            await self._lifecycle.live.wait()

    # -- calls ---------------------------------------------------------------

    async def ping(self, *, timeout: float | None = None) -> str:  # noqa: ASYNC109 (a gRPC deadline)
        """The daemon's version (and proof that it answers)."""
        await self._stub()
        return await self._transport.ping(deadline=per_call(timeout))

    async def create_session(
        self,
        config: SessionConfig | Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
        **kwargs: Any,
    ) -> CopilotSession:
        """Creates a session.

        Args:
            config: The session's configuration (a dict is accepted too).
            **kwargs: ``SessionConfig`` fields, overriding those of ``config``:
                ``create_session(session_id="user-123", model="gpt-5")``.
            timeout: Seconds the call may take; default the client's ``timeout``.

        Raises:
            TypeError: For a keyword that is not a ``SessionConfig`` field.
            SessionExistsError: The id is taken.
            InvalidArgumentError: The id or another field is invalid.
        """
        from ._session_requests import create_request
        from ._types import SessionMetadata

        request, config = create_request(config, kwargs)
        stub = await self._stub()
        response = await self._transport.call(
            stub.CreateSession, request, deadline=per_call(timeout)
        )
        session = self._track(
            SessionMetadata.from_proto(response.session),
            tools=config.tools,
            on_permission_request=config.on_permission_request,
        )
        return await session.attached_if_holding_tools()

    async def resume_session(
        self,
        session_id: str,
        config: SessionConfig | Mapping[str, Any] | None = None,
        *,
        provider: ProviderConfig | Mapping[str, Any] | None = None,
        tools: Sequence[Tool] | None = None,
        on_permission_request: PermissionHandlerFunc | None = None,
        continue_pending_work: bool = False,
        infinite_sessions: InfiniteSessionConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> CopilotSession:
        """Resumes an existing session (recorded as a ``session.resume`` event).

        Args:
            session_id: The session's id.
            config: As in the Copilot SDK; only its ``provider``, ``tools`` and
                ``infinite_sessions`` are used: the session keeps the model and
                system message it was created with.
            provider: The session's own provider, again (its secret is not
                stored, so a session created with one needs it after every
                daemon restart). Overrides ``config``'s.
            tools: The session's tools from now on (``None``: ``config``'s,
                else those it has); this handle runs those with a handler:
                it attaches with them before returning, and the daemon sends
                it calls of them (each call to one attached client).
            on_permission_request: Decides the permission requests of the
                tools this handle declared without ``skip_permission``
                (``None``: ``config``'s; none at all denies them).
            continue_pending_work: True keeps the tool calls waiting for a
                result or a permission decision open: those no attached
                client has are sent to this handle's handlers. False (the
                default, as in the Copilot SDK) closes them with the result
                "interrupted: no client answered", so the turn goes on.
            infinite_sessions: New compaction settings (``None``: ``config``'s,
                else those the session has).
            timeout: Seconds the call may take; default the client's ``timeout``.

        On a full store the session is resumed without its ``session.resume``
        event; the session's ``resume_recorded`` is then False.

        Raises:
            SessionNotFoundError: No session has this id.
            InvalidArgumentError: The provider config is invalid.
        """
        from ._session_requests import resume_request
        from ._types import SessionMetadata

        request, tools, on_permission_request = resume_request(
            session_id,
            config,
            provider=provider,
            tools=tools,
            on_permission_request=on_permission_request,
            continue_pending_work=continue_pending_work,
            infinite_sessions=infinite_sessions,
        )
        stub = await self._stub()
        response = await self._transport.call(
            stub.ResumeSession, request, deadline=per_call(timeout)
        )
        metadata = SessionMetadata.from_proto(response.session)
        if response.tail and response.tail[-1].sequence > metadata.last_sequence:
            metadata = replace(metadata, last_sequence=response.tail[-1].sequence)
        session = self._track(
            metadata,
            resume_recorded=not response.resume_not_recorded,
            tools=tools or (),
            on_permission_request=on_permission_request,
        )
        return await session.attached_if_holding_tools()

    def _track(
        self,
        metadata: SessionMetadata,
        *,
        resume_recorded: bool = True,
        tools: Sequence[Tool] = (),
        on_permission_request: PermissionHandlerFunc | None = None,
    ) -> CopilotSession:
        from ._session import CopilotSession

        session = CopilotSession(
            self._transport,
            metadata,
            on_destroy=self._sessions.discard,
            resume_recorded=resume_recorded,
            tools=tools,
            on_permission_request=on_permission_request,
        )
        self._sessions.add(session)
        return session

    async def list_sessions_page(
        self,
        *,
        page_size: int = 50,
        page_token: str | None = "",
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> SessionListPage:
        """One page of sessions, most recently active first.

        Args:
            page_size: Sessions per page (at most 1000).
            page_token: ``next_page_token`` of the previous page; empty for the first.
            timeout: Seconds the call may take; default the client's ``timeout``.
        """
        from ._types import SessionListPage, SessionMetadata
        from .proto.v1 import copilot_pb2

        request = copilot_pb2.ListSessionsRequest(page_size=page_size, page_token=page_token or "")
        stub = await self._stub()
        response = await self._transport.call(
            stub.ListSessions, request, deadline=per_call(timeout)
        )
        return SessionListPage(
            sessions=[SessionMetadata.from_proto(s) for s in response.sessions],
            next_page_token=response.next_page_token or None,
        )

    async def list_sessions(
        self,
        *,
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> list[SessionMetadata]:
        """Sessions, most recently active first, read page by page.

        Args:
            limit: At most this many; ``None`` for all.
            timeout: Seconds each page's call may take; default the client's ``timeout``.
        """
        sessions: list[SessionMetadata] = []
        token: str | None = ""
        while limit is None or len(sessions) < limit:
            size = MAX_PAGE_SIZE if limit is None else min(MAX_PAGE_SIZE, limit - len(sessions))
            page = await self.list_sessions_page(page_size=size, page_token=token, timeout=timeout)
            sessions.extend(page.sessions)
            token = page.next_page_token
            if not token or not page.sessions:
                break
        return sessions if limit is None else sessions[:limit]

    async def search_sessions(
        self,
        query: str,
        page_size: int = 20,
        page_token: str | None = None,
        *,
        session_id_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_rewound: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> SearchPage:
        """One page of the events, across all sessions, whose text matches ``query``.

        User messages, assistant answers and tool results are searched; the
        best match (bm25) comes first. The daemon indexes every committed
        event, and a search sees everything committed before it was made.

        Args:
            query: SQLite FTS5 syntax: words (all must match), ``"a phrase"``,
                ``OR``, ``NOT``, ``prefix*``. Put words with punctuation in
                double quotes. An empty or malformed query raises
                :class:`InvalidArgumentError`.
            page_size: Hits per page (at most 1000).
            page_token: ``next_page_token`` of the previous page, with the
                same query and filters; ``None`` for the first.
            session_id_prefix: Only sessions whose id starts with this.
            since: Only events at or after this time (an aware datetime).
            until: Only events before this time.
            include_rewound: Also find events cut by rewinds (``hit.rewound``).
            timeout: Seconds the call may take; default the client's ``timeout``.
        """
        from ._search import search_sessions

        await self._stub()
        return await search_sessions(
            self._transport,
            query,
            page_size,
            page_token,
            session_id_prefix=session_id_prefix,
            since=since,
            until=until,
            include_rewound=include_rewound,
            deadline=per_call(timeout),
        )

    async def get_session_metadata(
        self,
        session_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> SessionMetadata | None:
        """A session's metadata, or ``None`` when there is no such session."""
        from ._types import SessionMetadata
        from .proto.v1 import copilot_pb2

        request = copilot_pb2.GetSessionRequest(session_id=session_id)
        stub = await self._stub()
        try:
            response = await self._transport.call(
                stub.GetSession, request, deadline=per_call(timeout)
            )
        except SessionNotFoundError:
            return None
        return SessionMetadata.from_proto(response.session)

    async def delete_session(
        self,
        session_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> None:
        """Deletes a session and all its events, for good.

        Raises:
            SessionNotFoundError: No session has this id.
        """
        from .proto.v1 import copilot_pb2

        request = copilot_pb2.DeleteSessionRequest(session_id=session_id)
        stub = await self._stub()
        await self._transport.call(stub.DeleteSession, request, deadline=per_call(timeout))

    async def fork_session(
        self,
        source_session_id: str,
        new_session_id: str | None = None,
        up_to_sequence: int | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> SessionMetadata:
        """A new session whose history is the source's up to ``up_to_sequence`` (``None``:
        its last event), made without copying it; resume it to talk to it.

        Raises ``SessionExistsError`` for a taken ``new_session_id``, and an
        :class:`InvalidPointError` for a point inside a turn or a tool call, rewound,
        or out of range.
        """
        from ._branching import fork_session

        await self._stub()
        fork = (source_session_id, new_session_id, up_to_sequence)
        return await fork_session(self._transport, *fork, deadline=per_call(timeout))

    async def get_messages(
        self,
        session_id: str,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
        include_rewound: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> list[SessionEvent]:
        """A session's persisted events, oldest first, without resuming it.

        Reading writes nothing: unlike :meth:`resume_session` (which records a
        ``session.resume`` event and makes the session recently active), it
        leaves the session's age, and so its retention, as it was. The same
        as ``CopilotSession.get_messages`` otherwise.

        Args:
            session_id: The session's id.
            after_sequence: Only events with a greater sequence number.
            limit: At most this many events; ``None`` for all.
            include_rewound: Also the events rewinds cut (for audit).
            timeout: Seconds each page's call may take; default the client's ``timeout``.

        Raises:
            SessionNotFoundError: No session has this id.
        """
        from ._history import read_events

        await self._stub()
        return await read_events(
            self._transport,
            session_id,
            after_sequence=after_sequence,
            limit=limit,
            deadline=per_call(timeout),
            include_rewound=include_rewound,
        )

    async def pin_session(self, session_id: str, pinned: bool = True) -> SessionMetadata:
        """Pins a session (``pinned=False``: unpins it); retention never deletes a pinned one.

        Raises:
            SessionNotFoundError: No session has this id.
        """
        from ._types import SessionMetadata
        from .proto.admin.v1 import admin_pb2

        request = admin_pb2.SetSessionPinnedRequest(session_id=session_id, pinned=pinned)
        await self._stub()
        response = await self._transport.call(self._transport.admin_stub.SetSessionPinned, request)
        return SessionMetadata.from_proto(response.session)

    async def unpin_session(self, session_id: str) -> SessionMetadata:
        """Unpins a session, so that retention may delete it again."""
        return await self.pin_session(session_id, pinned=False)

    async def get_last_session_id(self) -> str | None:
        """The id of the most recently active session, or ``None`` if there is none."""
        page = await self.list_sessions_page(page_size=1)
        return page.sessions[0].session_id if page.sessions else None

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:  # noqa: ASYNC109 (a gRPC deadline)
        """The models the daemon's configured providers offer, the default first.

        With no provider configured, the one entry is the offline model,
        which then answers every model name.
        """
        from ._models import ModelInfo
        from .proto.v1 import copilot_pb2

        stub = await self._stub()
        response = await self._transport.call(
            stub.ListModels, copilot_pb2.ListModelsRequest(), deadline=per_call(timeout)
        )
        return [ModelInfo.from_proto(model) for model in response.models]
