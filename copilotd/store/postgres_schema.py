"""The PostgreSQL backend's schema: its tables, creating and versioning them, and DSNs.

Everything lives in the schema ``copilotd`` of the database the DSN names,
so copilotd can share a database with other programs. Tables:

* ``sessions``: one row per live session: the ``SessionRecord`` (``record``)
  plus the columns the indexes need, copied from it on every write:
  ``modified_ns`` (listing: index ``sessions_recency`` on
  ``(modified_ns, session_id)``, read backwards), ``needs_attention`` (a turn
  open or messages queued: partial index ``sessions_attention``),
  ``last_sequence`` and ``metadata_bytes`` (byte-bounded listing without
  decoding records). ``session_id`` sorts by ``COLLATE "C"``, the byte order
  the other backends list ties in.
* ``events``: ``(log_number, sequence)`` -> the ``SessionEvent``, its id and
  its size. The primary key is the index every event read scans;
  ``events_ids`` keeps ids unique per log and finds an event by id. A
  session's log number comes from the sequence ``log_numbers`` and is never
  reused, so a re-created session cannot see a deleted one's events.
* ``staged_imports``: log number -> the record of an import being staged
  (its events are in ``events`` already, under a log no session names) and
  the daemon staging it (``owner``). Opening the store discards what a crash
  of this daemon (the same owner) left here, never another daemon's.
* ``purge_queue``: log numbers of deleted sessions whose events are still
  to be removed (``purge_deleted``).
* ``log_refs``: log number -> how many sessions read the log, for the logs
  forks share (no row: its own session only). Deleting a session decrements
  the count of each log it reads (``UPDATE ... RETURNING``, so daemons
  deleting at once queue on the row); a log goes to ``purge_queue`` when its
  count reaches zero.
* ``turn_leases``: session id -> the daemon (``owner``) that runs its
  turn, or works through its queue, the turn's id (the fencing token a
  turn's writes carry) and when the lease expires unless renewed
  (``expires_at``, the server's clock). Appending with a fence checks it in
  the same transaction; see ``base`` for the rules.
* ``turn_requests``: calls relayed to the daemon running a session's turn
  (``relay``): the request (``kind``, ``body``), who posted it
  (``requester``), who claimed it (``claimed_by``) and its ``answer``.
* ``tool_attachments``: the clients attached to a session with tools
  (``sessions.remote_tools``), one row per (session, client): the daemon
  whose stream it is (``daemon``), its ``tools`` (a serialized
  ``ToolClient``), ``permission_tools`` and ``permission_handler``, and
  ``expires_at``, renewed with that daemon's leases: a dead daemon's rows
  stop counting once they expire, and are deleted by any daemon then.
* ``counters``: ``session_count``, kept by creation and deletion, because
  ``count(*)`` would read every row.
* ``search_entries``, ``search_spans``, ``search_cuts``: full-text search,
  written with the events (``postgres_search``).
* ``schema_version``: one row; a newer version than ``SCHEMA_VERSION`` is
  refused before anything is written.

Sequence numbers stay gap-free because appending locks the session's row
(``SELECT ... FOR UPDATE``) and checks ``expected_last_sequence`` against
that row, in the writing transaction: two daemons appending to one session
queue on the lock, and the second sees the first's commit.

Every write that another daemon's readers should hear of sends
``pg_notify(CHANNEL, ...)`` with a JSON payload (kind, session, last
sequence, owner); PostgreSQL delivers it at commit, in commit order.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from copilotd.store.base import StoreCorrupt, StoreError, StoreVersionError

SCHEMA: Final = "copilotd"
# 2: turn_leases, and the owner of a staged import.
# 3: log_refs (the logs forks share). 4: turn_requests. 5: tool_attachments.
# 6: search_entries, search_spans, search_cuts (postgres_search), backfilled at upgrade.
SCHEMA_VERSION: Final = 6
# The first version whose events are indexed for search as they are appended.
SEARCH_VERSION: Final = 6
CHANNEL: Final = "copilotd_changes"
# Live-only events (deltas) of running turns, for the other daemons' subscribers.
LIVE_CHANNEL: Final = "copilotd_live"
# Taken while the schema is checked or created, so that daemons starting at
# once on one database create it once ("copilotd" in ASCII).
SCHEMA_LOCK_KEY: Final = 0x636F70696C6F7464
# The parts of a DSN that say where the store is; the rest (the password
# above all) is never shown.
SHOWN_DSN_KEYS: Final = ("host", "hostaddr", "port", "dbname", "user")

_CREATE: Final = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE {SCHEMA}.schema_version (version integer NOT NULL);
CREATE TABLE {SCHEMA}.sessions (
    session_id text COLLATE "C" PRIMARY KEY,
    log_number bigint NOT NULL UNIQUE,
    modified_ns bigint NOT NULL,
    last_sequence bigint NOT NULL,
    needs_attention boolean NOT NULL,
    metadata_bytes integer NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX sessions_recency ON {SCHEMA}.sessions (modified_ns, session_id);
CREATE INDEX sessions_attention ON {SCHEMA}.sessions (session_id) WHERE needs_attention;
CREATE SEQUENCE {SCHEMA}.log_numbers;
CREATE TABLE {SCHEMA}.events (
    log_number bigint NOT NULL,
    sequence bigint NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    event_bytes integer NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (log_number, sequence)
);
CREATE UNIQUE INDEX events_ids ON {SCHEMA}.events (log_number, event_id) WHERE event_id <> '';
CREATE TABLE {SCHEMA}.staged_imports (log_number bigint PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE {SCHEMA}.purge_queue (log_number bigint PRIMARY KEY);
CREATE TABLE {SCHEMA}.counters (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO {SCHEMA}.counters VALUES ('session_count', 0);
"""
# What version 2 added; also run on a version 1 store when it opens.
_CREATE_LEASES: Final = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.turn_leases (
    session_id text COLLATE "C" PRIMARY KEY,
    owner text NOT NULL,
    turn_id text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS turn_leases_owner ON {SCHEMA}.turn_leases (owner);
ALTER TABLE {SCHEMA}.staged_imports ADD COLUMN IF NOT EXISTS owner text NOT NULL DEFAULT '';
"""
# What version 3 added; also run on an older store when it opens.
_CREATE_LOG_REFS: Final = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.log_refs (
    log_number bigint PRIMARY KEY,
    refs bigint NOT NULL
);
"""
# What version 4 added; also run on an older store when it opens.
_CREATE_REQUESTS: Final = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.turn_requests (
    request_id bigserial PRIMARY KEY,
    session_id text COLLATE "C" NOT NULL,
    turn_id text NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    requester text NOT NULL,
    claimed_by text NOT NULL DEFAULT '',
    answer jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS turn_requests_session ON {SCHEMA}.turn_requests (session_id, request_id);
"""
# What version 5 added; also run on an older store when it opens.
_CREATE_ATTACHMENTS: Final = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.tool_attachments (
    session_id text COLLATE "C" NOT NULL,
    client_id text NOT NULL,
    daemon text NOT NULL,
    tools bytea NOT NULL,
    permission_tools text[] NOT NULL,
    permission_handler boolean NOT NULL,
    attached_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
CREATE INDEX IF NOT EXISTS tool_attachments_daemon ON {SCHEMA}.tool_attachments (daemon);
"""


class StoreUnreachable(StoreError):
    """The database server cannot be reached or refused the connection."""


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for logs and status: host, port, database, user; never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (an unreadable DSN)"
    shown = " ".join(f"{key}={parts[key]}" for key in SHOWN_DSN_KEYS if parts.get(key))
    return f"postgresql {shown}".rstrip()


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, to keep it out of the log."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(password) if password else None


def prepare_schema(connection: psycopg.Connection[Any], where: str) -> None:
    """Create the schema in a new database, or check the version of an existing one.

    Runs in one transaction under an advisory lock; an upgrade to version 6 indexes
    the events already stored for search, in that transaction. A newer version raises
    ``StoreVersionError`` and a ``copilotd`` schema without a version raises
    ``StoreCorrupt``; both before anything is written.
    """
    from copilotd.store import postgres_search  # it needs SCHEMA from here

    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        has_schema = connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
        ).fetchone()
        if has_schema is None:
            connection.execute(_CREATE.encode())
            connection.execute(_CREATE_LEASES.encode())
            connection.execute(_CREATE_LOG_REFS.encode())
            connection.execute(_CREATE_REQUESTS.encode())
            connection.execute(_CREATE_ATTACHMENTS.encode())
            connection.execute(postgres_search.CREATE_SEARCH.encode())
            connection.execute(
                f"INSERT INTO {SCHEMA}.schema_version VALUES (%s)", (SCHEMA_VERSION,)
            )
            return
        version = check_version(connection, where)
        if version < SCHEMA_VERSION:
            connection.execute(_CREATE_LEASES.encode())
            connection.execute(_CREATE_LOG_REFS.encode())
            connection.execute(_CREATE_REQUESTS.encode())
            connection.execute(_CREATE_ATTACHMENTS.encode())
            connection.execute(postgres_search.CREATE_SEARCH.encode())
            if version < SEARCH_VERSION:
                # In the upgrade's transaction, so the version says whether the
                # events are indexed. A daemon of an older version still running
                # would append without indexing: stop them before upgrading.
                postgres_search.rebuild(connection)
            connection.execute(
                f"UPDATE {SCHEMA}.schema_version SET version = %s", (SCHEMA_VERSION,)
            )


def check_version(connection: psycopg.Connection[Any], where: str) -> int:
    """The store's schema version; raises for a newer one or a schema without a version."""
    has_table = connection.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_version",)
    ).fetchone()
    row = None
    if has_table is not None and has_table[0]:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    if row is None:
        raise StoreCorrupt(
            f"the database at {where} has a schema {SCHEMA!r} that is not a copilotd store "
            "(it has no schema version); refusing to use it. Point copilotd at another "
            "database, or drop that schema if it is a leftover."
        )
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"the copilotd store at {where} has schema version {version}, but this copilotd "
            f"supports version {SCHEMA_VERSION} at most. Upgrade copilotd to open it; "
            "the store was left untouched."
        )
    return version


def discard_staged(connection: psycopg.Connection[Any], owner: str) -> int:
    """Hand the imports a crash of ``owner`` cut short to the purge; how many there were.

    Other daemons' staged imports stay (they may be under way); so do those
    of a daemon that died and never came back (an owner is a host and a data
    directory), until an operator drops them.
    """
    with connection.transaction():
        return connection.execute(
            f"WITH gone AS (DELETE FROM {SCHEMA}.staged_imports"
            " WHERE owner = %s OR owner = '' RETURNING log_number)"
            f" INSERT INTO {SCHEMA}.purge_queue SELECT log_number FROM gone",
            (owner,),
        ).rowcount
