"""Session storage: the contract (``base``), its backends and a factory to pick one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from copilotd.store.base import (
    SCHEMA_VERSION,
    BackupUnsupported,
    EventIdTaken,
    PendingMessage,
    QueueEdit,
    SequenceConflict,
    SequenceUnavailable,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreChange,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreVersionError,
    StoreWriter,
    TurnBusy,
    TurnLost,
)
from copilotd.store.lmdb_store import LmdbStore
from copilotd.store.memory_store import MemoryStore

__all__ = [
    "SCHEMA_VERSION",
    "SERVED_BACKENDS",
    "STORE_KINDS",
    "BackupUnsupported",
    "EventIdTaken",
    "LmdbStore",
    "MemoryStore",
    "PendingMessage",
    "QueueEdit",
    "SequenceConflict",
    "SequenceUnavailable",
    "SessionEvent",
    "SessionExists",
    "SessionMetadata",
    "SessionNotFound",
    "SessionRecord",
    "Store",
    "StoreChange",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreVersionError",
    "StoreWriter",
    "TurnBusy",
    "TurnLost",
    "open_store",
]

STORE_KINDS = ("lmdb", "postgresql", "memory")
# The backends ``[store] backend`` may name: the durable ones ("memory" keeps
# nothing across a restart, so it serves tests and trials, never the daemon).
SERVED_BACKENDS = ("lmdb", "postgresql")


def open_store(kind: str = "lmdb", path: Path | None = None, **options: Any) -> Store:
    """Open the store backend named by configuration.

    Args:
        kind: "lmdb" (durable, the default), "postgresql" (a database
            server, ``dsn`` in ``options``) or "memory" (nothing survives the
            process; for tests and trials).
        path: the store's directory; required for "lmdb", unused by the others.
        options: passed to the backend, e.g. ``initial_map_size`` and
            ``max_map_size`` for "lmdb", ``dsn`` for "postgresql".
    """
    if kind == "lmdb":
        if path is None:
            raise ValueError("the lmdb store needs a path")
        return LmdbStore.open(path, **options)
    if kind == "postgresql":
        # Imported here: only a daemon configured for it loads libpq.
        from copilotd.store.postgres_store import PostgresStore

        return PostgresStore.open(**options)
    if kind == "memory":
        return MemoryStore(**options)
    raise ValueError(f"unknown store kind {kind!r}; expected one of {', '.join(STORE_KINDS)}")
