"""A store that runs out of room: the cap holds, deletion still works, a full
disk is told apart from other I/O errors.

These close gaps mutation testing found (docs/reliability.md): changes that
let the map grow past its cap, refuse deletions on a full store, or misread
a full disk all left the suite green.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb
import pytest

from copilotd.store import LmdbStore, StoreFull, lmdb_environment
from copilotd.store.lmdb_environment import is_disk_full
from tests.support.store_ops import (
    KiB,
    append,
    create,
    delete,
    listed_ids,
    numbered,
    purge,
    record_of,
    user,
)

# Not a doubling of the initial size: the map must stop at the cap, not at
# the next power of two past it.
CAP = 400 * KiB


def fill(store: LmdbStore, session_id: str) -> int:
    """Append to ``session_id`` until not even one more event fits; returns how many it holds."""
    create(store, session_id)
    written = 0
    for step in (20, 1):  # big steps, then the last few events that fit
        with pytest.raises(StoreFull):
            for _ in range(1000):
                append(
                    store, session_id, [user(numbered(n)) for n in range(written, written + step)]
                )
                written += step
    return written


def test_the_map_grows_up_to_its_cap_and_no_further(tmp_path: Path) -> None:
    store = LmdbStore.open(tmp_path / "store", initial_map_size=64 * KiB, max_map_size=CAP)
    try:
        assert fill(store, "s") > 0
        assert store.map_size == CAP
    finally:
        store.close()


def test_a_full_store_can_still_delete_and_then_write(tmp_path: Path) -> None:
    """Deleting is how a user makes room: it may use the space kept in reserve."""
    store = LmdbStore.open(tmp_path / "store", initial_map_size=64 * KiB, max_map_size=CAP)
    try:
        written = fill(store, "old")
        assert record_of(store, "old").metadata.last_sequence == written
        with pytest.raises(StoreFull):
            create(store, "new", [user(numbered(n)) for n in range(50)])

        delete(store, "old")
        while purge(store, 100):
            pass
        create(store, "new", [user(numbered(n)) for n in range(50)])
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["new"]
    finally:
        store.close()


def with_code(error: lmdb.Error, code: int) -> lmdb.Error:
    """``error`` carrying an errno as ``code``, as is_disk_full also reads it."""
    setattr(error, "code", code)  # noqa: B010 - lmdb.Error declares no such attribute
    return error


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (lmdb.DiskError("mdb_txn_commit", errno.ENOSPC), True),
        (with_code(lmdb.Error("mdb_put"), errno.ENOSPC), True),
        (with_code(lmdb.Error("mdb_put"), errno.EDQUOT), True),
        (lmdb.Error("mdb_env_open: No space left on device"), True),
        (with_code(lmdb.Error("mdb_get"), errno.EINVAL), False),
        (lmdb.MapFullError("mdb_put: MDB_MAP_FULL"), False),
    ],
)
def test_a_full_disk_is_told_apart(tmp_path: Path, error: lmdb.Error, full: bool) -> None:
    assert is_disk_full(error, tmp_path) is full


@pytest.mark.parametrize(
    "error",
    [
        with_code(lmdb.Error("mdb_txn_commit"), errno.EIO),
        # py-lmdb's own text for a short write, with no error code
        lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EIO)}"),
    ],
)
def test_a_short_write_is_a_full_disk_only_on_a_nearly_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: lmdb.Error
) -> None:
    assert not is_disk_full(error, tmp_path)  # the test's folder has room
    # A threshold over any disk's free space makes this disk "nearly full".
    monkeypatch.setattr(lmdb_environment, "DISK_NEARLY_FULL", 1 << 62)
    assert is_disk_full(error, tmp_path)
