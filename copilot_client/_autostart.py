"""Starting the daemon when no one serves the socket yet.

The daemon is launched through a tiny intermediate Python process that starts
it in a new session and exits at once: the daemon is reparented, outlives the
client, and is never a child this process must reap. Several clients may race
to start it; the daemon holds a lock, so exactly one survives and every client
just waits for the socket to serve.

While waiting, the client watches the daemon it launched. If that daemon exits
without serving, the client looks at the daemon's lock files: when they name
another live daemon (this one lost the race), it watches that one instead;
otherwise no daemon is coming, and it fails at once with the log's last lines.

Everything up to the launch needs only the standard library: the client
imports grpc, protobuf and the rest of its machinery after launching the
daemon, so the daemon's start overlaps them (tests/test_client_autostart.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ._errors import DaemonTimeoutError, DaemonUnavailableError
from .paths import socket_lock_path, verify_private_socket

if TYPE_CHECKING:
    from .service import ServiceClient

__all__ = [
    "LOG_NAME",
    "LaunchedDaemon",
    "connect",
    "find_daemon_command",
    "launch_daemon",
    "listening",
    "wait_until_serving",
]

T = TypeVar("T")

LOG_NAME = "copilotd.log"
# The daemon's single-instance locks hold the holder's pid: this one in the
# data dir, and "<socket>.lock" next to the socket.
LOCK_NAME = "copilotd.lock"
LOG_TAIL_LINES = 20

# argv: log path, then the daemon command. Prints the daemon's pid and exits 0
# once it is spawned, or exits 1 (traceback on stderr) when it cannot be.
# posix_spawn, not subprocess: importing subprocess took the launcher longer
# than its interpreter's start, and an auto-start waits for both. The launcher
# holds only the client's three pipes, so no descriptor leaks to the daemon.
_LAUNCHER = """\
import os, sys
print(os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ, setsid=True, file_actions=[
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
    (os.POSIX_SPAWN_DUP2, 1, 2),
]))
"""


@dataclass(frozen=True)
class LaunchedDaemon:
    """A daemon this client launched: its pid, its log, and its lock files."""

    pid: int
    log_path: Path
    lock_paths: tuple[Path, ...]


def find_daemon_command(
    explicit: Sequence[str] | None, *, socket_path: Path
) -> tuple[list[str], dict[str, str]]:
    """The command that runs the daemon, and the environment to run it in.

    Tries ``explicit``, then ``python -m copilotd`` when the ``copilotd``
    package is importable (it is not imported), then ``copilotd`` on PATH.

    Raises:
        DaemonUnavailableError: When there is no daemon to start.
    """
    env = dict(os.environ)
    if explicit:
        return list(explicit), env
    spec = importlib.util.find_spec("copilotd")
    if spec is not None and spec.submodule_search_locations:
        # Make the package importable in the child even when it was found
        # through a sys.path entry added at run time.
        root = str(Path(next(iter(spec.submodule_search_locations))).parent)
        env["PYTHONPATH"] = os.pathsep.join(part for part in (root, env.get("PYTHONPATH")) if part)
        return [sys.executable, "-m", "copilotd"], env
    on_path = shutil.which("copilotd")
    if on_path:
        return [on_path], env
    raise DaemonUnavailableError(
        f"copilotd is not reachable at {socket_path} and cannot be started: the copilotd "
        "package is not installed here and no `copilotd` command is on PATH. Install it "
        "(`pip install copilotd`) and run `copilotd serve`, or pass "
        "CopilotClient(daemon_command=[...]).",
        socket_path=socket_path,
    )


async def launch_daemon(
    command: Sequence[str], env: dict[str, str], *, socket_path: Path, data_dir: Path
) -> LaunchedDaemon:
    """Starts ``<command> serve --socket S --data-dir D`` fully detached.

    Returns:
        The daemon's pid, the log file that receives its output, and its lock files.

    Raises:
        DaemonUnavailableError: When the command cannot be spawned.
    """
    await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    log_path = data_dir / LOG_NAME
    argv = [*command, "serve", "--socket", str(socket_path), "--data-dir", str(data_dir)]
    launcher = await asyncio.create_subprocess_exec(
        sys.executable,
        # The launcher needs only the standard library: without site-packages
        # and the environment's settings (-I -S) it starts sooner.
        "-I",
        "-S",
        "-c",
        _LAUNCHER,
        str(log_path),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await launcher.communicate()
    if launcher.returncode != 0 or not stdout.strip().isdigit():
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise DaemonUnavailableError(
            f"copilotd is not reachable at {socket_path} and auto-start failed: could not "
            f"run {' '.join(argv)!r}: {lines[-1] if lines else 'no detail'}",
            socket_path=socket_path,
        )
    lock_paths = (data_dir / LOCK_NAME, socket_lock_path(socket_path))
    return LaunchedDaemon(int(stdout), log_path, lock_paths)


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the daemon's log, or a note why there are none."""
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16384))
            text = log.read().decode(errors="replace")
    except OSError as error:
        return f"(cannot read {log_path}: {error.strerror})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    return stat.rpartition(")")[2].split()[0] != "Z"


def live_lock_holder(daemon: LaunchedDaemon) -> int | None:
    """The pid of another live daemon holding one of ``daemon``'s locks, if any."""
    for path in daemon.lock_paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) != daemon.pid and _alive(int(text)):
            return int(text)
    return None


async def wait_exit(pid: int) -> None:
    """Returns once process ``pid`` (not necessarily a child) has exited.

    Never returns where pidfd_open is missing (not Linux, or an old kernel):
    there only the start timeout applies.
    """
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        await exited
        return

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _unless_exit(work: Awaitable[T], pid: int) -> T | None:
    """``work``'s result, or None as soon as process ``pid`` exits (``work`` is then cancelled)."""
    done = asyncio.ensure_future(work)
    exited = asyncio.ensure_future(wait_exit(pid))
    try:
        await asyncio.wait({done, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not done.done():
            done.cancel()
        await asyncio.gather(done, exited, return_exceptions=True)
    if done.cancelled():
        return None
    return done.result()  # raises work's error


async def listening(socket_path: Path) -> bool:
    """Whether something listens on ``socket_path`` now (a connection is accepted).

    A connection, not just the file: a SIGKILLed daemon leaves its socket
    file behind until the next one replaces it.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(probe, str(socket_path))
        except OSError:  # not there yet, or nothing listens on it
            return False
    return True


async def wait_listening(socket_path: Path) -> bool:
    """True once something listens on ``socket_path``.

    Polled, from 1 ms up to 5 ms apart: the first poll after the daemon
    listens ends the wait, so the interval is what an auto-start may lose
    (2.5 ms on average), while a probe costs 10 to 30 µs of CPU (under 1% of a core).
    """
    delay = 0.001
    while not await listening(socket_path):
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.005)
    return True


async def wait_until_serving(
    transport: ServiceClient, *, start_timeout: float, daemon: LaunchedDaemon
) -> str:
    """Waits until the channel is ready and Ping answers.

    Returns:
        The daemon's version.

    Raises:
        UntrustedSocketError: The socket that appeared is not this user's alone.
        DaemonUnavailableError: As soon as the launched daemon exited and no
            other daemon holds its locks, or after ``start_timeout`` seconds;
            naming the socket, the log and its last lines.
    """
    watched = daemon.pid
    # The channel's first ping failed, so grpc retries it on a backoff that
    # grows to a second; a new channel connects as soon as the daemon listens.
    reconnect = True
    try:
        async with asyncio.timeout(start_timeout):
            while True:
                if await _unless_exit(wait_listening(transport.socket_path), watched) is None:
                    version = None
                else:
                    if reconnect:
                        await transport.close()
                        transport.open()  # checks who owns the socket before any call
                        reconnect = False
                    try:
                        # wait_for_ready with no deadline of its own: the start timeout bounds it.
                        version = await _unless_exit(
                            transport.ping(deadline=None, wait_for_ready=True), watched
                        )
                    except DaemonUnavailableError:
                        # A daemon answered "unavailable" (a losing racer shutting
                        # down): give the channel a moment, then ask again.
                        await asyncio.sleep(0.05)
                        continue
                if version is None:
                    # A daemon that lost the race exits: wait for the winner.
                    holder = live_lock_holder(daemon)
                    if holder is None:
                        raise DaemonUnavailableError(
                            f"copilotd was auto-started but exited without serving "
                            f"{transport.socket_path}. Its log is {daemon.log_path}; last "
                            f"lines:\n{log_tail(daemon.log_path)}",
                            socket_path=transport.socket_path,
                        )
                    watched = holder
                    continue
                # The socket appeared since open() checked: check who serves it
                # before anything but a ping goes to it.
                verify_private_socket(transport.socket_path)
                return version
    except TimeoutError:
        raise DaemonUnavailableError(
            f"copilotd was auto-started but did not serve {transport.socket_path} within "
            f"{start_timeout:g} s. Its log is {daemon.log_path}; last lines:\n"
            f"{log_tail(daemon.log_path)}",
            socket_path=transport.socket_path,
        ) from None


async def connect(
    open_transport: Callable[[], ServiceClient],
    *,
    socket_path: Path,
    data_dir: Path,
    auto_start: bool,
    daemon_command: Sequence[str] | None,
    start_timeout: float,
) -> str:
    """Connects to the daemon, launching it first when nothing listens and ``auto_start``.

    Args:
        open_transport: Imports the client's gRPC machinery and returns its
            open transport. Called after the launch, so the daemon starts
            while the client imports grpc and protobuf.

    Returns:
        The daemon's version.

    Raises:
        DaemonUnavailableError: The daemon is not reachable and could not
            be (or was not allowed to be) started.
    """
    if auto_start:
        verify_private_socket(socket_path)  # before probing it, or launching a daemon there
    # Nothing listens: launch now, not after a gRPC call fails (auto-start waits for it).
    if not auto_start or await listening(socket_path):
        try:
            return await open_transport().ping()
        except DaemonTimeoutError:
            raise  # something serves the socket but does not answer: another daemon cannot
        except DaemonUnavailableError as error:
            if not auto_start:
                raise DaemonUnavailableError(
                    f"{error.message} (auto_start=False, so the client did not start it.)",
                    status=error.status,
                    reason=error.reason,
                    socket_path=socket_path,
                ) from error
    command, env = find_daemon_command(daemon_command, socket_path=socket_path)
    daemon = await launch_daemon(command, env, socket_path=socket_path, data_dir=data_dir)
    return await wait_until_serving(open_transport(), start_timeout=start_timeout, daemon=daemon)
