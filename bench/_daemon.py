"""A real daemon per benchmark: temp socket, temp data dir, its memory and its commits.

The process itself is ``tests.support.daemon_process.DaemonProcess`` (the one the
tests start), so the bench and the tests run the daemon the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _search
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.runtime.datadir import STORE_SUBDIR
from tests.support.daemon_process import DaemonProcess

_GROUP_COMMIT = re.compile(
    r"group commit: (\d+) operations in (\d+) durable transactions \(largest (\d+)\)"
)
PURGED = re.compile(r"purged (\d+) events of deleted sessions in ([\d.]+) s \((\d+) steps\)")
_MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


class BenchDaemon:
    """``copilotd serve`` in ``root``, optionally on a copy of a seeded store.

    Args:
        seeded_store: an LMDB store to copy into the data directory.
        seed_index: writes the search index into the data directory before the
            daemon starts (``bench/_index_seed.py``); without it, a seeded
            store is indexed by the daemon's own catch-up, timed.
        store_dsn: serve a PostgreSQL store (the DSN goes in the environment).
    """

    def __init__(
        self,
        root: Path,
        *,
        seeded_store: Path | None = None,
        seed_index: Callable[[Path], object] | None = None,
        store_dsn: str | None = None,
    ) -> None:
        env = {STORE_DSN_ENV: store_dsn} if store_dsn else {}
        self._process = DaemonProcess(root, extra_env=env)
        self._seeded_store = seeded_store
        self._seed_index = seed_index
        self.index_build_seconds = 0.0

    @property
    def socket(self) -> str:
        return str(self._process.socket_path)

    @property
    def data_dir(self) -> Path:
        return self._process.data_dir

    @property
    def pid(self) -> int:
        assert self._process.process is not None
        return self._process.process.pid

    def start(self) -> BenchDaemon:
        self._process.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._seed_index is not None:
            self._seed_index(self._process.data_dir)
        if self._seeded_store is not None:
            target = self._process.data_dir / STORE_SUBDIR
            shutil.copytree(self._seeded_store, target)
            if self._seed_index is None:
                # Index it as the daemon would at start, timed apart from the daemon's
                # figures (and before the store leaves the page cache: the daemon starts cold).
                self.index_build_seconds = _search.build_index(target, self._process.data_dir)
            for path in target.iterdir():
                _drop_from_page_cache(path)
        self._process.start()
        return self

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now (VmRSS: anonymous + file-backed, i.e. the LMDB
        pages it touched) and at its peak (VmHWM), in MB (10^6 bytes)."""
        figures: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in _MEMORY_FIELDS:
                figures[name] = int(value.split()[0]) * 1024 / 1e6
        return figures

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float) -> bool:
        """Wait until the daemon logs a line matching ``pattern``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pattern.search(line) for line in list(self._process.output)):
                return True
            time.sleep(0.05)
        return False

    def cpu_seconds(self) -> float:
        """CPU time the daemon has used so far (all its threads, user and system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        """SIGTERM; returns the exit code and the group-commit figures from its log."""
        code = self._process.terminate()
        stats: dict[str, Any] = {"exit_code": code}
        stats["purges"] = [
            {"events": int(m[1]), "seconds": float(m[2]), "steps": int(m[3])}
            for m in map(PURGED.search, self._process.output)
            if m
        ]
        for line in self._process.output:
            match = _GROUP_COMMIT.search(line)
            if match:
                operations, transactions, largest = map(int, match.groups())
                stats.update(
                    operations=operations,
                    transactions=transactions,
                    largest_batch=largest,
                    operations_per_transaction=operations / max(1, transactions),
                )
        return stats

    def kill(self) -> None:
        self._process.kill()


def _drop_from_page_cache(path: Path) -> None:
    """Start the daemon as after a reboot, not on a file the copy just made hot.

    With all of a 3 GB store in the page cache, the kernel maps up to 16
    cached neighbours of every page the daemon touches (fault-around), and
    its resident size says more about the copy than about the daemon.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
