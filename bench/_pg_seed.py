"""Filling a PostgreSQL store with the seeded sessions, through the store's own schema.

``PostgresStore.open`` creates the schema (tables, indexes, version) exactly
as a daemon does; the rows then go in by ``COPY`` in binary, which writes
100,000 sessions in seconds where one ``write_batch`` per session would take
minutes. Each row is what the store's writer would have written: the record
and stored events come from ``copilotd.store.records.new_record`` (the
numbering, chaining and metadata rules every backend shares) and the indexed
columns from ``postgres_writer.index_columns``. The session counter and the
log-number sequence are set to match, and the tables analysed, as autovacuum
would have by the time a store had grown this large.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench._seed import Layout, session_events
from copilotd.store import records
from copilotd.store.postgres_schema import SCHEMA
from copilotd.store.postgres_store import PostgresStore
from copilotd.store.postgres_writer import index_columns

_SESSION_COLUMNS = (
    "session_id, log_number, modified_ns, last_sequence, needs_attention, metadata_bytes, record"
)
_SESSION_TYPES = ("text", "int8", "int8", "int8", "bool", "int4", "bytea")
_EVENT_COLUMNS = "log_number, sequence, event_id, event_bytes, event"
_EVENT_TYPES = ("int8", "int8", "text", "int4", "bytea")


def seed_postgres(dsn: str, layout: Layout) -> float:
    """Write ``layout``'s sessions into the empty database ``dsn`` names; the seconds taken."""
    began = time.monotonic()
    PostgresStore.open(dsn).close()  # the schema, as a daemon creates it
    sessions: list[tuple[Any, ...]] = []
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(
            f"COPY {SCHEMA}.events ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(_EVENT_TYPES)
            for number, (session_id, count) in enumerate(layout.sessions()):
                log_number = number + 1
                metadata, events = session_events(layout, session_id, count, number)
                record, stored = records.new_record(metadata, log_number, events)
                for event in stored:
                    raw = event.SerializeToString()
                    copy.write_row((log_number, event.sequence, event.id, len(raw), raw))
                sessions.append((session_id, log_number, *index_columns(record)))
        with cursor.copy(
            f"COPY {SCHEMA}.sessions ({_SESSION_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(_SESSION_TYPES)
            for row in sessions:
                copy.write_row(row)
        cursor.execute(
            f"UPDATE {SCHEMA}.counters SET value = %s WHERE name = 'session_count'",
            (len(sessions),),
        )
        cursor.execute(f"SELECT setval('{SCHEMA}.log_numbers', %s)", (len(sessions),))
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"VACUUM ANALYZE {SCHEMA}.sessions, {SCHEMA}.events")
    return time.monotonic() - began
