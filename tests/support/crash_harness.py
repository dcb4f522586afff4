"""Crash harness: SIGKILL the daemon under load, again and again, and prove nothing was lost.

Usage: python -m tests.support.crash_harness [--kills 20] [--workers 4] [--sessions 6] [--seed N]

Several client processes (tests/support/clients/crash_worker.py) drive concurrent
turns on many sessions and report every write the daemon acknowledged.
The harness SIGKILLs the daemon at a random moment once load is flowing,
then, for every kill:

1. with the daemon dead, opens the store from disk and checks it whole
   (tests/support/store_check.py): logs numbered 1..n without gaps, each event
   chained to the one before, records agreeing with their logs, every turn
   ended except at most the last, which the record names as open;
2. checks that every acknowledged session exists, every acknowledged
   message is in its session's log or durable queue, in the order each
   client had it acknowledged, and every answer a client received
   (``send_and_wait``) is in its session's log (lost and misordered writes
   are counted); messages the kill left queued are remembered;
3. restarts the daemon and checks that each turn the kill left open now ends
   with a persisted ``assistant.turn_end`` (reason interrupted, "interrupted
   by daemon restart") right after the last event on disk;
4. waits for each message the kill left queued to run (or for its client to
   delete the session): the queue survives the kill and resumes;
5. sends a new turn to a session that had an interrupted turn (or any
   session) and waits for its answer: the sessions accept new turns.

At the end the workers stop, the daemon is stopped with SIGTERM, the store
is checked one last time against every acknowledgement, each message a kill
left queued is found stored once (run after the restart, or still queued),
and the figures are printed. Exit status 0 only if nothing was lost,
misordered or broken; a failure names the seed that replays the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from copilot_client import CopilotClient
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.events import ASSISTANT_TURN_END, SESSION_DELETED, USER_MESSAGE, TurnEndReason
from copilotd.sessions.recovery import INTERRUPTED_AT_RESTART
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.store_check import StoreReport, check_store

ROOT = Path(__file__).resolve().parents[2]
ACK_TIMEOUT = 60.0
PROBE_TIMEOUT = 120.0
HARNESS_SOURCE = "harness"


class HarnessFailure(AssertionError):
    """A check of the harness failed: something acknowledged was lost or broken."""


@dataclass
class Acks:
    """Every write the daemon acknowledged, per source (a worker or the harness)."""

    created: set[str] = field(default_factory=set)
    # (source, session id) -> message ids, in the order they were acknowledged
    messages: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    # session id -> ids of the answers (assistant.message) clients received
    answers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    count: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, source: str, line: dict[str, str]) -> None:
        with self.changed:
            if "create" in line:
                self.created.add(line["create"])
            elif "send" in line:
                self.messages[(source, line["send"])].append(line["id"])
                if "answer" in line:
                    self.answers[line["send"]].add(line["answer"])
            elif "error" in line:
                self.errors.append(f"{source}: {line['error']}")
            self.count += 1
            self.changed.notify_all()

    def wait_for_more(self, than: int, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.count > than, timeout):
                raise HarnessFailure(f"no write was acknowledged within {timeout} s")

    def snapshot(self) -> tuple[set[str], dict[tuple[str, str], list[str]]]:
        with self.changed:
            return set(self.created), {key: list(ids) for key, ids in self.messages.items()}

    def answers_snapshot(self) -> dict[str, set[str]]:
        with self.changed:
            return {session_id: set(ids) for session_id, ids in self.answers.items()}


class Worker:
    def __init__(self, daemon: DaemonProcess, name: str, sessions: int, seed: int, pace: float):
        self.name = name
        arguments = [name, str(sessions), str(seed), str(pace)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.clients.crash_worker", *arguments],
            cwd=ROOT,
            env=daemon.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def pump(self, acks: Acks) -> threading.Thread:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                acks.record(self.name, json.loads(line))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()


@dataclass
class Figures:
    kills: int = 0
    workers: int = 0
    sessions_acknowledged: int = 0
    messages_acknowledged: int = 0
    events_checked: int = 0
    interrupted_turns_closed: int = 0
    queued_at_kill: int = 0
    answers_acknowledged: int = 0
    probes_answered: int = 0
    lost: int = 0
    misordered: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0

    def summary(self) -> dict[str, object]:
        restarts = self.restart_seconds or [0.0]
        return {
            "kills": self.kills,
            "client processes": self.workers,
            "sessions created (acknowledged)": self.sessions_acknowledged,
            "messages sent (acknowledged)": self.messages_acknowledged,
            "events in the store at the end": self.events_checked,
            "turns interrupted by a kill, closed at restart": self.interrupted_turns_closed,
            "queued messages at a kill, kept": self.queued_at_kill,
            "answers received (acknowledged)": self.answers_acknowledged,
            "new turns answered after a restart": self.probes_answered,
            "lost acknowledged writes": self.lost,
            "misordered acknowledged writes": self.misordered,
            "restart to serving, median s": round(statistics.median(restarts), 3),
            "restart to serving, max s": round(max(restarts), 3),
            "run time s": round(self.seconds, 1),
            "seed": self.seed,
        }


def check_acknowledged(report: StoreReport, acks: Acks, figures: Figures) -> None:
    """Every acknowledged creation and message is on disk, in acknowledgement order."""
    created, messages = acks.snapshot()
    missing_sessions = created - report.sessions.keys()
    lost: list[str] = [f"session {sid}" for sid in sorted(missing_sessions)]
    misordered: list[str] = []
    for (source, session_id), ids in messages.items():
        state = report.sessions.get(session_id)
        if state is None:
            lost.extend(ids)
            continue
        position = {mid: i for i, mid in enumerate(state.user_message_ids + state.pending_ids)}
        found = [position[mid] for mid in ids if mid in position]
        lost.extend(mid for mid in ids if mid not in position)
        if found != sorted(found):
            misordered.append(f"{source} in {session_id}")
    for session_id, answer_ids in acks.answers_snapshot().items():
        state = report.sessions.get(session_id)
        stored = {event.id for event in state.events} if state is not None else set()
        lost.extend(f"answer {answer_id}" for answer_id in sorted(answer_ids - stored))
    figures.lost, figures.misordered = len(lost), len(misordered)
    if lost or misordered:
        raise HarnessFailure(f"lost: {lost[:10]}; misordered: {misordered[:10]}")


def queued_ids(report: StoreReport) -> dict[str, set[str]]:
    """Per session, the messages waiting in its durable queue."""
    return {
        sid: set(state.pending_ids) for sid, state in report.sessions.items() if state.pending_ids
    }


def check_queued_kept(report: StoreReport, queued_at_kills: dict[str, set[str]]) -> None:
    """Each message a kill left queued is stored exactly once: run (in the log) or still queued.

    A restart that dropped the queue, or ran a queued message and left it
    queued too (so it would be answered twice), fails here; those messages
    need not have been acknowledged (the kill may have come first).
    """
    dropped: list[str] = []
    doubled: list[str] = []
    for session_id, ids in queued_at_kills.items():
        state = report.sessions.get(session_id)
        if state is None:
            continue  # deleted by its client since (the workers destroy finished sessions)
        stored = Counter(state.user_message_ids + state.pending_ids)
        dropped.extend(mid for mid in sorted(ids) if stored[mid] == 0)
        doubled.extend(mid for mid in sorted(ids) if stored[mid] > 1)
    if dropped or doubled:
        raise HarnessFailure(
            f"queued at a kill, then dropped: {dropped[:10]}; stored twice: {doubled[:10]}"
        )


async def check_queue_resumed(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, report: StoreReport
) -> None:
    """Each message the kill left queued runs after the restart (its user.message is
    logged), unless its client deleted the session first. Awaits the session's events."""
    for session_id, waiting in queued_ids(report).items():
        after = len(report.sessions[session_id].events)
        call = stub.StreamEvents(
            pb.StreamEventsRequest(session_id=session_id, after_sequence=after),
            timeout=PROBE_TIMEOUT,
        )
        try:
            async for response in call:
                for event in response.events:
                    if event.type == SESSION_DELETED:
                        waiting = set()
                    elif event.type == USER_MESSAGE:
                        waiting.discard(event.id)
                if not waiting:
                    break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: deleted, fine
                raise HarnessFailure(
                    f"{session_id}: queued at the kill, never ran after the restart: "
                    f"{sorted(waiting)} ({error.code().name})"
                ) from error
        finally:
            call.cancel()


async def check_restart(
    daemon: DaemonProcess, report: StoreReport, acks: Acks, rng: random.Random
) -> int:
    """Interrupted turns carry their marker; a session takes a new turn. Returns turns closed."""
    async with (
        CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client,
        grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel,
    ):
        stub: copilot_pb2_grpc.CopilotServiceAsyncStub = copilot_pb2_grpc.CopilotServiceStub(
            channel
        )
        await check_queue_resumed(stub, report)
        for session_id, turn_id in report.open_turns.items():
            last = len(report.sessions[session_id].events)
            page = await stub.ListEvents(
                pb.ListEventsRequest(session_id=session_id, cursor=last, page_size=1)
            )
            marker = page.events[0] if page.events else None
            if (
                marker is None
                or marker.type != ASSISTANT_TURN_END
                or marker.assistant_turn_end.turn_id != turn_id
                or marker.assistant_turn_end.reason != TurnEndReason.TURN_END_REASON_INTERRUPTED
                or marker.assistant_turn_end.message != INTERRUPTED_AT_RESTART
            ):
                raise HarnessFailure(f"{session_id}: turn {turn_id} not closed at restart")
        candidates = sorted(report.open_turns) or sorted(report.sessions)
        if candidates:
            session_id = rng.choice(candidates)
            session = await client.resume_session(session_id)
            prompt = f"still there after the crash? ({session_id})"
            answer = await session.send_and_wait(prompt, timeout=PROBE_TIMEOUT)
            if answer is None or prompt not in (answer.data.content or ""):
                raise HarnessFailure(f"{session_id}: no answer to a new turn after the restart")
            assert answer.data.user_message_id is not None, "an answer names its message"
            acks.record(
                HARNESS_SOURCE,
                {"send": session_id, "id": answer.data.user_message_id, "answer": answer.id},
            )
            await session.destroy()
    return len(report.open_turns)


def run(
    *,
    kills: int,
    workers: int = 4,
    sessions: int = 6,
    seed: int | None = None,
    offline_delay: float = 0.01,
    pace: float = 0.05,
    max_uptime: float = 1.5,
    root: Path | None = None,
    log: bool = True,
) -> Figures:
    """Run the harness; raises ``HarnessFailure`` at the first broken promise."""
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    figures = Figures(workers=workers, seed=seed)
    started = time.monotonic()
    root = root or short_temp_dir("crash")
    daemon = DaemonProcess(root, ["--offline-delay", str(offline_delay)]).start()
    acks = Acks()
    pool = [Worker(daemon, f"w{n}", sessions, rng.randrange(1 << 30), pace) for n in range(workers)]
    for worker in pool:
        worker.pump(acks)
    queued_at_kills: dict[str, set[str]] = defaultdict(set)
    try:
        try:
            for kill in range(1, kills + 1):
                kill_and_check(daemon, acks, figures, rng, max_uptime, queued_at_kills)
                figures.kills = kill
                if log:
                    print(f"kill {kill}/{kills}: checked, nothing lost", flush=True)
        finally:
            for worker in pool:
                worker.stop()
            for worker in pool:
                try:
                    worker.process.wait(30)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
            exit_code = (
                daemon.terminate() if daemon.process and daemon.process.poll() is None else 0
            )
        if exit_code != 0:
            raise HarnessFailure(f"the daemon exited with {exit_code} on SIGTERM")
        report = check_store(daemon.data_dir)
        check_acknowledged(report, acks, figures)
        check_queued_kept(report, queued_at_kills)
    except HarnessFailure as failure:
        # Enough to replay the run: the seed picks the kill moments and the workers' choices.
        raise HarnessFailure(f"{failure} (seed {seed}: replay with --seed {seed})") from failure
    created, messages = acks.snapshot()
    figures.sessions_acknowledged = len(created)
    figures.messages_acknowledged = sum(len(ids) for ids in messages.values())
    figures.answers_acknowledged = sum(len(ids) for ids in acks.answers_snapshot().values())
    figures.events_checked = report.event_count
    figures.seconds = time.monotonic() - started
    return figures


def kill_and_check(
    daemon: DaemonProcess,
    acks: Acks,
    figures: Figures,
    rng: random.Random,
    max_uptime: float,
    queued_at_kills: dict[str, set[str]],
) -> None:
    """One kill at a random moment once this daemon acknowledged a write; the checks after it."""
    acks.wait_for_more(acks.count, ACK_TIMEOUT)
    time.sleep(rng.uniform(0, max_uptime))  # the moment of the kill, not a wait for anything
    daemon.kill()
    report = check_store(daemon.data_dir)
    check_acknowledged(report, acks, figures)
    for session_id, ids in queued_ids(report).items():
        queued_at_kills[session_id] |= ids
        figures.queued_at_kill += len(ids)
    restart = time.monotonic()
    daemon.start()
    figures.restart_seconds.append(time.monotonic() - restart)
    figures.interrupted_turns_closed += asyncio.run(check_restart(daemon, report, acks, rng))
    figures.probes_answered += 1
    if acks.errors:
        raise HarnessFailure(f"a client failed: {acks.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--sessions", type=int, default=6, help="concurrent sessions per client")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--offline-delay", type=float, default=0.01)
    parser.add_argument("--max-uptime", type=float, default=1.5, help="longest wait before a kill")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        figures = run(
            kills=args.kills,
            workers=args.workers,
            sessions=args.sessions,
            seed=args.seed,
            offline_delay=args.offline_delay,
            max_uptime=args.max_uptime,
        )
    except HarnessFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    summary = figures.summary()
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
