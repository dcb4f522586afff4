"""The PostgreSQL backend's relay: ``turn_requests`` rows and live events between daemons.

A request is a row of ``turn_requests``; posting and answering it send a
notification on the store's channel naming the daemon it is for (``t``), so
the lease holder acts at once and the poster hears the answer at once. The
holder also reads the rows of its sessions on every lease renewal, which
covers a notification lost with a dropped connection.

Live events (a running turn's deltas) go out on ``LIVE_CHANNEL`` from one
thread of their own, in the order they were published, batched in one
transaction per wake-up: publishing never waits for the database. Every
write transaction first sends those still waiting (``notify_live``, under
``live_lock``), so a live event published before a commit reaches the other
daemons before that commit's own notification. They are best-effort: a
payload over PostgreSQL's 8000 bytes, or one published while the database is
unreachable or more than ``LIVE_BACKLOG`` behind, is dropped.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import deque
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from copilotd.store.postgres_schema import CHANNEL, LIVE_CHANNEL, SCHEMA
from copilotd.store.relay import (
    Assignment,
    Relay,
    RequestAnswer,
    RequestKind,
    ToolAttachment,
    TurnRequest,
)

log = logging.getLogger(__name__)

# PostgreSQL refuses a notification payload of 8000 bytes or more.
MAX_PAYLOAD_BYTES: Final = 7999
LIVE_BACKLOG: Final = 4096
# Requests whose poster never came back (it died): every poster gives up
# long before (``sessions.relay``), so an older row is nobody's.
ABANDONED_AFTER: Final = "1 hour"

_COLUMNS: Final = "r.request_id, r.session_id, r.turn_id, r.kind, r.body"


def relay_payload(kind: str, session_id: str, owner: str, target: str) -> str:
    """A request's or an answer's notification: for ``target`` only."""
    return json.dumps({"k": kind, "s": session_id, "q": 0, "o": owner, "t": target})


def live_payload(session_id: str, last_sequence: int, owner: str, event: bytes) -> str:
    return json.dumps(
        {"s": session_id, "q": last_sequence, "o": owner, "e": base64.b64encode(event).decode()}
    )


def parse_live(payload: str) -> tuple[str, int, str, bytes]:
    """Session, last sequence, owner and event of a live notification."""
    live = json.loads(payload)
    return live["s"], int(live["q"]), live["o"], base64.b64decode(live["e"])


def _request(row: tuple[Any, ...]) -> TurnRequest:
    request_id, session_id, turn_id, kind, body = row
    kinds: dict[str, RequestKind] = {
        "abort": "abort",
        "tool_result": "tool_result",
        "close_calls": "close_calls",
    }
    return TurnRequest(
        session_id=session_id,
        turn_id=turn_id,
        kind=kinds.get(kind, "permission"),
        subject=body.get("subject", ""),
        reason=body.get("reason", ""),
        approved=bool(body.get("approved", False)),
        result=base64.b64decode(body.get("result", "")),
        request_id=int(request_id),
    )


class PostgresRelay(Relay):
    def __init__(self, pool: ConnectionPool[Any], owner: str, lease_seconds: float) -> None:
        self._pool = pool
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._live: deque[str] = deque()
        # Guards ``_live``, ``_sender`` and ``_stopping``; the sender waits on it.
        self._live_ready = threading.Condition()
        self._sender: threading.Thread | None = None
        self._stopping = False
        # Held while live events are sent: by the sender, and by each write
        # transaction until it commits (``notify_live``).
        self.live_lock = threading.Lock()

    def post(self, request: TurnRequest) -> int:
        body = {
            "subject": request.subject,
            "reason": request.reason,
            "approved": request.approved,
            "result": base64.b64encode(request.result).decode(),
        }
        with self._pool.connection() as connection, connection.transaction():
            row = connection.execute(
                f"INSERT INTO {SCHEMA}.turn_requests"
                " (session_id, turn_id, kind, body, requester) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING request_id",
                (request.session_id, request.turn_id, request.kind, Jsonb(body), self._owner),
            ).fetchone()
            holder = connection.execute(
                f"SELECT owner FROM {SCHEMA}.turn_leases WHERE session_id = %s",
                (request.session_id,),
            ).fetchone()
            if holder is not None:
                payload = relay_payload("request", request.session_id, self._owner, holder[0])
                connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        assert row is not None
        return int(row[0])

    def waiting(self) -> list[TurnRequest]:
        with self._pool.connection() as connection:
            connection.execute(
                f"DELETE FROM {SCHEMA}.turn_requests"
                f" WHERE created_at < now() - interval '{ABANDONED_AFTER}'"
            )
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM {SCHEMA}.turn_requests r"
                f" JOIN {SCHEMA}.turn_leases l USING (session_id)"
                " WHERE l.owner = %s AND r.claimed_by = '' ORDER BY r.request_id",
                (self._owner,),
            ).fetchall()
        return [_request(row) for row in rows]

    def claim(self, request_id: int) -> bool:
        with self._pool.connection() as connection:
            claimed = connection.execute(
                f"UPDATE {SCHEMA}.turn_requests SET claimed_by = %s"
                " WHERE request_id = %s AND claimed_by = ''",
                (self._owner, request_id),
            ).rowcount
        return bool(claimed == 1)

    def answer(self, request: TurnRequest, answer: RequestAnswer) -> None:
        stored = {
            "value": answer.value,
            "status": answer.status,
            "reason": answer.reason,
            "message": answer.message,
            "metadata": answer.metadata,
        }
        with self._pool.connection() as connection, connection.transaction():
            row = connection.execute(
                f"UPDATE {SCHEMA}.turn_requests SET answer = %s WHERE request_id = %s"
                " RETURNING requester",
                (Jsonb(stored), request.request_id),
            ).fetchone()
            if row is not None:
                payload = relay_payload("answer", request.session_id, self._owner, row[0])
                connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def answer_of(self, request_id: int) -> RequestAnswer | None:
        with self._pool.connection() as connection:
            row = connection.execute(
                f"SELECT answer FROM {SCHEMA}.turn_requests WHERE request_id = %s", (request_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        stored = row[0]
        return RequestAnswer(
            value=bool(stored["value"]),
            status=str(stored["status"]),
            reason=int(stored["reason"]),
            message=str(stored["message"]),
            metadata={str(k): str(v) for k, v in stored["metadata"].items()},
        )

    def withdraw(self, request_id: int) -> bool:
        with self._pool.connection() as connection:
            removed = connection.execute(
                f"DELETE FROM {SCHEMA}.turn_requests WHERE request_id = %s AND claimed_by = ''",
                (request_id,),
            ).rowcount
        return bool(removed == 1)

    def forget(self, request_id: int) -> None:
        with self._pool.connection() as connection:
            connection.execute(
                f"DELETE FROM {SCHEMA}.turn_requests WHERE request_id = %s", (request_id,)
            )

    def attach_tools(self, attachment: ToolAttachment) -> None:
        with self._pool.connection() as connection, connection.transaction():
            connection.execute(
                f"INSERT INTO {SCHEMA}.tool_attachments (session_id, client_id, daemon, tools,"
                " permission_tools, permission_handler, expires_at) VALUES (%s, %s, %s, %s, %s,"
                " %s, now() + make_interval(secs => %s)) ON CONFLICT (session_id, client_id)"
                " DO UPDATE SET daemon = EXCLUDED.daemon, tools = EXCLUDED.tools,"
                " permission_tools = EXCLUDED.permission_tools,"
                " permission_handler = EXCLUDED.permission_handler, attached_at = now(),"
                " expires_at = EXCLUDED.expires_at",
                (
                    attachment.session_id,
                    attachment.client_id,
                    self._owner,
                    attachment.tools,
                    list(attachment.permission_tools),
                    attachment.permission_handler,
                    self._lease_seconds,
                ),
            )
            self._tell_holder(connection, attachment.session_id)

    def detach_tools(self, session_id: str, client_id: str) -> None:
        with self._pool.connection() as connection, connection.transaction():
            connection.execute(
                f"DELETE FROM {SCHEMA}.tool_attachments"
                " WHERE session_id = %s AND client_id = %s AND daemon = %s",
                (session_id, client_id, self._owner),
            )
            self._tell_holder(connection, session_id)

    def renew_attachments(self) -> None:
        with self._pool.connection() as connection:
            connection.execute(
                f"UPDATE {SCHEMA}.tool_attachments"
                " SET expires_at = now() + make_interval(secs => %s) WHERE daemon = %s",
                (self._lease_seconds, self._owner),
            )
            connection.execute(f"DELETE FROM {SCHEMA}.tool_attachments WHERE expires_at < now()")

    def attachments(self, session_id: str) -> list[ToolAttachment]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT client_id, daemon, tools, permission_tools, permission_handler"
                f" FROM {SCHEMA}.tool_attachments WHERE session_id = %s AND daemon <> %s"
                " AND expires_at > now() ORDER BY attached_at, client_id",
                (session_id, self._owner),
            ).fetchall()
        return [
            ToolAttachment(session_id, client_id, daemon, bytes(tools), tuple(names), handler)
            for client_id, daemon, tools, names, handler in rows
        ]

    def assign(self, daemon: str, assignment: Assignment) -> None:
        payload = json.dumps(
            {
                "k": "assign",
                "s": assignment.session_id,
                "q": 0,
                "o": self._owner,
                "t": daemon,
                "a": {
                    "c": assignment.client_id,
                    "u": assignment.turn_id,
                    "i": assignment.call_id,
                    "p": assignment.asking,
                },
            }
        )
        with self._pool.connection() as connection:
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def _tell_holder(self, connection: psycopg.Connection[Any], session_id: str) -> None:
        """Notify the daemon holding the session's lease (if any) that its tool
        clients changed, in ``connection``'s transaction."""
        holder = connection.execute(
            f"SELECT owner FROM {SCHEMA}.turn_leases WHERE session_id = %s", (session_id,)
        ).fetchone()
        if holder is not None and holder[0] != self._owner:
            payload = relay_payload("tools", session_id, self._owner, holder[0])
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def publish_live(self, session_id: str, last_sequence: int, event: bytes) -> None:
        payload = live_payload(session_id, last_sequence, self._owner, event)
        if len(payload.encode()) > MAX_PAYLOAD_BYTES:
            return  # best-effort: the caller splits what it can
        with self._live_ready:
            if self._stopping:
                return
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_live, name="copilotd-live-sender", daemon=True
                )
                self._sender.start()
            # When the database is far behind, live events are the first thing to give.
            if len(self._live) < LIVE_BACKLOG:
                self._live.append(payload)
                self._live_ready.notify()

    def close(self) -> None:
        """Stop the live sender (what it has not sent yet is dropped)."""
        with self._live_ready:
            self._stopping = True
            sender, self._sender = self._sender, None
            self._live_ready.notify()
        if sender is not None:
            sender.join()

    def notify_live(self, connection: psycopg.Connection[Any]) -> None:
        """Send the live events published so far in ``connection``'s transaction; the
        caller holds ``live_lock`` until it commits. A write transaction does this
        first, so every live event published before a commit is delivered before it."""
        with self._live_ready:
            payloads = list(self._live)
            self._live.clear()
        for payload in payloads:
            connection.execute("SELECT pg_notify(%s, %s)", (LIVE_CHANNEL, payload))

    def _send_live(self) -> None:
        while True:
            with self._live_ready:
                self._live_ready.wait_for(lambda: bool(self._live) or self._stopping)
                if self._stopping:
                    return
            try:
                # The lock first, as a write transaction takes it: events leave in order.
                with (
                    self.live_lock,
                    self._pool.connection() as connection,
                    connection.transaction(),
                ):
                    self.notify_live(connection)
            except psycopg.Error as error:
                log.info("live events dropped: %s", str(error).strip())
