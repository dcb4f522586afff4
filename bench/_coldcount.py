"""The CPU instructions of an auto-start's parts, counted by valgrind's cachegrind.

``python -m bench._coldcount``. Instruction counts do not change with the
machine's load (wall-clock figures on a shared machine do), so they show what
a change to the code did. The parts, each run by an installed-layout
interpreter (``bench/_cold.py``) from compiled bytecode:

* the client until it spawns the launcher: ``from copilot_client import
  CopilotClient``, the client's start, its socket probe (nothing listens),
  ending where it would launch the daemon;
* the same plus the rest of the client's imports (grpc, protobuf, the
  generated stubs, sessions): since the client launches the daemon before
  importing them, they run while the daemon starts, off the sequential path;
* the launcher (``python -I -S``);
* ``copilotd serve`` (no config) until its socket listens: ended as soon as
  grpc's ``server.start()`` returns, so the count is the same whatever runs after.

An auto-start's sequential path is the client until the spawn, the launcher
and the daemon until it listens, then the first call.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._cold import compile_bytecode, installed_python

CACHEGRIND = ["--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")

_CLIENT_UNTIL_SPAWN = """
import asyncio, os, sys
{extra}
from copilot_client import CopilotClient
import copilot_client._autostart as autostart
async def launch(*args, **kwargs):
    os._exit(0)  # the launcher would be spawned here
autostart.launch_daemon = launch
async def main():
    async with CopilotClient(socket_path=sys.argv[1], data_dir=sys.argv[2]):
        pass
asyncio.run(main())
"""
_CLIENT_REST = (
    "from copilot_client import _branching, _history, _lifecycle, _search, _session, service"
)
_SERVE_UNTIL_LISTENING = """
import os, runpy, sys
from grpc.aio import _server
start = _server.Server.start
async def start_then_exit(self):
    await start(self)
    os._exit(0)
_server.Server.start = start_then_exit
sys.argv = ["copilotd", "serve", "--socket", sys.argv[1], "--data-dir", sys.argv[2]]
runpy.run_module("copilotd", run_name="__main__")
"""


def instructions(valgrind: str, python: Path, *arguments: str, env: dict[str, str]) -> int:
    """The instructions ``python *arguments`` ran, from cachegrind's summary."""
    result = subprocess.run(
        [valgrind, *CACHEGRIND, str(python), *arguments], capture_output=True, text=True, env=env
    )
    counts = INSTRUCTIONS.findall(result.stderr)
    if not counts:
        raise RuntimeError(f"no instruction count from cachegrind:\n{result.stderr[-2000:]}")
    return int(counts[-1].replace(",", ""))


def count(valgrind: str, python: Path, root: Path) -> dict[str, int]:
    """Each part's instructions, by label."""
    env = {"HOME": str(root), "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(root / "config")}
    launcher = subprocess.run(
        [python, "-c", "from copilot_client._autostart import _LAUNCHER; print(_LAUNCHER)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def client(name: str, extra: str) -> int:
        code = _CLIENT_UNTIL_SPAWN.format(extra=extra)
        where = (str(root / name / "copilotd.sock"), str(root / name / "data"))
        return instructions(valgrind, python, "-c", code, *where, env=env)

    daemon = (str(root / "run" / "copilotd.sock"), str(root / "data"))
    return {
        "python -c pass": instructions(valgrind, python, "-c", "pass", env=env),
        "client until it spawns the launcher": client("c1", ""),
        "the same plus the client's other imports": client("c2", _CLIENT_REST),
        "launcher": instructions(
            valgrind, python, "-I", "-S", "-c", launcher, str(root / "log"), "true", env=env
        ),
        "daemon until it listens, new data dir": instructions(
            valgrind, python, "-c", _SERVE_UNTIL_LISTENING, *daemon, env=env
        ),
        "daemon until it listens, existing data dir": instructions(
            valgrind, python, "-c", _SERVE_UNTIL_LISTENING, *daemon, env=env
        ),
    }


def main() -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="coldcount-") as directory:
        root = Path(directory)
        figures = count(valgrind, installed_python(root / "venv"), root)
    for label, value in figures.items():
        print(f"{value / 1e6:8.0f} M  {label}")
    path = (
        figures["client until it spawns the launcher"]
        + figures["launcher"]
        + figures["daemon until it listens, existing data dir"]
    )
    print(f"{path / 1e6:8.0f} M  sequential path (client until the spawn, launcher, daemon)")


if __name__ == "__main__":
    main()
