"""Every acknowledged write reached the disk: the daemon's LMDB commits are synced.

Power-loss safety rests on LMDB's two syncs per commit: the data pages are
written and ``fdatasync``-ed, then the meta page that makes them current is
written through a descriptor opened ``O_DSYNC``. Opened with ``sync=False``
the first is skipped, with ``metasync=False`` the meta page goes through the
plain descriptor; both pass every functional test, and lose acknowledged
turns only when the power goes. So this test watches the system calls: the
real daemon runs under ``strace``, a client creates sessions one after the
other (each acknowledged only after its commit, so no two share one), and
the trace must show, per acknowledged session, one sync of the store's data
file and one meta-page write through its ``O_DSYNC`` descriptor.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.runtime.datadir import STORE_SUBDIR
from tests.support.daemon_process import DaemonProcess, short_temp_dir

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(
    STRACE is None, reason="needs strace (scripts/test.sh installs it: apt-get install strace)"
)

SESSIONS = 20
# The 120-byte meta page LMDB writes at the end of each commit.
META_PAGE_WRITE = 120
# "1234 openat(AT_FDCWD, "/x/data.mdb", O_WRONLY|O_DSYNC|O_CLOEXEC) = 5"
OPEN = re.compile(r'^\d+ +openat\(AT_FDCWD, "(?P<path>[^"]+)", (?P<flags>[A-Z_|]+).*= (?P<fd>\d+)$')
# "1234 fdatasync(4) = 0"
SYNC = re.compile(r"^\d+ +(?:fsync|fdatasync)\((?P<fd>\d+)")
# "1234 pwrite64(5, ""..., 120, 4096) = 120" (strings are not printed: -s 0)
PWRITE = re.compile(r"^\d+ +pwrite64\((?P<fd>\d+), .*?, (?P<size>\d+), \d+")
UNFINISHED = "<unfinished ...>"
RESUMED = " resumed>"


class TracedDaemon(DaemonProcess):
    """The daemon as the child of ``strace -f``, its file system calls logged."""

    def __init__(self, root: Path, trace: Path) -> None:
        super().__init__(root)
        self.trace = trace

    def command(self) -> list[str]:
        assert STRACE is not None
        return [
            STRACE,
            "-f",  # the commits run on a worker thread
            "--seccomp-bpf",  # stop only at the traced calls: the daemon keeps its pace
            "-s",
            "0",
            "-e",
            "trace=openat,fsync,fdatasync,pwrite64",
            "-o",
            str(self.trace),
            "--",
            *super().command(),
        ]

    def daemon_pid(self) -> int:
        """The traced daemon: strace's only child."""
        assert self.process is not None
        tracer = self.process.pid
        children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def stop(self) -> None:
        """SIGTERM to the daemon (strace would only detach); strace exits with it."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.daemon_pid(), signal.SIGTERM)
            self.process.wait(60)


@pytest.fixture
def traced(short_tmp: Path) -> Iterator[TracedDaemon]:
    daemon = TracedDaemon(short_tmp, short_temp_dir("trace") / "strace.log")
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            os.kill(daemon.daemon_pid(), signal.SIGKILL)
            daemon.process.wait(60)
        shutil.rmtree(daemon.trace.parent, ignore_errors=True)


def whole_calls(lines: Iterable[str]) -> Iterator[str]:
    """The trace's calls, each on one line: with -f, strace splits a call that
    another thread interrupts into "<unfinished ...>" and "<... resumed>" lines."""
    unfinished: dict[str, str] = {}
    for line in lines:
        pid, _, call = line.partition(" ")
        call = call.lstrip()
        if call.endswith(UNFINISHED):
            unfinished[pid] = call.removesuffix(UNFINISHED).rstrip()
        elif call.startswith("<... ") and RESUMED in call:
            yield f"{pid} {unfinished.pop(pid, '')}{call.partition(RESUMED)[2]}"
        else:
            yield line


def store_syncs(trace: Path, data_file: Path) -> Counter[str]:
    """Per kind, the calls that make the store's data file durable."""
    data_fds: set[str] = set()
    dsync_fds: set[str] = set()
    seen: Counter[str] = Counter()
    for line in whole_calls(trace.read_text().splitlines()):
        if (opened := OPEN.match(line)) is not None:
            if Path(opened["path"]) == data_file:
                data_fds.add(opened["fd"])
                if "O_DSYNC" in opened["flags"].split("|"):
                    dsync_fds.add(opened["fd"])
        elif (synced := SYNC.match(line)) is not None and synced["fd"] in data_fds:
            seen["data synced"] += 1
        elif (written := PWRITE.match(line)) is not None and int(
            written["size"]
        ) == META_PAGE_WRITE:
            seen["meta through O_DSYNC" if written["fd"] in dsync_fds else "meta unsynced"] += 1
    return seen


def test_each_acknowledged_commit_is_synced(traced: TracedDaemon) -> None:
    with grpc.insecure_channel(f"unix:{traced.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        for index in range(SESSIONS):
            stub.CreateSession(
                pb.CreateSessionRequest(config=pb.SessionConfig(session_id=f"s{index}")),
                timeout=60,
            )
    traced.stop()
    seen = store_syncs(traced.trace, traced.data_dir / STORE_SUBDIR / "data.mdb")
    print(f"\nFIGURES store syncs for {SESSIONS} acknowledged sessions: {dict(seen)}")
    assert seen["data synced"] >= SESSIONS, seen
    assert seen["meta through O_DSYNC"] >= SESSIONS, seen
    assert seen["meta unsynced"] == 0, seen
