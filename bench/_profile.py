"""Where the daemon's time goes under load: py-spy, sampled from outside the process.

``python -m bench --profile`` records the daemon during the widest
turns-per-second run (``py-spy record --threads -f raw``, which needs ptrace
rights: root, or ``kernel.yama.ptrace_scope = 0``) and sorts the event loop's
samples into four kinds:

* ``grpc``: time inside gRPC's Cython/C core, which py-spy sees as the own
  time of asyncio's ``Handle._run`` (no Python frame below it);
* ``idle``: the loop waiting in ``epoll``;
* ``copilotd``: frames of copilotd's own code and below;
* ``other``: asyncio's and the standard library's own Python code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

MAIN_THREAD = "MainThread"
# Frames of copilotd that are on every stack (the command that runs the loop).
_ENTRY_FILES = ("copilotd/__main__.py", "copilotd/cli/main.py", "copilotd/cli/common.py")


def py_spy() -> str | None:
    """The py-spy command, if installed (the ``bench`` extra installs it)."""
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    command = py_spy()
    if command is None:
        raise RuntimeError("--profile needs py-spy: pip install -e '.[bench]'")
    return subprocess.Popen(
        [
            command,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "250",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Shares of samples by thread, and of the event loop's samples by kind and function."""
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        count = int(count_text)
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += count
        if thread != MAIN_THREAD:
            continue
        leaf = frames[-1]
        ours = next((f for f in reversed(frames) if _is_copilotd(f)), None)
        if ours is not None:
            kinds["copilotd"] += count
            functions[ours.split(" (")[0]] += count
        elif leaf.startswith("Handle._run "):
            kinds["grpc"] += count
        elif leaf.startswith("EpollSelector.select "):
            kinds["idle"] += count
        else:
            kinds["other"] += count
    loop_samples = sum(kinds.values()) or 1
    total = sum(threads.values()) or 1
    return {
        "samples": total,
        "threads": {name: n / total for name, n in threads.most_common()},
        "event_loop": {kind: n / loop_samples for kind, n in kinds.most_common()},
        "copilotd_functions": {name: n / loop_samples for name, n in functions.most_common(top)},
    }


def _is_copilotd(frame: str) -> bool:
    """A frame of copilotd's code, other than the command that runs the loop."""
    return "copilotd/" in frame and not any(entry in frame for entry in _ENTRY_FILES)
