"""Administration, free of any transport: status, pinning, pruning, import, backup.

The servicer's administration RPCs and the retention sweep call this. Every
deletion goes through ``SessionService.delete_session``, the one delete path.
Answers are plain values (:class:`DaemonStatus`, :class:`BackupInfo`,
:class:`~copilotd.admin.retention.Selection`); the servicer
(``copilotd/api/admin_servicer.py``) builds the wire responses from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from copilot_client.proto.admin.v1 import admin_pb2
from copilotd.admin.importer import Importer, ImportResult
from copilotd.admin.retention import RetentionPolicy, RetentionRule, Selection, select
from copilotd.errors import BackupUnsupportedError, NoRetentionPolicyError, SessionNotFoundError
from copilotd.events import SessionMetadata
from copilotd.limits import MAX_PAGE_SIZE
from copilotd.sessions.service import SessionService, store_errors
from copilotd.sessions.validation import check_session_id
from copilotd.store import SCHEMA_VERSION, BackupUnsupported, Store
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

BACKUP_CHUNK_BYTES: Final = 1 << 20
BACKUP_FORMAT: Final = "lmdb"
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True, kw_only=True)
class DaemonInfo:
    """What the daemon knows about how it runs, for status."""

    version: str
    socket_path: Path
    data_dir: Path
    socket_activated: bool = False
    metrics_address: str = ""
    config_file: Path | None = None
    store_backend: str = ""
    start_time: Timestamp
    store_location: str = ""
    """The backend and where its data is (``store.settings.describe_store``); no secrets."""


@dataclass(frozen=True, kw_only=True)
class DaemonStatus:
    """What the daemon is doing now: how it runs, and its store and turns."""

    info: DaemonInfo
    pid: int
    store_bytes: int
    session_count: int
    running_turns: int
    retention: RetentionPolicy


@dataclass(frozen=True, kw_only=True)
class BackupInfo:
    """What a backup copy is, told before its bytes."""

    format: str
    schema_version: int
    estimated_bytes: int


class AdminService:
    def __init__(
        self,
        service: SessionService,
        store: Store,
        committer: GroupCommitter,
        *,
        info: DaemonInfo,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self._service = service
        self._store = store
        self._committer = committer
        self.info = info
        self.retention = retention or RetentionPolicy()
        self._importer = Importer(service, committer)
        # Pin changes and prune deletions take turns, so a session pinned
        # while a prune runs is never deleted by it.
        self._pin_lock = asyncio.Lock()

    # -- status ------------------------------------------------------------------

    async def status(self) -> DaemonStatus:
        store_bytes = await self._service.reading(self._store.size_bytes)
        session_count = await self._service.reading(self._store.session_count)
        return DaemonStatus(
            info=self.info,
            pid=os.getpid(),
            store_bytes=store_bytes,
            session_count=session_count,
            running_turns=self._service.running_turns,
            retention=self.retention,
        )

    # -- pinning -----------------------------------------------------------------

    async def set_pinned(self, session_id: str, pinned: bool) -> SessionMetadata:
        check_session_id(session_id)
        async with self._pin_lock:
            with store_errors(session_id):
                record = await self._committer.submit(
                    lambda writer: writer.set_pinned(session_id, pinned)
                )
        log.info("%s session %s", "pinned" if pinned else "unpinned", session_id)
        return record.metadata

    # -- pruning -----------------------------------------------------------------

    def configured_rule(self) -> RetentionRule:
        if self.retention.rule is None:
            raise NoRetentionPolicyError()
        return self.retention.rule

    def preview(self, rule: RetentionRule) -> tuple[list[SessionMetadata], int]:
        """What ``rule`` selects now, and how many pinned sessions it spares."""
        selection = select(self._all_sessions(), rule, datetime.now(UTC))
        return selection.sessions, selection.pinned_kept

    async def prune(self, rule: RetentionRule) -> Selection:
        """Delete what ``rule`` selects; returns the sessions deleted.

        Each one is checked again just before it goes: a session pinned,
        used or deleted since the selection is left alone.
        """
        selected, pinned_kept = self.preview(rule)
        deleted: list[SessionMetadata] = []
        for metadata in selected:
            async with self._pin_lock:
                current = self._store.get_session(metadata.session_id)
                if current is None or current.metadata != metadata:
                    continue
                try:
                    await self._service.delete_session(metadata.session_id)
                except SessionNotFoundError:
                    continue
            deleted.append(metadata)
            log.info(
                "pruned session %s (last active %s; rule: %s)",
                metadata.session_id,
                metadata.modified_time.ToJsonString(),
                rule.describe(),
            )
        return Selection(deleted, pinned_kept)

    def _all_sessions(self) -> list[SessionMetadata]:
        sessions: list[SessionMetadata] = []
        token = ""
        while True:
            records, token = self._store.list_sessions(limit=MAX_PAGE_SIZE, page_token=token)
            sessions.extend(record.metadata for record in records)
            if not token:
                return sessions

    # -- import ------------------------------------------------------------------

    async def import_session(
        self, requests: AsyncIterable[admin_pb2.ImportSessionRequest]
    ) -> ImportResult:
        return await self._importer.import_session(requests)

    # -- backup ------------------------------------------------------------------

    def backup_info(self) -> BackupInfo:
        return BackupInfo(
            format=BACKUP_FORMAT,
            schema_version=SCHEMA_VERSION,
            estimated_bytes=self._store.size_bytes(),
        )

    async def backup(self) -> AsyncGenerator[bytes]:
        """The store's consistent copy, piece by piece, while the daemon goes on serving.

        The store writes its copy into a pipe from a worker thread; this reads
        the other end, so the copy never touches the disk on the daemon's
        side (under systemd the daemon may write only its own directories).
        A reader that stops early closes the pipe, which ends the copy.
        """
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe means fewer, larger pieces
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, BACKUP_CHUNK_BYTES)
        copying = loop.run_in_executor(None, _copy_then_close, self._store, write_fd)
        copying.add_done_callback(_ignore_result)
        try:
            while chunk := await loop.run_in_executor(None, os.read, read_fd, BACKUP_CHUNK_BYTES):
                yield chunk
            try:
                await copying
            except BackupUnsupported as error:
                raise BackupUnsupportedError(str(error)) from None
        finally:
            os.close(read_fd)
        log.info("backup copy sent")


def _copy_then_close(store: Store, fd: int) -> None:
    try:
        store.copy_to(fd)
    finally:
        os.close(fd)


def _ignore_result(future: asyncio.Future[None]) -> None:
    """Retrieve a copy's failure nobody awaits (its reader left), so it is not logged as lost."""
    if not future.cancelled():
        future.exception()
