"""The indexer against a real LMDB store and a real index file, in-process: the
paths a daemon test cannot steer, where shown events do not follow on from the
cursor and must be read back from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from copilotd.search import Indexer, SearchFilter
from copilotd.store import Store, open_store
from tests.support.store_ops import append, create, user


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store("lmdb", tmp_path / "store")
    yield opened
    opened.close()


@pytest.fixture
async def indexer(store: Store, tmp_path: Path) -> AsyncIterator[Indexer]:
    started = Indexer(store, tmp_path)
    started.start()
    yield started
    await started.close()


async def sequences(indexer: Indexer, query: str) -> list[int]:
    found: list[int] = []
    token = ""
    while True:
        hits, token = await indexer.search(SearchFilter(query=query), 1_000, token)
        found.extend(hit.sequence for hit in hits)
        if not token:
            return sorted(found)


async def test_a_batch_that_skips_ahead_is_completed_from_the_store(
    store: Store, indexer: Indexer
) -> None:
    create(store, "s", [user("gecko one")])
    await indexer.settled()
    _, missed = append(store, "s", [user("gecko two"), user("gecko three")])
    _, shown = append(store, "s", [user("gecko four")])
    indexer.observe("s", shown)  # 2 and 3 were never shown
    assert await sequences(indexer, "gecko") == [1, 2, 3, 4]
    assert [event.sequence for event in missed] == [2, 3]


async def test_a_session_shown_too_much_at_once_is_read_back(
    store: Store, indexer: Indexer
) -> None:
    create(store, "s")
    _, stored = append(store, "s", [user(f"heron {n}") for n in range(1_500)])
    indexer.observe("s", stored)  # more than it holds: all but the last are dropped
    assert await sequences(indexer, "heron") == list(range(1, 1_501))


async def test_batches_already_indexed_are_not_indexed_twice(
    store: Store, indexer: Indexer
) -> None:
    _, stored = create(store, "s", [user("ibex")])
    indexer.observe("s", stored)
    await indexer.settled()
    indexer.observe("s", stored)  # shown again (the start-up catch-up had read it)
    assert await sequences(indexer, "ibex") == [1]
