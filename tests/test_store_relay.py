"""The PostgreSQL store's relay between daemons (two stores on one database stand
for two daemons): requests reach the lease holder, are claimed once, answered,
withdrawn only while unclaimed; live events arrive in order, before later commits."""

from __future__ import annotations

import queue

import psycopg

from copilotd.events import SessionEvent
from copilotd.store import StoreChange
from copilotd.store.postgres_schema import SCHEMA, SCHEMA_VERSION
from copilotd.store.postgres_store import PostgresStore
from copilotd.store.relay import Relay, RequestAnswer, TurnRequest
from tests.support.store_ops import append, create, user
from tests.test_store_turns import daemons as daemons  # a fixture
from tests.test_store_turns import dsn as dsn  # a fixture

WAIT = 30.0


def relay_of(store: PostgresStore) -> Relay:
    assert store.relay is not None
    return store.relay


def heard_until(heard: queue.Queue[StoreChange | None], kind: str) -> StoreChange:
    while True:
        change = heard.get(timeout=WAIT)
        if change is not None and change.kind == kind:
            return change


def test_a_request_reaches_the_lease_holder_and_is_answered_once(
    daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = daemons
    heard_by_a: queue.Queue[StoreChange | None] = queue.Queue()
    heard_by_b: queue.Queue[StoreChange | None] = queue.Queue()
    a.watch(heard_by_a.put)
    b.watch(heard_by_b.put)
    create(a, "s")
    append(a, "s", [user("q")], open_turn=("t", "m"))  # a holds the lease
    request = TurnRequest("s", "t", "tool_result", subject="call-1", result=b"\x0a\x02ok")
    posted = relay_of(b).post(request)
    assert heard_until(heard_by_a, "request").session_id == "s"
    assert relay_of(b).waiting() == []  # not b's turn
    [waiting] = relay_of(a).waiting()
    assert waiting == TurnRequest(
        "s", "t", "tool_result", subject="call-1", result=b"\x0a\x02ok", request_id=posted
    )
    assert relay_of(a).claim(posted)
    assert not relay_of(b).claim(posted)  # one daemon acts on it
    assert relay_of(a).waiting() == []
    assert not relay_of(b).withdraw(posted)  # claimed: it will be answered
    assert relay_of(b).answer_of(posted) is None
    answer = RequestAnswer(
        status="ALREADY_EXISTS", reason=44, message="answered", metadata={"k": "v"}
    )
    relay_of(a).answer(waiting, answer)
    assert heard_until(heard_by_b, "answer").session_id == "s"
    assert relay_of(b).answer_of(posted) == answer
    relay_of(b).forget(posted)
    assert relay_of(b).answer_of(posted) is None


def test_an_unclaimed_request_can_be_withdrawn(
    daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = daemons
    create(a, "s")
    append(a, "s", [user("q")], open_turn=("t", "m"))
    posted = relay_of(b).post(TurnRequest("s", "t", "abort", reason="stop"))
    assert relay_of(b).withdraw(posted)
    assert not relay_of(a).claim(posted)
    assert relay_of(a).waiting() == []


def test_live_events_arrive_in_order_and_before_a_later_commit(
    daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = daemons
    heard: queue.Queue[StoreChange | None] = queue.Queue()
    b.watch(heard.put)
    create(a, "s")
    heard_until(heard, "created")
    deltas = [SessionEvent(id=f"d{n}", type="assistant.message_delta") for n in range(50)]
    for delta in deltas:
        relay_of(a).publish_live("s", 0, delta.SerializeToString())
    append(a, "s", [user("after the deltas")])
    arrived = []
    while (change := heard.get(timeout=WAIT)) is not None and change.kind == "live":
        arrived.append(SessionEvent.FromString(change.payload).id)
    assert change is not None and change.kind == "events"
    assert arrived == [delta.id for delta in deltas]
    # Over PostgreSQL's payload limit: dropped, never an error.
    relay_of(a).publish_live("s", 1, b"x" * 8000)


def test_a_version_3_store_gains_the_request_table(dsn: str) -> None:
    PostgresStore.open(dsn).close()
    with psycopg.connect(dsn) as connection:
        connection.execute(f"DROP TABLE {SCHEMA}.turn_requests")
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = 3")
    store = PostgresStore.open(dsn, lease_owner="a")
    try:
        create(store, "s")
        append(store, "s", [user("q")], open_turn=("t", "m"))
        posted = relay_of(store).post(TurnRequest("s", "t", "abort"))
        assert [request.request_id for request in relay_of(store).waiting()] == [posted]
    finally:
        store.close()
    with psycopg.connect(dsn) as connection:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    assert row == (SCHEMA_VERSION,)
