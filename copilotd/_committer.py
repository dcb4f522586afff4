"""Group commit: concurrent writers share durable transactions.

Every write of the daemon goes through one ``GroupCommitter``. Operations
submitted while a commit is in flight wait and are then committed together in
the next transaction, so the number of syncs grows with the number of
batches, not of writes, while each caller still resumes only after its own
data is durable. Commits run in one worker thread so the event loop keeps
serving reads and streams while the disk syncs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from copilotd._store import Store, StoreError, StoreWriter

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[T]):
    operation: Callable[[StoreWriter], T]
    on_commit: Callable[[T], None] | None
    future: asyncio.Future[T]


class GroupCommitter:
    """Runs write operations on a store in shared durable transactions, in submission order."""

    def __init__(self, store: Store, *, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[_Pending[Any]] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copilotd-commit")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_committed = 0
        self.operations_committed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(
        self,
        operation: Callable[[StoreWriter], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``operation`` in a durable transaction and return its result.

        ``on_commit`` runs in the event loop right after the commit and before
        any later operation's, so effects that must follow commit order (the
        live fan-out of events) can rely on it. A ``StoreError`` raised by the
        operation is raised here; that operation wrote nothing.
        """
        if self._closing:
            raise RuntimeError("the committer is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(operation, on_commit, future))
        self._wakeup.set()
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Commit everything already submitted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                operations = [item.operation for item in batch]
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._store.write_batch, operations
                    )
                except Exception as error:  # the whole batch failed: nothing was written
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(error)
                    continue
                self.batches_committed += 1
                self.operations_committed += len(batch)
                self._settle(batch, results)
            if self._closing:
                return

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
