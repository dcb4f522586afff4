"""What only a store on disk can get wrong: reopening, versions, damaged files,
growth and a full disk; and the factory that picks a backend.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import lmdb
import pytest

from copilotd.store import (
    SCHEMA_VERSION,
    EventIdTaken,
    LmdbStore,
    MemoryStore,
    SessionMetadata,
    StoreCorrupt,
    StoreFull,
    StoreVersionError,
    lmdb_environment,
    open_store,
)
from tests.support.store_ops import (
    KiB,
    all_events,
    append,
    check_prefix,
    contents,
    create,
    creation,
    delete,
    event_entries,
    listed_ids,
    numbered,
    purge,
    read_while_writing,
    record_of,
    reply,
    run,
    user,
)


def set_schema_version(path: Path, version: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"schema_version", version, db=env.open_db(b"sys", txn=txn))
    finally:
        env.close()


class TestLmdbFiles:
    """What only a store on disk can get wrong."""

    def test_purging_goes_on_after_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "kept", [user("k")])
        create(store, "gone", [user(str(n)) for n in range(300)])
        delete(store, "gone")
        assert purge(store, 100) == 100
        store.close()  # as if the daemon stopped (or crashed) half way
        assert event_entries(path) == 201

        store = LmdbStore.open(path)
        try:
            assert [purge(store, 150), purge(store, 150)] == [150, 50]
            assert contents(all_events(store, "kept")) == ["k"]
        finally:
            store.close()
        assert event_entries(path) == 1

    def test_a_store_from_before_the_purge_table_opens(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        LmdbStore.open(path).close()
        env = lmdb.open(str(path), max_dbs=8)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"purge", txn=txn), delete=True)
        env.close()

        store = LmdbStore.open(path)
        try:
            create(store, "s", [user("x")])
            delete(store, "s")
            assert purge(store, 10) == 1
        finally:
            store.close()

    def test_data_survives_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "a", [user("a1"), reply("a2")])
        create(store, "b", [user("b1")])
        append(store, "b", [user("b2")], open_turn=("t", "m"))
        create(store, "gone")
        delete(store, "gone")
        before = ([store.get_session(s) for s in "ab"], store.list_sessions(limit=10))
        log_numbers = {record_of(store, s).log_number for s in "ab"}
        store.close()

        store = LmdbStore.open(path)
        try:
            assert ([store.get_session(s) for s in "ab"], store.list_sessions(limit=10)) == before
            assert contents(all_events(store, "a")) == ["a1", "a2"]
            assert listed_ids(store.sessions_with_open_turns()) == ["b"]
            assert store.session_count() == 2
            record, _ = create(store, "gone")
            assert record.log_number > max(log_numbers) + 1
        finally:
            store.close()

    def test_a_new_store_directory_is_private(self, tmp_path: Path) -> None:
        path = tmp_path / "deep" / "store"
        LmdbStore.open(path).close()
        assert path.stat().st_mode & 0o777 == 0o700

    def test_an_import_cut_short_is_discarded_at_the_next_open(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user(str(n)) for n in range(30)]))
        store.close()  # as if the daemon died mid-import
        assert event_entries(path) == 30

        store = LmdbStore.open(path)
        try:
            with pytest.raises(ValueError):
                run(store, lambda w: w.commit_import(staging, "s", replace=False))
            assert purge(store, 100) == 30
            assert store.get_session("s") is None
        finally:
            store.close()
        assert event_entries(path) == 0
        assert event_entries(path, b"event_ids") == 0

    def test_purging_removes_the_id_index_too(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "gone", [user(str(n)) for n in range(7)])
        create(store, "kept", [user("k")])
        delete(store, "gone")
        assert [purge(store, 4), purge(store, 4)] == [4, 3]
        store.close()
        assert event_entries(path, b"event_ids") == 1

    def test_a_version_1_store_gets_its_id_index_at_open(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        _, big = create(store, "big", [user(str(n)) for n in range(25)])
        _, small = create(store, "small", [user("one")])
        create(store, "gone", [user("x")])
        delete(store, "gone")
        store.close()
        env = lmdb.open(str(path), max_dbs=8)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"event_ids", txn=txn), delete=True)
            txn.drop(env.open_db(b"staging", txn=txn), delete=True)
        env.close()
        set_schema_version(path, b"1")

        monkeypatch.setattr(lmdb_environment, "MIGRATION_STEP", 4)  # several steps
        store = LmdbStore.open(path)
        try:
            assert all(store.find_event("big", e.id) == e for e in big)
            assert store.find_event("small", small[0].id) == small[0]
            with pytest.raises(EventIdTaken):
                append(store, "big", [big[24]])
        finally:
            store.close()
        assert event_entries(path, b"event_ids") == 26
        env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
        with env.begin() as txn:
            assert txn.get(b"schema_version", db=env.open_db(b"sys", txn=txn)) == str(
                SCHEMA_VERSION
            ).encode("ascii")
        env.close()

    def test_a_version_2_store_gains_fork_references_at_open(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "p", [user("one"), user("two")])
        store.close()
        env = lmdb.open(str(path), max_dbs=16)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"log_refs", txn=txn), delete=True)
        env.close()
        set_schema_version(path, b"2")

        store = LmdbStore.open(path)
        try:
            run(
                store,
                lambda writer: writer.fork_session("p", "f", 1, [user("own")]),
            )
            delete(store, "p")
            assert contents(all_events(store, "f")) == ["one", "own"]
            assert purge(store, 100) == 0  # the fork still reads p's log
        finally:
            store.close()
        assert event_entries(path, b"log_refs") == 1
        env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
        with env.begin() as txn:
            assert txn.get(b"schema_version", db=env.open_db(b"sys", txn=txn)) == b"3"
        env.close()

    def test_a_newer_schema_is_refused_untouched(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "a", [user("a")])
        store.close()
        newer = SCHEMA_VERSION + 1
        set_schema_version(path, str(newer).encode())
        data = (path / "data.mdb").read_bytes()

        with pytest.raises(StoreVersionError) as refused:
            LmdbStore.open(path, initial_map_size=128 * KiB)
        message = str(refused.value)
        assert str(path) in message
        assert f"version {newer}" in message
        assert f"version {SCHEMA_VERSION}" in message
        assert "Upgrade copilotd" in message
        assert (path / "data.mdb").read_bytes() == data

    def test_an_unreadable_schema_version_is_corrupt(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        LmdbStore.open(path).close()
        set_schema_version(path, b"one")
        with pytest.raises(StoreCorrupt):
            LmdbStore.open(path)

    @pytest.mark.parametrize("size", [7, 64 * KiB])
    def test_a_garbage_file_is_refused_untouched(self, tmp_path: Path, size: int) -> None:
        path = tmp_path / "store"
        path.mkdir()
        garbage = random.Random(size).randbytes(size)
        (path / "data.mdb").write_bytes(garbage)
        with pytest.raises(StoreCorrupt) as refused:
            LmdbStore.open(path)
        assert str(path) in str(refused.value)
        assert (path / "data.mdb").read_bytes() == garbage

    def test_another_programs_lmdb_environment_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        env = lmdb.open(str(path))
        with env.begin(write=True) as txn:
            txn.put(b"someone", b"else's data")
        env.close()
        data = (path / "data.mdb").read_bytes()
        with pytest.raises(StoreCorrupt):
            LmdbStore.open(path)
        assert (path / "data.mdb").read_bytes() == data

    def test_the_map_grows_by_itself(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        create(store, "s")
        for batch in range(20):
            first = batch * 100 + 1
            append(store, "s", [user(numbered(n)) for n in range(first, first + 100)])
        assert store.map_size >= 2 * 1024 * KiB
        check_prefix(all_events(store, "s"))
        store.close()

        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        try:
            events = all_events(store, "s")
            assert len(events) == 2000
            check_prefix(events)
            append(store, "s", [user(numbered(2001))])
        finally:
            store.close()

    def test_a_size_cap_gives_store_full_and_reads_go_on(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path, initial_map_size=64 * KiB, max_map_size=512 * KiB)
        create(store, "s")
        written = 0
        with pytest.raises(StoreFull) as full:
            for _ in range(100):
                batch = [user(numbered(n)) for n in range(written + 1, written + 21)]
                append(store, "s", batch)
                written += len(batch)
        assert "size cap" in str(full.value)
        assert written > 0
        assert store.map_size == 512 * KiB

        with pytest.raises(StoreFull):
            store.write_batch([creation("t", [user(numbered(n)) for n in range(1, 200)])])
        assert record_of(store, "s").metadata.last_sequence == written
        assert store.get_session("t") is None
        check_prefix(all_events(store, "s"))
        assert len(store.read_events("s", limit=5, newest_first=True)) == 5
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["s"]
        store.close()

        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        try:
            append(store, "s", [user(numbered(n)) for n in range(written + 1, written + 41)])
            check_prefix(all_events(store, "s"))
        finally:
            store.close()

    def test_a_full_disk_at_commit_is_store_full(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LmdbStore.open(tmp_path / "store")
        create(store, "a", [user("a1")])
        before = store.get_session("a")

        def disk_full(txn: lmdb.Transaction) -> None:
            txn.abort()
            raise lmdb.DiskError("mdb_txn_commit", errno.ENOSPC)

        try:
            monkeypatch.setattr(LmdbStore, "_commit", staticmethod(disk_full))
            with pytest.raises(StoreFull) as full:
                store.write_batch([creation("b"), lambda w: w.append_events("a", [user("a2")])])
            assert "disk" in str(full.value)
            monkeypatch.undo()

            assert store.get_session("b") is None
            assert store.get_session("a") == before
            create(store, "b")
        finally:
            store.close()

    def test_reads_during_map_growth_are_consistent(self, tmp_path: Path) -> None:
        store = LmdbStore.open(tmp_path / "store", initial_map_size=64 * KiB)
        try:
            initial = store.map_size
            seen = read_while_writing(store, batches=30, batch_size=25)
            assert store.map_size >= 8 * initial
            assert len(seen) > 1
        finally:
            store.close()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    stores = [open_store("lmdb", tmp_path / "store"), open_store("memory", None)]
    assert [type(store) for store in stores] == [LmdbStore, MemoryStore]
    for store in stores:
        store.close()
    with pytest.raises(ValueError):
        open_store("lmdb", None)
    with pytest.raises(ValueError):
        open_store("sqlite", tmp_path)
