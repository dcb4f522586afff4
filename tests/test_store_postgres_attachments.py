"""The PostgreSQL store's record of the tool clients attached to each daemon
(``Relay.attach_tools`` and the ``tool_attachments`` table), on the real private cluster."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from copilot_client.proto.v1 import copilot_pb2
from copilotd.store.postgres_schema import SCHEMA, SCHEMA_VERSION
from copilotd.store.postgres_store import PostgresStore
from copilotd.store.relay import Relay, ToolAttachment
from tests.support.postgres import PostgresCluster


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.fixture
def two_daemons(dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """The stores of two daemons (two owners) on one database."""
    first = PostgresStore.open(dsn, lease_owner="daemon-a", lease_seconds=30)
    second = PostgresStore.open(dsn, lease_owner="daemon-b", lease_seconds=30)
    yield first, second
    first.close()
    second.close()


def relay_of(store: PostgresStore) -> Relay:
    assert store.relay is not None
    return store.relay


def attachment(client_id: str) -> ToolAttachment:
    tools = copilot_pb2.ToolClient(client_id=client_id, permission_tools=["get_weather"])
    return ToolAttachment("s", client_id, "", tools.SerializeToString(), ("get_weather",), True)


def test_a_daemon_sees_the_clients_attached_to_the_others_until_they_detach(
    two_daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = (relay_of(store) for store in two_daemons)
    b.attach_tools(attachment("client-b"))
    a.attach_tools(attachment("client-a"))
    [seen] = a.attachments("s")  # its own clients are in its memory already
    assert (seen.client_id, seen.daemon, seen.permission_tools, seen.permission_handler) == (
        "client-b",
        "daemon-b",
        ("get_weather",),
        True,
    )
    assert copilot_pb2.ToolClient.FromString(seen.tools).client_id == "client-b"
    a.detach_tools("s", "client-b")  # not daemon A's row: it stays
    assert [row.client_id for row in a.attachments("s")] == ["client-b"]
    b.detach_tools("s", "client-b")
    assert a.attachments("s") == []


def test_a_dead_daemon_s_clients_stop_counting_once_expired_and_are_deleted(
    dsn: str, two_daemons: tuple[PostgresStore, PostgresStore]
) -> None:
    a, b = (relay_of(store) for store in two_daemons)
    b.attach_tools(attachment("client-b"))
    a.attach_tools(attachment("client-a"))
    with psycopg.connect(dsn) as connection:  # daemon B stopped renewing a lease ago
        connection.execute(
            f"UPDATE {SCHEMA}.tool_attachments SET expires_at = now() - interval '1 second'"
            " WHERE daemon = 'daemon-b'"
        )
    assert a.attachments("s") == []
    a.renew_attachments()  # renews A's own row, deletes B's expired one
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            f"SELECT client_id, expires_at > now() FROM {SCHEMA}.tool_attachments"
        ).fetchall()
    assert rows == [("client-a", True)]


def test_a_version_4_store_gains_the_attachment_table(dsn: str) -> None:
    PostgresStore.open(dsn).close()
    with psycopg.connect(dsn) as connection:
        connection.execute(f"DROP TABLE {SCHEMA}.tool_attachments")
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = 4")
    store = PostgresStore.open(dsn, lease_owner="daemon-a")
    try:
        relay_of(store).attach_tools(attachment("client-a"))
    finally:
        store.close()
    with psycopg.connect(dsn) as connection:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
        clients = connection.execute(f"SELECT client_id FROM {SCHEMA}.tool_attachments").fetchall()
    assert (row, clients) == ((SCHEMA_VERSION,), [("client-a",)])
