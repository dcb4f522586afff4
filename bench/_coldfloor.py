"""What bounds an auto-start: the parts an auto-starting client waits for, each timed alone.

An auto-start is, in order: the client's interpreter and imports, the
launcher (``python -I -S``), the daemon's interpreter and imports, its start
until the socket listens, then the first call. Timing each part in the same
run shows which of them the 0.25 s target is spent on, and which are
Python's and grpc's own (an interpreter with nothing imported, ``grpc.aio``
alone) rather than copilotd's.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._procs import latency_summary
from tests.support.daemon_process import own_config_env

# Label -> the interpreter's arguments; each runs to its end.
PROCESSES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "python -I -S -c pass (the launcher's interpreter)": ["-I", "-S", "-c", "pass"],
    "import asyncio and grpc.aio": ["-c", "import asyncio, grpc.aio"],
    # The package itself loads nothing until a name is used (PEP 562).
    # Standard library only: what a client runs before it launches a daemon.
    "import the client (from copilot_client import CopilotClient)": [
        "-c",
        "from copilot_client import CopilotClient",
    ],
    # The rest, imported once the daemon is launched, so while it starts.
    "the client's imports after the launch (grpc, stubs, sessions)": [
        "-c",
        "import asyncio, copilot_client._session, copilot_client._search",
    ],
    "import what copilotd serve imports (no config)": [
        "-c",
        "import copilotd.cli.main, copilotd.cli.daemon_config, copilotd.runtime.server",
    ],
}
# Seconds between probes of the daemon's socket: well under the figures measured.
PROBE_INTERVAL = 0.0005


def _run_to_end(python: Path, arguments: list[str], env: dict[str, str]) -> float:
    begin = time.monotonic()
    subprocess.run([python, *arguments], check=True, env=env)
    return time.monotonic() - begin


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _serve_until_listening(python: Path, root: Path) -> float:
    """``copilotd serve``'s start to its socket accepting connections; then it is stopped."""
    socket_path = root / "run" / "copilotd.sock"
    command = [str(python), "-m", "copilotd", "serve", "--socket", str(socket_path)]
    begin = time.monotonic()
    daemon = subprocess.Popen(
        [*command, "--data-dir", str(root / "data")],
        env=own_config_env(root / "config"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not _listening(socket_path):
            if daemon.poll() is not None:
                raise RuntimeError(f"copilotd serve exited with {daemon.returncode}")
            time.sleep(PROBE_INTERVAL)  # a busy loop would take the CPU the daemon needs
        return time.monotonic() - begin
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def measure(root: Path, count: int, python: Path) -> dict[str, Any]:
    """Each part's latency summary (p50 and p99 ms), by label, run by ``python``; and
    the development install's interpreter start, for comparison."""
    env = own_config_env(root / "config")
    figures = {
        label: latency_summary([_run_to_end(python, arguments, env) for _ in range(count)])
        for label, arguments in PROCESSES.items()
    }
    development = [_run_to_end(Path(sys.executable), ["-c", "pass"], env) for _ in range(count)]
    figures["python -c pass in the development install (pip install -e)"] = latency_summary(
        development
    )
    new, existing = [], []
    for n in range(count):
        new.append(_serve_until_listening(python, root / f"serve{n}"))
        existing.append(_serve_until_listening(python, root / f"serve{n}"))
    figures["copilotd serve until its socket listens (no config, new data dir)"] = latency_summary(
        new
    )
    figures["the same, on the data dir of a daemon since stopped"] = latency_summary(existing)
    return figures
