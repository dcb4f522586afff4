"""The data directory and the single-instance locks, shared by ``serve`` and the
offline commands (``copilotd restore``, ``copilotd status``).

Only the standard library: the CLI imports this without loading the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

STORE_SUBDIR: Final = "store"
DATA_LOCK_NAME: Final = "copilotd.lock"


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise StartupError(
            f"{path} belongs to another user (uid {info.st_uid}); choose another location "
            "with --socket / --data-dir"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[IO[str]]:
    """Hold an exclusive lock on ``path`` for as long as the daemon runs.

    The kernel releases it when the process dies, however it dies, so a lock
    file left behind by a killed daemon never blocks the next one.
    """
    # Private like everything of the daemon's; held open for its lifetime.
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StartupError(
                f"another copilotd (pid {holder}) is already using {what}; stop it first "
                "(systemctl --user stop copilotd, or kill that pid) or choose another "
                "--socket / --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()
