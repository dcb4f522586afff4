"""The storage contract, continued: event ids unique per session, and staged imports.

Every backend passes it (see ``copilotd/store/base.py``); the rest of the
contract is in tests/test_store_contract.py and tests/test_store_lifecycle.py.
"""

from __future__ import annotations

import pytest

from copilotd.store import (
    EventIdTaken,
    PendingMessage,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    Store,
    StoreWriter,
)
from tests.support.store_ops import (
    Backend,
    LmdbBackend,
    MemoryBackend,
    PostgresBackend,
    all_events,
    append,
    contents,
    create,
    delete,
    listed_ids,
    purge,
    record_of,
    reply,
    run,
    user,
)


class IdsAndImportsContract(Backend):
    # Event ids

    def test_an_event_id_the_log_holds_is_refused(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        other = user("other")
        other.id = first.id
        with pytest.raises(EventIdTaken) as taken:
            append(store, "s", [user("written?"), other])
        assert (taken.value.event_id, taken.value.sequence) == (first.id, 1)
        twice = user("twice")
        with pytest.raises(EventIdTaken):
            append(store, "s", [twice, twice])
        assert contents(all_events(store, "s")) == ["one"]
        assert record_of(store, "s").metadata.last_sequence == 1
        create(store, "elsewhere", [other])  # unique per session, not across sessions

    def test_a_taken_id_is_reported_before_a_stale_sequence(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        append(store, "s", [reply("two")])
        again = user("one")
        again.id = first.id
        with pytest.raises(EventIdTaken):
            append(store, "s", [again], expected_last_sequence=1)

    def test_a_queued_message_may_not_take_a_logged_events_id(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        queued = PendingMessage(message_id=first.id, content="again")
        with pytest.raises(EventIdTaken):
            append(store, "s", [], pending=[queued])
        assert list(record_of(store, "s").pending) == []
        append(store, "s", [], pending=[PendingMessage(message_id="fresh", content="x")])
        assert [p.message_id for p in record_of(store, "s").pending] == ["fresh"]

    def test_find_event_by_id(self, store: Store) -> None:
        _, stored = create(store, "s", [user("one"), reply("two")])
        _, (third,) = append(store, "s", [user("three")])
        assert store.find_event("s", stored[1].id) == stored[1]
        assert store.find_event("s", third.id) == third
        assert store.find_event("s", "no-such-id") is None
        assert store.find_event("s", "") is None
        with pytest.raises(SessionNotFound):
            store.find_event("gone", third.id)

    def test_a_failed_operation_leaves_no_id_behind(self, store: Store) -> None:
        create(store, "s")
        kept = user("kept")

        def append_then_fail(writer: StoreWriter) -> None:
            writer.append_events("s", [kept])
            raise SessionNotFound("s")

        (failed,) = store.write_batch([append_then_fail])
        assert isinstance(failed, SessionNotFound)
        assert store.find_event("s", kept.id) is None
        append(store, "s", [kept])
        assert store.find_event("s", kept.id) == all_events(store, "s")[0]

    def test_a_deleted_sessions_ids_are_free_again(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        delete(store, "s")
        purge(store, 1)
        _, (again,) = create(store, "s", [first])
        assert again.id == first.id and store.find_event("s", first.id) == again

    # Staged imports

    def test_a_staged_import_is_invisible_until_committed(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        first, second = user("one"), reply("two")
        run(store, lambda w: w.stage_events(staging, [first]))
        staged = run(store, lambda w: w.stage_events(staging, [second]))
        assert staged.metadata.last_sequence == 2
        assert store.get_session("s") is None and store.session_count() == 0
        assert store.list_sessions(limit=10) == ([], "")

        record, replaced = run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert not replaced
        assert record == record_of(store, "s")
        assert record.metadata.start_time == first.timestamp
        assert record.metadata.modified_time == second.timestamp
        assert contents(all_events(store, "s")) == ["one", "two"]
        assert [e.sequence for e in all_events(store, "s")] == [1, 2]
        assert all_events(store, "s")[1].parent_id == first.id
        assert store.find_event("s", second.id) is not None
        with pytest.raises(ValueError):
            run(store, lambda w: w.stage_events(staging, [user("late")]))

    def test_a_staged_log_refuses_a_repeated_id(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        first = user("one")
        run(store, lambda w: w.stage_events(staging, [first]))
        with pytest.raises(EventIdTaken):
            run(store, lambda w: w.stage_events(staging, [reply("two"), first]))
        record, _ = run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert record.metadata.last_sequence == 1

    def test_commit_import_replaces_only_when_asked(self, store: Store) -> None:
        create(store, "s", [user("old")])
        append(store, "s", [], open_turn=("t", "m"))
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user("new")]))

        with pytest.raises(SessionExists):
            run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert contents(all_events(store, "s")) == ["old"]
        _, replaced = run(store, lambda w: w.commit_import(staging, "s", replace=True))
        assert replaced
        assert contents(all_events(store, "s")) == ["new"]
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["s"]
        assert store.sessions_with_open_turns() == [] and store.session_count() == 1
        assert purge(store, 10) == 1  # the old log's one event

    def test_a_replace_that_fails_leaves_the_old_session_whole(self, store: Store) -> None:
        _, old = create(store, "s", [user("old"), reply("answer")])
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user("new")]))

        def replace_then_fail(writer: StoreWriter) -> None:
            writer.commit_import(staging, "s", replace=True)
            raise RuntimeError("the disk went away")

        with pytest.raises(RuntimeError):
            store.write_batch([replace_then_fail])
        assert all_events(store, "s") == old
        assert store.find_event("s", old[1].id) == old[1]
        run(store, lambda w: w.commit_import(staging, "renamed", replace=False))
        assert contents(all_events(store, "renamed")) == ["new"]

    def test_a_discarded_import_is_purged(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user(str(n)) for n in range(5)]))
        run(store, lambda w: w.discard_import(staging))
        run(store, lambda w: w.discard_import(staging))  # twice: nothing more to do
        assert purge(store, 10) == 5
        with pytest.raises(ValueError):
            run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert store.get_session("s") is None


class TestMemoryStore(MemoryBackend, IdsAndImportsContract):
    pass


class TestLmdbStore(LmdbBackend, IdsAndImportsContract):
    pass


class TestPostgresStore(PostgresBackend, IdsAndImportsContract):
    pass
