"""systemd's service protocols: readiness notification, watchdog, socket activation.

Implemented directly: each is a few lines over documented environment
variables (sd_notify(3), sd_listen_fds(3), sd_watchdog_enabled(3)). The
maintained bindings (systemd-python, cysystemd) are C extensions that need
libsystemd's headers to build; the pure-Python ``sdnotify`` package has had
no release for years and knows nothing of socket activation. Outside systemd
every function here does nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from typing import Final

from copilotd.runtime.periodic import Periodic

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
# The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START: Final = 3
_ACTIVATION_ENV: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(*assignments: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=…`` to the service manager.

    Returns False when there is no manager to tell (``$NOTIFY_SOCKET`` unset)
    or the message could not be sent (logged: systemd would then time the
    service out, and the log says why).
    """
    address = os.environ.get(NOTIFY_SOCKET_ENV)
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: the name starts with a NUL byte
        address = "\0" + address[1:]
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.warning("cannot notify systemd at %s: %s", os.environ[NOTIFY_SOCKET_ENV], error)
        return False
    return True


def listen_sockets() -> list[socket.socket]:
    """The sockets systemd passed to this process (socket activation), or [].

    Honoured only when ``$LISTEN_PID`` is this process (the variables may be
    left over from a parent). The variables are then removed, so that
    processes this one starts do not take the sockets for theirs, and the
    descriptors are made close-on-exec.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if not pid or not count or pid != str(os.getpid()):
        return []
    for name in _ACTIVATION_ENV:
        os.environ.pop(name, None)
    try:
        number = int(count)
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%r: not a number", count)
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + number):
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half the timeout systemd set), or None when off."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None
    return timeout / 2 if timeout > 0 else None


class Watchdog(Periodic):
    """Pings ``WATCHDOG=1`` from the event loop, so a stuck loop stops the pings."""

    def __init__(self, interval: float) -> None:
        super().__init__("watchdog", interval, self._ping)

    @staticmethod
    async def _ping() -> None:
        notify("WATCHDOG=1")
