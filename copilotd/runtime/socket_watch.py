"""Noticing that the daemon's socket is gone.

logind removes ``$XDG_RUNTIME_DIR`` at logout, and a user may delete the
socket's folder by hand. A daemon that kept running then would hold its data
lock while no client can reach it, so no replacement could start either. The
watch checks the socket files every few seconds (a cheap ``lstat``; inotify
would need a dependency or ctypes for no gain at this rate) and asks the
daemon to shut down cleanly when one is missing or is no longer the file it
bound; the next client, or systemd, then starts a fresh daemon.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from copilotd.runtime.periodic import Periodic

log = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 2.0

FileIdentity = tuple[int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """(device, inode) of ``path`` itself (a link is not followed), or None if absent."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class SocketWatch(Periodic):
    """Calls ``on_lost`` once when one of ``paths`` disappears or is replaced."""

    def __init__(
        self,
        paths: Iterable[Path],
        on_lost: Callable[[], None],
        interval: float = CHECK_INTERVAL,
    ) -> None:
        super().__init__("socket watch", interval, self._check)
        self._identities = {path: file_identity(path) for path in paths}
        self._on_lost = on_lost
        self._lost = False

    def still_ours(self, path: Path) -> bool:
        """Whether ``path`` is still the file the daemon bound (safe to unlink)."""
        identity = self._identities.get(path)
        return identity is not None and file_identity(path) == identity

    async def _check(self) -> None:
        if self._lost:
            return
        for path in self._identities:
            if not self.still_ours(path):
                self._lost = True
                log.warning(
                    "the socket %s was removed or replaced (its folder deleted, e.g. at "
                    "logout?): no client can reach this daemon; shutting down so that a "
                    "new one can serve",
                    path,
                )
                self._on_lost()
                return
