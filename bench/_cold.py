"""The cold-start benchmark: a new client process's start to its first answer.

Each figure is the time from ``Popen`` of a new Python process to the answer
it prints on stdout:

* with the daemon already running: the client lists one session. Baseline:
  a process that imports ``agents``, opens a ``SQLiteSession`` and reads 50
  items;
* with no daemon running, the client auto-starts one and lists one session:
  on a new data dir (the very first start: the store and the search index are
  created) and on the same data dir again once that daemon was stopped (every
  later start: after a reboot, a logout, ``copilotd stop``). Each pair runs
  right before a baseline process, so all three see the same load;
* then each part an auto-start waits for, alone (``bench/_coldfloor.py``).

The processes run as an installed copilotd would, not as this checkout's
development install does:

* the modules are compiled to bytecode first, as installing a package does
  (pip compiles at install). Run from a source checkout with
  ``PYTHONDONTWRITEBYTECODE=1`` (as this machine's environment sets), every
  start would otherwise compile every module of copilotd and copilot_client
  from source;
* they run in a virtual environment of their own whose one ``.pth`` file
  puts this checkout and the development environment's site-packages on
  ``sys.path``, as a regular install's directory is. An editable install
  (``pip install -e``) instead runs its import finder's set-up in every
  interpreter, the auto-started daemon's included; ``bench/_coldfloor.py``
  times both interpreters' start.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import resource
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copilot_client
import copilotd
from bench import _baseline, _coldfloor
from bench._daemon import BenchDaemon
from bench._procs import latency_summary
from tests.support.autostart import wait_gone
from tests.support.daemon_process import own_config_env

_OURS_COLD = """\
import asyncio, sys
from copilot_client import CopilotClient
async def main():
    async with CopilotClient(socket_path=sys.argv[1], auto_start=False) as client:
        await client.list_sessions_page(page_size=1)
        print("answered", flush=True)
asyncio.run(main())
"""

# No daemon runs: the client starts one (auto-start) and waits for its first answer.
_OURS_AUTOSTART = """\
import asyncio, sys
from copilot_client import CopilotClient
async def main():
    async with CopilotClient(socket_path=sys.argv[1], data_dir=sys.argv[2]) as client:
        await client.list_sessions_page(page_size=1)
        print("answered", flush=True)
asyncio.run(main())
"""

_BASELINE_COLD = """\
import asyncio, sys
from agents import SQLiteSession
async def main():
    session = SQLiteSession("cold", sys.argv[1])
    await session.get_items(limit=50)
    print("answered", flush=True)
    session.close()
asyncio.run(main())
"""


def compile_bytecode() -> dict[str, Any]:
    """Compiles copilotd's and copilot_client's modules, as an install would."""
    packages = [Path(str(package.__file__)).parent for package in (copilotd, copilot_client)]
    for directory in packages:
        if not compileall.compile_dir(directory, quiet=1):
            raise RuntimeError(f"could not compile the modules in {directory}")
    return {
        "compiled": [str(directory) for directory in packages],
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def installed_python(root: Path) -> Path:
    """A virtual environment's interpreter that imports copilotd, copilot_client and
    their dependencies the way a regular install does (see the module's docstring)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    checkout = Path(str(copilotd.__file__)).parent.parent
    paths = [checkout, Path(sysconfig.get_path("purelib"))]
    (Path(site_packages) / "copilotd-bench.pth").write_text("".join(f"{p}\n" for p in paths))
    return python


@dataclass(frozen=True)
class FirstAnswer:
    """A cold-start client's figures: the wall time to its answer, and the CPU
    time it (with the launcher it waited for) used until it exited."""

    seconds: float
    cpu_seconds: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_to_first_answer(
    python: Path, code: str, *arguments: str, env: dict[str, str] | None = None
) -> FirstAnswer:
    cpu = _children_cpu()
    begin = time.monotonic()
    child = subprocess.Popen(
        [python, "-c", code, *arguments], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    elapsed = time.monotonic() - begin
    if child.wait(60) != 0 or line.strip() != "answered":
        raise RuntimeError("a cold-start client failed")
    return FirstAnswer(elapsed, _children_cpu() - cpu)


def _process_cpu(pid: int) -> float:
    """CPU seconds every live thread of ``pid`` ran, from the scheduler's
    nanosecond counts (``times()``'s clock ticks are 10 ms)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _auto_start_to_first_answer(python: Path, root: Path) -> tuple[float, float]:
    """A client process's start, with no daemon running, to its first answer,
    and the CPU time the client, the launcher and the daemon took (the daemon's
    until the client exited); the daemon is then stopped (its pid is in its
    data dir's lock)."""
    socket_path, data_dir = root / "run" / "copilotd.sock", root / "data"
    client = _time_to_first_answer(
        python,
        _OURS_AUTOSTART,
        str(socket_path),
        str(data_dir),
        env=own_config_env(root / "config"),
    )
    pid = int((data_dir / "copilotd.lock").read_text().split()[0])
    daemon_cpu = _process_cpu(pid)
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        wait_gone(pid)
    return client.seconds, client.cpu_seconds + daemon_cpu


def bench_cold(root: Path, count: int) -> dict[str, Any]:
    """Every figure of the cold-start benchmark, from ``count`` processes each."""
    bytecode = compile_bytecode()
    python = installed_python(root / "venv")
    daemon = BenchDaemon(root / "cold").start()
    try:
        ours = [_time_to_first_answer(python, _OURS_COLD, daemon.socket) for _ in range(count)]
    finally:
        daemon.stop()
    path = str(root / "baseline-cold.db")
    _baseline.open_session("cold", path).close()
    new, existing, base = [], [], []
    for n in range(count):
        new.append(_auto_start_to_first_answer(python, root / f"auto{n}"))
        existing.append(_auto_start_to_first_answer(python, root / f"auto{n}"))
        base.append(_time_to_first_answer(python, _BASELINE_COLD, path))
    return {
        "bytecode": bytecode,
        "copilotd": latency_summary([answer.seconds for answer in ours]),
        "auto_start": latency_summary([seconds for seconds, _ in new]),
        "auto_start_existing": latency_summary([seconds for seconds, _ in existing]),
        # CPU time is what the machine's other load changes least.
        "auto_start_cpu": latency_summary([cpu for _, cpu in new]),
        "auto_start_existing_cpu": latency_summary([cpu for _, cpu in existing]),
        "baseline": latency_summary([answer.seconds for answer in base]),
        "baseline_cpu": latency_summary([answer.cpu_seconds for answer in base]),
        "auto_start_parts": _coldfloor.measure(root / "parts", count, python),
    }
