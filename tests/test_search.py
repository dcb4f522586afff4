"""Search across sessions, against a real daemon: ranking, snippets, filters, paging,
bad queries, deletion, and an index that catches up with the log after a crash.

The tests taking ``daemon`` run on both engines: the SQLite index beside an
LMDB store, and PostgreSQL's own full-text search on a PostgreSQL store;
``sqlite_only`` marks those about the SQLite file."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from copilot_client import CopilotClient, InvalidArgumentError, SearchHit, Tool, ToolInvocation
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.search import INDEX_FILE_NAME
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.postgres import APP_PASSWORD, APP_ROLE, PostgresCluster

INDEX_FILES = (INDEX_FILE_NAME, f"{INDEX_FILE_NAME}-wal", f"{INDEX_FILE_NAME}-shm")
ENGINES = ("sqlite", "postgresql")
sqlite_only = pytest.mark.parametrize("daemon", ["sqlite"], indirect=True)


@pytest.fixture(params=ENGINES)
def daemon(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon on LMDB (the SQLite index) or on a fresh PostgreSQL database (its own
    full-text search)."""
    env = {}
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        database: str = request.getfixturevalue("postgres_database")
        env[STORE_DSN_ENV] = cluster.dsn(database, user=APP_ROLE, password=APP_PASSWORD)
    process = DaemonProcess(short_tmp, extra_env=env).start()
    yield process
    process.kill()


def client_of(daemon: DaemonProcess) -> CopilotClient:
    return CopilotClient(socket_path=daemon.socket_path, auto_start=False)


async def say(client: CopilotClient, session_id: str, *prompts: str) -> None:
    session = await client.create_session(session_id=session_id)
    for prompt in prompts:
        await session.send_and_wait(prompt)


async def found(
    client: CopilotClient,
    query: str,
    *,
    session_id_prefix: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[SearchHit]:
    """Every hit, page by page."""
    hits: list[SearchHit] = []
    token = None
    while True:
        page = await client.search_sessions(
            query,
            page_size=100,
            page_token=token,
            session_id_prefix=session_id_prefix,
            since=since,
            until=until,
        )
        hits.extend(page.hits)
        token = page.next_page_token
        if token is None:
            return hits


def places(hits: list[SearchHit]) -> list[tuple[str, int, str]]:
    return [(hit.session_id, hit.sequence, hit.event_type) for hit in hits]


async def test_hits_are_ranked_with_their_place_time_and_a_snippet(
    daemon: DaemonProcess,
) -> None:
    async with client_of(daemon) as client:
        await say(client, "dense", "zebra zebra zebra stripes")
        await say(client, "sparse", "a long story about many animals and one zebra at the end")
        await say(client, "none", "nothing about that animal here")

        hits = await found(client, "zebra")
        # The offline model repeats the prompt: each session's user message (2)
        # and answer (4) match, the session saying it three times first.
        assert sorted(places(hits)) == [
            ("dense", 2, "user.message"),
            ("dense", 4, "assistant.message"),
            ("sparse", 2, "user.message"),
            ("sparse", 4, "assistant.message"),
        ]
        assert places(hits)[0] == ("dense", 2, "user.message")
        assert [hit.rank for hit in hits] == sorted(hit.rank for hit in hits)
        assert hits[0].snippet == "[zebra] [zebra] [zebra] stripes"
        answer = next(h for h in hits if places([h])[0] == ("sparse", 4, "assistant.message"))
        # The answer is long: its snippet is cut to the words around the match.
        assert answer.snippet.startswith("…") and answer.snippet.endswith("…")
        assert "animals and one [zebra] at" in answer.snippet

        stored = await client.get_messages("dense")
        assert hits[0].event_time == next(e.timestamp for e in stored if e.sequence == 2)

        # FTS5 syntax: a phrase, OR, prefix.
        assert {h.session_id for h in await found(client, '"one zebra"')} == {"sparse"}
        assert {h.session_id for h in await found(client, "stripes OR animals")} == {
            "dense",
            "sparse",
        }
        assert {h.session_id for h in await found(client, "anim*")} == {"sparse", "none"}


async def test_tool_results_are_found(daemon: DaemonProcess) -> None:
    def weather(invocation: ToolInvocation) -> str:
        return "drizzle over the harbour"

    tool = Tool(
        "get_weather",
        "The weather in a city",
        {"type": "object"},
        handler=weather,
        skip_permission=True,  # runs without a permission request
    )
    async with client_of(daemon) as client:
        session = await client.create_session(session_id="tools", tools=[tool])
        await session.send_and_wait('call get_weather {"city": "Lisbon"}')
        events = await client.get_messages("tools")
        hits = await found(client, "drizzle")
    [complete] = [e for e in events if e.type_name == "tool.execution_complete"]
    assert ("tools", complete.sequence, "tool.execution_complete") in places(hits)
    [tool_hit] = [hit for hit in hits if hit.event_type == "tool.execution_complete"]
    assert tool_hit.snippet == "[drizzle] over the harbour"


async def test_filters_by_session_id_prefix_and_time(daemon: DaemonProcess) -> None:
    async with client_of(daemon) as client:
        await say(client, "work-1", "the quarterly budget")
        await say(client, "work_2", "budget for the offsite")
        await say(client, "home-1", "the household budget")

        by_prefix = await found(client, "budget", session_id_prefix="work-")
        assert {hit.session_id for hit in by_prefix} == {"work-1"}
        underscore = await found(client, "budget", session_id_prefix="work_")
        assert {hit.session_id for hit in underscore} == {"work_2"}  # "_" is no wildcard
        assert {h.session_id for h in await found(client, "budget", session_id_prefix="work")} == {
            "work-1",
            "work_2",
        }

        everything = await found(client, "budget")
        asked_at = {
            h.session_id: h.event_time for h in everything if h.event_type == "user.message"
        }
        since = await found(client, "budget", since=asked_at["work_2"])
        assert {hit.session_id for hit in since} == {"work_2", "home-1"}
        until = await found(client, "budget", until=asked_at["work_2"])
        assert {hit.session_id for hit in until} == {"work-1"}
        window = await found(client, "budget", since=asked_at["work_2"], until=asked_at["home-1"])
        assert {hit.session_id for hit in window} == {"work_2"}


async def test_the_time_range_holds_since_and_excludes_until_to_the_nanosecond(
    daemon: DaemonProcess,
) -> None:
    """On the wire, where times keep their nanoseconds (a client's datetimes do not)."""
    async with client_of(daemon) as client:
        await say(client, "timed", "the ibis at dawn")
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        [asked] = [
            hit
            for hit in (await stub.SearchSessions(pb.SearchSessionsRequest(query="ibis"))).hits
            if hit.event_type == "user.message"
        ]
        at = asked.event_time

        async def sequences(
            since: Timestamp | None = None, until: Timestamp | None = None
        ) -> set[int]:
            request = pb.SearchSessionsRequest(query="ibis", since=since, until=until)
            return {hit.sequence for hit in (await stub.SearchSessions(request)).hits}

        assert 2 in await sequences(since=at)
        assert 2 not in await sequences(until=at)
        assert await sequences(since=at, until=at) == set()


async def test_pages_cover_every_hit_once_and_tokens_belong_to_their_search(
    daemon: DaemonProcess,
) -> None:
    async with client_of(daemon) as client:
        for number in range(5):
            await say(client, f"s{number}", f"walrus number {number}")
        pages = []
        token = None
        while True:
            page = await client.search_sessions("walrus", page_size=3, page_token=token)
            pages.append(page.hits)
            token = page.next_page_token
            if token is None:
                break
        assert [len(hits) for hits in pages] == [3, 3, 3, 1]  # 10 hits: 5 asks, 5 answers
        every = [place for hits in pages for place in places(hits)]
        assert sorted(every) == sorted(places(await found(client, "walrus")))
        assert len(set(every)) == 10

        first = await client.search_sessions("walrus", page_size=3)
        assert first.next_page_token is not None
        for query, token, prefix in (
            ("number", first.next_page_token, ""),  # another query
            ("walrus", first.next_page_token, "s1"),  # other filters
            ("walrus", "not-a-token", ""),
        ):
            with pytest.raises(InvalidArgumentError) as caught:
                await client.search_sessions(query, page_token=token, session_id_prefix=prefix)
            assert caught.value.reason == "ERROR_REASON_INVALID_PAGE_TOKEN"
            assert "same query and filters" in str(caught.value)


@pytest.mark.parametrize(
    ("query", "explains"),
    [
        ("", "query is empty"),
        ("   ", "query is empty"),
        ("walrus AND", "not valid FTS5 syntax"),
        ('"unterminated', "unterminated string"),
        ("config.toml", 'double quotes ("config.toml")'),
        ("nosuchcolumn:walrus", "not valid FTS5 syntax"),
        ("(walrus", "not valid FTS5 syntax"),
    ],
)
async def test_bad_queries_are_invalid_arguments_that_say_why(
    daemon: DaemonProcess, query: str, explains: str
) -> None:
    async with client_of(daemon) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.search_sessions(query)
        assert caught.value.reason == "ERROR_REASON_INVALID_SEARCH_QUERY"
        assert explains in str(caught.value)
        # The daemon is fine: a good query still answers.
        assert (await client.search_sessions('"config.toml"')).hits == []


async def test_a_deleted_session_is_no_longer_found(daemon: DaemonProcess) -> None:
    async with client_of(daemon) as client:
        await say(client, "keep", "the narwhal stays")
        await say(client, "drop", "the narwhal goes", "another narwhal line")
        assert {hit.session_id for hit in await found(client, "narwhal")} == {"keep", "drop"}
        await client.delete_session("drop")
        assert {hit.session_id for hit in await found(client, "narwhal")} == {"keep"}
        # A new session under the old id starts with an empty index.
        await say(client, "drop", "no sea creature this time")
        assert {hit.session_id for hit in await found(client, "narwhal")} == {"keep"}


async def test_imported_sessions_are_found_at_once(daemon: DaemonProcess) -> None:
    """Imports commit without publishing events: the index reads them from the store."""
    export = daemon.root / "export.jsonl"
    async with client_of(daemon) as client:
        await say(client, "travelling", "the pangolin crossed the border")
        ok(copilotd(daemon, "export", "travelling", "-o", str(export)))
        await client.delete_session("travelling")
        assert await found(client, "pangolin") == []
        ok(copilotd(daemon, "import", str(export)))
        assert {hit.session_id for hit in await found(client, "pangolin")} == {"travelling"}
        ok(copilotd(daemon, "import", "--rename", str(export)))
        assert len({hit.session_id for hit in await found(client, "pangolin")}) == 2
        ok(copilotd(daemon, "import", "--overwrite", str(export)))  # replaced: no duplicates
        assert len(await found(client, "pangolin")) == 4


async def test_an_event_committed_just_before_sigkill_is_found_after_restart(
    daemon: DaemonProcess,
) -> None:
    async with client_of(daemon) as client:
        session = await client.create_session(session_id="crashing")
        sent = await session.send("the platypus was the last thing said")
    daemon.restart_after_kill()  # the send returned: the message was committed
    async with client_of(daemon) as client:
        hits = await found(client, "platypus")
    assert ("crashing", 2, "user.message") in places(hits)
    assert sent


@sqlite_only
async def test_the_index_catches_up_with_what_it_lost_and_forgets_sessions_gone(
    daemon: DaemonProcess,
) -> None:
    """An index that lost its last transactions (a crash, a stale copy) is whole
    again after a start: the log is read from each session's durable cursor."""
    async with client_of(daemon) as client:
        await say(client, "old", "the okapi came first")
        await say(client, "doomed", "the okapi will be deleted")
    assert daemon.terminate() == 0
    saved = daemon.root / "saved-index"
    saved.mkdir()
    for name in INDEX_FILES:
        if (daemon.data_dir / name).exists():
            shutil.copy2(daemon.data_dir / name, saved / name)

    daemon.start()
    async with client_of(daemon) as client:
        old = await client.resume_session("old")
        await old.send_and_wait("then the quokka arrived")
        await say(client, "new", "a quokka in a new session")
        await client.delete_session("doomed")
    assert daemon.terminate() == 0
    # Back to the index from before: it has never seen the quokkas, and still has "doomed".
    for name in INDEX_FILES:
        (daemon.data_dir / name).unlink(missing_ok=True)
        if (saved / name).exists():
            shutil.copy2(saved / name, daemon.data_dir / name)

    daemon.start()
    async with client_of(daemon) as client:
        assert {hit.session_id for hit in await found(client, "quokka")} == {"old", "new"}
        assert {hit.session_id for hit in await found(client, "okapi")} == {"old"}
    log = "".join(daemon.output)
    assert "search index: caught up 2 session(s), removed 1 deleted" in log


@sqlite_only
async def test_the_index_files_are_private(daemon: DaemonProcess) -> None:
    async with client_of(daemon) as client:
        await say(client, "private", "secrets stay in the family")
    for name in INDEX_FILES:
        mode = stat.S_IMODE((daemon.data_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


@sqlite_only
async def test_cli_search_and_rebuild(daemon: DaemonProcess) -> None:
    async with client_of(daemon) as client:
        await say(client, "cli-a", "the axolotl in the tank")
        await say(client, "other", "the axolotl elsewhere")
    lines = ok(copilotd(daemon, "sessions", "search", "axolotl", "--prefix", "cli-")).splitlines()
    assert [line.split()[0] for line in lines] == ["cli-a#2", "cli-a#4"]
    assert "[axolotl]" in lines[0]
    rows = json.loads(
        ok(copilotd(daemon, "sessions", "search", "axolotl", "--json", "--since", "1d"))
    )
    assert {(row["session_id"], row["event_type"]) for row in rows} == {
        ("cli-a", "user.message"),
        ("cli-a", "assistant.message"),
        ("other", "user.message"),
        ("other", "assistant.message"),
    }
    bad = copilotd(daemon, "sessions", "search", "axolotl AND")
    assert bad.returncode != 0 and "not valid FTS5 syntax" in bad.stderr

    refused = copilotd(daemon, "search-index", "rebuild")
    assert refused.returncode != 0 and "data directory" in refused.stderr  # the daemon holds it
    assert daemon.terminate() == 0
    assert "dropped" in ok(copilotd(daemon, "search-index", "rebuild"))
    assert not (daemon.data_dir / INDEX_FILE_NAME).exists()
    daemon.start()
    async with client_of(daemon) as client:
        assert {hit.session_id for hit in await found(client, "axolotl")} == {"cli-a", "other"}


async def test_search_on_postgresql_follows_the_database_into_a_new_data_dir(
    short_tmp: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    dsn = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=APP_PASSWORD)
    first = DaemonProcess(short_tmp, extra_env={STORE_DSN_ENV: dsn}).start()
    try:
        async with client_of(first) as client:
            await say(client, "pg", "the capybara in the database")
            assert {h.session_id for h in await found(client, "capybara")} == {"pg"}
    finally:
        first.kill()
    # Each daemon keeps its own index beside its data: a new one builds it from the database.
    second = DaemonProcess(
        short_tmp, extra_env={STORE_DSN_ENV: dsn}, data_dir=short_tmp / "other-host"
    ).start()
    try:
        async with client_of(second) as client:
            hits = await found(client, "capybara")
            assert places(hits)[0][0] == "pg" and len(hits) == 2
            await client.delete_session("pg")
            assert await found(client, "capybara") == []
    finally:
        second.terminate()


async def test_each_daemon_on_a_shared_database_finds_what_the_others_commit(
    short_tmp: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    dsn = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=APP_PASSWORD)
    writer = DaemonProcess(short_tmp / "a", extra_env={STORE_DSN_ENV: dsn}).start()
    reader = DaemonProcess(short_tmp / "b", extra_env={STORE_DSN_ENV: dsn}).start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{reader.socket_path}") as channel:
            lifecycle = copilot_pb2_grpc.CopilotServiceStub(channel).WatchLifecycle(
                pb.WatchLifecycleRequest()
            )
            await asyncio.wait_for(lifecycle.initial_metadata(), 60)  # the watch is live
            announced = lifecycle.__aiter__()

            async def seen_by_reader(kind: str, session_id: str, last_sequence: int) -> None:
                """The reader was told (its indexer is told in the same notification)."""
                while True:
                    event = await asyncio.wait_for(anext(announced), 60)
                    if (
                        event.type == kind
                        and event.session_id == session_id
                        and event.metadata.last_sequence >= last_sequence
                    ):
                        return

            async with client_of(writer) as client:
                session = await client.create_session(session_id="shared")
                await session.send("the tapir walks through another daemon")
                await seen_by_reader("session.updated", "shared", 2)
                async with client_of(reader) as other:
                    hits = await found(other, "tapir")
                    assert ("shared", 2, "user.message") in places(hits)
                    await client.delete_session("shared")
                    await seen_by_reader("session.deleted", "shared", 0)
                    assert await found(other, "tapir") == []
            lifecycle.cancel()
    finally:
        writer.kill()
        reader.kill()
