"""Starting the daemon when no one serves the socket yet.

The daemon is launched through a tiny intermediate Python process that starts
it in a new session and exits at once: the daemon is reparented, outlives the
client, and is never a child this process must reap. Several clients may race
to start it; the daemon holds a lock, so exactly one survives and every client
just waits for the socket to serve.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ._errors import DaemonUnavailableError
from ._transport import Transport
from .proto.v1 import copilot_pb2

__all__ = ["LOG_NAME", "find_daemon_command", "launch_daemon", "wait_until_serving"]

LOG_NAME = "copilotd.log"
LOG_TAIL_LINES = 20
PING_TIMEOUT = 5.0

# argv: log path, then the daemon command. Prints nothing; exits 0 once the
# daemon is spawned, or 1 (traceback on stderr) when it cannot be spawned.
_LAUNCHER = """\
import subprocess, sys
with open(sys.argv[1], "ab", buffering=0) as log:
    subprocess.Popen(
        sys.argv[2:],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
"""


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
) -> Path:
    """Starts ``<command> serve --socket S --data-dir D`` fully detached.

    Returns:
        The log file that receives the daemon's output.

    Raises:
        DaemonUnavailableError: When the command cannot be spawned.
    """
    await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    log_path = data_dir / LOG_NAME
    argv = [*command, "serve", "--socket", str(socket_path), "--data-dir", str(data_dir)]
    launcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LAUNCHER,
        str(log_path),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, stderr = await launcher.communicate()
    if launcher.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise DaemonUnavailableError(
            f"copilotd is not reachable at {socket_path} and auto-start failed: could not "
            f"run {' '.join(argv)!r}: {lines[-1] if lines else 'no detail'}",
            socket_path=socket_path,
        )
    return log_path


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


async def ping(transport: Transport) -> str:
    """The daemon's version; raises the mapped error when it does not answer."""
    response = await transport.call(
        transport.stub.Ping, copilot_pb2.PingRequest(), deadline=PING_TIMEOUT
    )
    return response.version


async def wait_until_serving(transport: Transport, *, start_timeout: float, log_path: Path) -> str:
    """Waits until the channel is ready and Ping answers.

    Returns:
        The daemon's version.

    Raises:
        DaemonUnavailableError: After ``start_timeout`` seconds, naming the socket,
            the log and its last lines.
    """
    try:
        async with asyncio.timeout(start_timeout):
            while True:
                await transport.channel.channel_ready()
                try:
                    return await ping(transport)
                except DaemonUnavailableError:
                    # Connected while the daemon was still coming up (or a
                    # losing racer went away): let the channel reconnect.
                    await asyncio.sleep(0.05)
    except TimeoutError:
        raise DaemonUnavailableError(
            f"copilotd was auto-started but did not serve {transport.socket_path} within "
            f"{start_timeout:g} s. Its log is {log_path}; last lines:\n{log_tail(log_path)}",
            socket_path=transport.socket_path,
        ) from None
