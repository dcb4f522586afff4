"""Group commit: concurrent writers share durable transactions.

Every write of the daemon goes through one ``GroupCommitter``. Operations
submitted while a commit is in flight wait and are then committed together in
the next transaction, so the number of syncs grows with the number of
batches, not of writes, while each caller still resumes only after its own
data is durable. Commits run in one worker thread so the event loop keeps
serving reads and streams while the disk syncs.

Background operations (housekeeping such as purging deleted sessions) run
alone, in a transaction of their own, when no other write is waiting, or
once every ``BACKGROUND_EVERY`` transactions while writes keep coming, so
that a caller's commit waits behind at most one of them, now and then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from copilotd.store import Store, StoreError, StoreWriter

T = TypeVar("T")
log = logging.getLogger(__name__)

BACKGROUND_EVERY = 8


@dataclass
class _Pending(Generic[T]):
    operation: Callable[[StoreWriter], T]
    on_commit: Callable[[T], None] | None
    future: asyncio.Future[T]
    # Committed in a transaction of its own: a background operation, or one
    # whose shared batch failed as a whole and is retried.
    alone: bool = False


class GroupCommitter:
    """Runs write operations on a store in shared durable transactions, in submission order."""

    def __init__(self, store: Store, *, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[_Pending[Any]] = []
        self._background: list[_Pending[Any]] = []
        self._since_background = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copilotd-commit")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_committed = 0
        self.operations_committed = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(
        self,
        operation: Callable[[StoreWriter], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        background: bool = False,
    ) -> T:
        """Run ``operation`` in a durable transaction and return its result.

        ``on_commit`` runs in the event loop right after the commit and before
        any later operation's, so effects that must follow commit order (the
        live fan-out of events) can rely on it. A ``StoreError`` raised by the
        operation is raised here; that operation wrote nothing. A
        ``background`` operation may wait for other writes (module docstring).
        """
        if self._closing:
            raise RuntimeError("the committer is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Shielded below, so a caller cancelled meanwhile (a turn stopped by a
        # deletion) leaves it behind: its error is then nobody's to report.
        future.add_done_callback(_retrieve_exception)
        pending = _Pending(operation, on_commit, future, alone=background)
        (self._background if background else self._pending).append(pending)
        self._wakeup.set()
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Commit everything already submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
        log.info(
            "group commit: %d operations in %d durable transactions (largest %d)",
            self.operations_committed,
            self.batches_committed,
            self.largest_batch,
        )

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending or self._background:
                batch = self._take_batch()
                try:
                    results = await self._write(batch)
                except Exception as error:
                    if len(batch) == 1:
                        batch[0].future.set_exception(error)
                        continue
                    # Nothing was written. Retry one by one, so that an operation
                    # that fails this way fails alone, not its batch mates too.
                    for item in batch:
                        item.alone = True
                    self._pending[:0] = batch
                    continue
                self._settle(batch, results)
            if self._closing:
                return

    def _take_batch(self) -> list[_Pending[Any]]:
        """The next operations to commit together: all pending, or one on its own."""
        if self._background and (not self._pending or self._since_background >= BACKGROUND_EVERY):
            self._since_background = 0
            return [self._background.pop(0)]
        self._since_background += 1
        if self._pending[0].alone:
            return [self._pending.pop(0)]
        count = 0
        while count < min(len(self._pending), self._max_batch) and not self._pending[count].alone:
            count += 1
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    async def _write(self, batch: list[_Pending[Any]]) -> list[Any]:
        operations = [item.operation for item in batch]
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._store.write_batch, operations)
        self.batches_committed += 1
        self.operations_committed += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        return results

    @staticmethod
    def _settle(batch: list[_Pending[Any]], results: list[Any]) -> None:
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, StoreError):
                item.future.set_exception(result)
                continue
            if item.on_commit is not None:
                try:
                    item.on_commit(result)
                except Exception:
                    log.exception("on_commit callback failed")
            if not item.future.done():
                item.future.set_result(result)


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
