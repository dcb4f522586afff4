"""The data directory and the single-instance locks, shared by ``serve`` and the
offline commands (``copilotd restore``, ``copilotd status``).

Only the standard library: the CLI imports this without loading the server.
"""

from __future__ import annotations

import contextlib
import errno
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


def ensure_private_dir(path: Path, *, follow_symlinks: bool = True) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private.

    The checks and the chmod go through one descriptor of the folder, so what
    is tightened is what was checked, never a target swapped in between. With
    ``follow_symlinks=False`` (the socket's folder, which may sit in the shared
    temp dir) a symbolic link is refused rather than followed.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(
            f"{path} exists and is not a folder; move it away or choose another location "
            "with --socket / --data-dir"
        ) from None
    except OSError as error:
        raise StartupError(
            f"cannot create {error.filename or path}: {error.strerror}; choose a writable "
            "location with --socket / --data-dir"
        ) from None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            raise StartupError(
                f"{path} is a symbolic link (to {os.readlink(path)}); copilotd does not "
                "serve through one: remove it, or pass the real folder with --socket"
            ) from None
        raise StartupError(f"cannot use {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise StartupError(
                f"{path} belongs to another user (uid {info.st_uid}); choose another location "
                "with --socket / --data-dir"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[IO[str]]:
    """Hold an exclusive lock on ``path`` for as long as the daemon runs.

    The kernel releases it when the process dies, however it dies, so a lock
    file left behind by a killed daemon never blocks the next one.
    """
    # Private like everything of the daemon's; held open for its lifetime.
    # O_NOFOLLOW: a link planted in place of the lock is refused, not written through.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StartupError(f"cannot open the lock file {path}: {error.strerror}") from None
    handle = os.fdopen(fd, "r+")
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
