"""Daemons that clients started by themselves (auto-start): finding them and ending them.

An auto-started daemon is detached, not a child of the test, so it is found
through /proc by its command line and waited for through a pidfd.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path

from tests.support.session_events import EVENT_WAIT


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def daemons_serving(socket_path: Path) -> list[int]:
    """Live (not zombie) ``copilotd serve`` processes for ``socket_path``."""
    wanted = os.fsencode(socket_path)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        serves = argv[1:4] == [b"-m", b"copilotd", b"serve"] and wanted in argv
        if serves and _process_state(int(entry.name)) not in (None, "Z"):
            pids.append(int(entry.name))
    return pids


def wait_gone(pid: int) -> None:
    """Waits (event-based, through a pidfd) until ``pid``, not our child, has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(int(EVENT_WAIT * 1000)), f"process {pid} did not exit"
    finally:
        os.close(fd)


def lock_pid(data_dir: Path) -> int:
    return int((data_dir / "copilotd.lock").read_text().split()[0])


def kill_auto_started(socket_path: Path, data_dir: Path) -> None:
    """SIGKILLs every daemon serving ``socket_path`` or holding ``data_dir``'s lock, and waits."""
    pids = set(daemons_serving(socket_path))
    with contextlib.suppress(OSError, ValueError):
        pid = lock_pid(data_dir)
        if pid in daemons_serving(socket_path):
            pids.add(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
