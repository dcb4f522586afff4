"""The PostgreSQL store's record of the tool clients attached to each daemon
(``Relay.attach_tools`` and the ``tool_attachments`` table), and the routing of
calls to them (``sessions.remote_tools``), on the real private cluster."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Iterator

import psycopg
import pytest

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd.events import SessionEvent
from copilotd.providers import ToolCall
from copilotd.sessions.remote_tools import RemoteTools
from copilotd.sessions.state import RunningTurn
from copilotd.sessions.tool_routing import ToolClient, ToolRoutes
from copilotd.store import StoreChange
from copilotd.store.postgres_schema import SCHEMA, SCHEMA_VERSION
from copilotd.store.postgres_store import PostgresStore
from copilotd.store.relay import Relay, ToolAttachment
from tests.support.postgres import PostgresCluster

WEATHER = events_pb2.ToolDefinition(name="get_weather", skip_permission=True)


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


async def test_the_turn_s_daemon_assigns_a_call_to_the_remote_client_already_running_it(
    two_daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    """After a restart of the turn's daemon, a client of another daemon that re-attached
    while running a call keeps it, even with a holder attached locally; the assignment
    reaches its daemon as a notification."""
    store_a, store_b = two_daemons
    heard: queue.Queue[StoreChange | None] = queue.Queue()
    store_b.watch(heard.put)
    runner = copilot_pb2.ToolClient(client_id="runner", tools=[WEATHER], running_calls=["c1"])
    relay_of(store_b).attach_tools(
        ToolAttachment("s", "runner", "", runner.SerializeToString(), (), False)
    )
    routes = ToolRoutes()
    routes.remote = RemoteTools(store_a)
    local = ToolClient.from_proto("s", copilot_pb2.ToolClient(client_id="local", tools=[WEATHER]))
    delivered: list[SessionEvent] = []
    local.deliver = delivered.extend
    routes.attach("s", local)
    turn = RunningTurn(session_id="s", turn_id="t", user_message_id="m")
    turn.open_calls["c1"] = ToolCall("c1", "get_weather", "{}")
    await routes.refresh("s")
    routes.route(turn)
    assert (turn.assigned, delivered) == ({("c1", False): "runner"}, [])
    change = await asyncio.to_thread(heard.get, timeout=30)
    assert change is not None and (change.kind, change.session_id) == ("assign", "s")
    assert json.loads(change.payload) == {"c": "runner", "u": "t", "i": "c1", "p": False}
