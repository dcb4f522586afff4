"""Crash harness: SIGKILL the daemon under load, again and again, and prove nothing was lost.

Usage: python -m tests.support.crash_harness [--kills 20] [--workers 4] [--sessions 6]
       [--tool-workers 2] [--daemons 3 --dsn DSN] [--seed N]

Several client processes (tests/support/clients/crash_worker.py) drive concurrent
turns on many sessions and report every write the daemon acknowledged; tool
workers (tests/support/clients/tool_crash_worker.py) do the same with turns
that call tools: run by the client library's handlers, answered by the app
with ``handle_pending_tool_call``, behind permission requests. With
``--dsn`` several daemons share one PostgreSQL database, the clients send
through all of them and the kills rotate among them.
The harness SIGKILLs a daemon at a random moment once load is flowing (and,
with every third kill, a tool worker with it, whose sessions a new worker adopts),
then, for every kill:

1. with no daemon writing, reads the whole store and checks it
   (tests/support/store_check.py): logs numbered 1..n without gaps, each event
   chained to the one before, records agreeing with their logs, every turn
   ended except at most the last, which the record names as open, every
   tool call with exactly one result and every permission request with
   exactly one decision, except those of the open turn, which wait;
2. checks that every acknowledged session exists, every acknowledged
   message is in its session's log or durable queue, in the order each
   client had it acknowledged, and every answer a client received
   (``send_and_wait``) is in its session's log (lost and misordered writes
   are counted); messages the kill left queued are remembered;
3. restarts the daemon and checks that each turn the kill left open ends:
   on LMDB one that was not waiting for tool calls ends at once with a
   persisted ``assistant.turn_end`` (reason interrupted, "interrupted by daemon
   restart") right after the last event on disk, and one waiting for calls
   goes on and ends once they are answered; on PostgreSQL the killed
   daemon's turns are closed by it or taken over by a survivor;
4. waits for each message the kill left queued to run (or for its client to
   delete the session): the queue survives the kill and resumes;
5. sends a new turn to a session that had a turn open at the kill,
   preferring one with tool calls, and waits for its answer. With tool
   workers that turn goes to a strict provider (``FakeModelServer``, the
   OpenAI and the Anthropic wire format in turn), which refuses a history
   with a call and no result, or a result and no call: it must be accepted.

At the end the workers stop, the daemons are stopped with SIGTERM, the store
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
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc

from copilot_client import CopilotClient
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.crash_checks import (
    PROBE_TIMEOUT,
    Acks,
    Figures,
    HarnessFailure,
    check_acknowledged,
    check_closed_at_restart,
    check_open_turns_end,
    check_queue_resumed,
    check_queued_kept,
    count_results,
    note_kill,
    queued_ids,
)
from tests.support.crash_daemons import STRICT_MODELS, Daemons
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.fake_model_server import FakeModelServer
from tests.support.store_check import StoreReport

ROOT = Path(__file__).resolve().parents[2]
ACK_TIMEOUT = 60.0
HARNESS_SOURCE = "harness"
STRICT_ANSWER = "Accepted by the strict provider."

__all__ = ["Acks", "Figures", "HarnessFailure", "run"]


class Worker:
    """A client process of the harness, printing what the daemon acknowledged."""

    def __init__(self, module: str, name: str, arguments: list[str], env: dict[str, str]):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"tests.support.clients.{module}", name, *arguments],
            cwd=ROOT,
            env=env,
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

    def wait(self) -> None:
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def latest_sessions(name: str, created: list[str]) -> list[str]:
    """Of a worker's sessions (``NAME-SLOT-GENERATION``), the one each slot was at."""
    latest: dict[str, str] = {}
    for session_id in created:
        slot = session_id.removeprefix(f"{name}-").split("-")[0]
        latest[slot] = session_id
    return list(latest.values())


class Harness:
    """One run: the daemons, the client processes, and the checks after each kill."""

    def __init__(
        self,
        daemons: Daemons,
        server: FakeModelServer,
        figures: Figures,
        rng: random.Random,
        *,
        sessions: int,
        pace: float,
        worker_kill_every: int,
    ) -> None:
        self.daemons = daemons
        self.server = server
        self.figures = figures
        self.rng = rng
        self.sessions = sessions
        self.pace = pace
        self.worker_kill_every = worker_kill_every
        self.acks = Acks()
        self.pool: list[Worker] = []
        self.tool_pool: list[Worker] = []
        self.queued_at_kills: dict[str, set[str]] = defaultdict(set)

    def start_workers(self, plain: int, tools: int) -> None:
        members = self.daemons.members
        for n in range(plain):
            # On a shared store each plain worker sends through its own daemon.
            env = members[n % len(members)].env
            self._spawn("crash_worker", f"w{n}", [], env)
        for n in range(tools):
            self._spawn("tool_crash_worker", f"t{n}", [], members[0].env, tools=True)

    def _spawn(
        self, module: str, name: str, extra: list[str], env: dict[str, str], *, tools: bool = False
    ) -> Worker:
        arguments = [str(self.sessions), str(self.rng.randrange(1 << 30)), str(self.pace)]
        if tools:  # a tool worker sends through every daemon
            for daemon in self.daemons.members:
                arguments += ["--socket", str(daemon.socket_path)]
        worker = Worker(module, name, arguments + extra, env)
        worker.pump(self.acks)
        (self.tool_pool if tools else self.pool).append(worker)
        return worker

    def kill_a_tool_worker(self, kill: int) -> tuple[Worker, list[str]] | None:
        """SIGKILL a tool worker with every few kills; it and the sessions it was at."""
        if not self.tool_pool or kill % self.worker_kill_every != self.worker_kill_every - 1:
            return None
        victim = self.rng.choice(self.tool_pool)
        victim.process.kill()
        victim.process.wait()
        self.tool_pool.remove(victim)
        self.figures.worker_kills += 1
        return victim, latest_sessions(victim.name, self.acks.sessions_of(victim.name))

    def kill_and_check(self, kill: int, max_uptime: float) -> None:
        """One kill at a random moment once a write was acknowledged; the checks after it."""
        self.acks.wait_for_more(self.acks.count, ACK_TIMEOUT)
        time.sleep(self.rng.uniform(0, max_uptime))  # the moment of the kill, not a wait
        victim = self.daemons.members[kill % len(self.daemons.members)]
        victim.kill()
        orphaned = self.kill_a_tool_worker(kill)
        report = self.daemons.check()
        check_acknowledged(report, self.acks, self.figures)
        note_kill(report, self.figures)
        for session_id, ids in queued_ids(report).items():
            self.queued_at_kills[session_id] |= ids
            self.figures.queued_at_kill += len(ids)
        restart = time.monotonic()
        victim.start()
        self.figures.restart_seconds.append(time.monotonic() - restart)
        if orphaned is not None:
            dead, adopted = orphaned
            name = f"{dead.name.split('r')[0]}r{kill}"
            env = self.daemons.members[0].env
            self._spawn("tool_crash_worker", name, ["--adopt", *adopted], env, tools=True)
        # Read through another daemon than the one just killed, when there is one.
        reader = self.daemons.members[(kill + 1) % len(self.daemons.members)]
        self.figures.interrupted_turns_closed += asyncio.run(
            self.check_restart(reader, report, kill)
        )
        self.figures.probes_answered += 1
        if self.acks.errors:
            raise HarnessFailure(f"a client failed: {self.acks.errors}")
        exited = [w.name for w in self.pool + self.tool_pool if w.process.poll() is not None]
        if exited:  # a client process must ride out the kills, not die of them
            raise HarnessFailure(f"client processes {exited} exited during the run")

    async def check_restart(self, daemon: DaemonProcess, report: StoreReport, kill: int) -> int:
        """Queues resume, open turns end, a session takes a new turn; returns turns closed."""
        async with (
            CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client,
            grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel,
        ):
            stub: copilot_pb2_grpc.CopilotServiceAsyncStub = copilot_pb2_grpc.CopilotServiceStub(
                channel
            )
            await check_queue_resumed(stub, report)
            closed = 0
            if not self.daemons.shared:
                closed = await check_closed_at_restart(stub, report)
            # Before the waiting turns end: its resume may close their calls unanswered.
            await self.probe(client, report, kill)
            closed += await check_open_turns_end(stub, report, shared=self.daemons.shared)
        return closed

    async def probe(self, client: CopilotClient, report: StoreReport, kill: int) -> None:
        """A new turn in a session the kill hit (tool calls preferred), answered."""
        with_tools = {sid for sid, state in report.sessions.items() if state.tool_calls}
        candidates = (
            sorted(report.waiting_turns)
            or sorted(report.open_turns.keys() & with_tools)
            or sorted(with_tools)
            or sorted(report.open_turns)
            or sorted(report.sessions)
        )
        if not candidates:
            return
        session_id = self.rng.choice(candidates)
        # Without its pending work: calls still waiting are closed, the turn goes on.
        session = await client.resume_session(session_id)
        strict = self.figures.tool_workers > 0
        if strict:
            await session.set_model(STRICT_MODELS[kill % len(STRICT_MODELS)])
        prompt = f"still there after the crash? ({session_id})"
        answer = await session.send_and_wait(prompt, timeout=PROBE_TIMEOUT)
        expected = STRICT_ANSWER if strict else prompt
        if answer is None or expected not in (answer.data.content or ""):
            raise HarnessFailure(f"{session_id}: no answer to a new turn after the restart")
        if strict:
            refused = [r for r in self.server.requests if r.outcome == "refused"]
            if refused:
                raise HarnessFailure(
                    f"the strict provider refused {len(refused)} histories, e.g. "
                    f"{refused[0].api}: {refused[0].body.get('messages')}"
                )
            self.figures.strict_probes_accepted += 1
        assert answer.data.user_message_id is not None, "an answer names its message"
        line = {"send": session_id, "id": answer.data.user_message_id, "answer": answer.id}
        self.acks.record(HARNESS_SOURCE, line)
        await session.destroy()

    def finish(self) -> StoreReport:
        """Stop the workers and the daemons; the last check of the whole store."""
        for worker in self.pool + self.tool_pool:
            worker.stop()
        for worker in self.pool + self.tool_pool:
            worker.wait()
        codes = self.daemons.stop()
        if any(code != 0 for code in codes):
            raise HarnessFailure(f"a daemon exited with {codes} on SIGTERM")
        report = self.daemons.check()
        check_acknowledged(report, self.acks, self.figures)
        check_queued_kept(report, self.queued_at_kills)
        return report


def run(
    *,
    kills: int,
    workers: int = 4,
    tool_workers: int = 0,
    sessions: int = 6,
    seed: int | None = None,
    offline_delay: float = 0.01,
    pace: float = 0.05,
    max_uptime: float = 1.5,
    root: Path | None = None,
    log: bool = True,
    dsn: str | None = None,
    daemons: int = 1,
    worker_kill_every: int = 3,
) -> Figures:
    """Run the harness; raises ``HarnessFailure`` at the first broken promise."""
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    figures = Figures(
        workers=workers + tool_workers,
        tool_workers=tool_workers,
        daemons=daemons,
        backend="lmdb" if dsn is None else "postgresql",
        seed=seed,
    )
    started = time.monotonic()
    root = root or short_temp_dir("crash")
    with FakeModelServer(default_text=STRICT_ANSWER) as server:
        cluster = Daemons(root, server.url, count=daemons, dsn=dsn, offline_delay=offline_delay)
        harness = Harness(
            cluster,
            server,
            figures,
            rng,
            sessions=sessions,
            pace=pace,
            worker_kill_every=worker_kill_every,
        )
        try:
            cluster.start()
            harness.start_workers(workers, tool_workers)
            try:
                for kill in range(1, kills + 1):
                    harness.kill_and_check(kill, max_uptime)
                    figures.kills = kill
                    if log:
                        print(f"kill {kill}/{kills}: checked, nothing lost", flush=True)
            finally:
                report = harness.finish()
        except Exception as failure:  # a check, or a client call that should have worked
            logs = cluster.save_logs()
            # Enough to replay the run: the seed picks the kill moments and the workers' choices.
            raise HarnessFailure(
                f"{failure} (seed {seed}: replay with --seed {seed}; daemon logs: {logs})"
            ) from failure
        finally:
            cluster.close()
    created, messages = harness.acks.snapshot()
    figures.sessions_acknowledged = len(created)
    figures.messages_acknowledged = sum(len(ids) for ids in messages.values())
    figures.answers_acknowledged = sum(len(ids) for ids in harness.acks.answers_snapshot().values())
    figures.events_checked = report.event_count
    count_results(report, figures)
    figures.seconds = time.monotonic() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--tool-workers", type=int, default=0, help="tool-using client processes")
    parser.add_argument("--sessions", type=int, default=6, help="concurrent sessions per client")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--offline-delay", type=float, default=0.01)
    parser.add_argument("--max-uptime", type=float, default=1.5, help="longest wait before a kill")
    parser.add_argument("--dsn", help="a PostgreSQL database the daemons share (else LMDB)")
    parser.add_argument("--daemons", type=int, default=1, help="daemons on the --dsn database")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        figures = run(
            kills=args.kills,
            workers=args.workers,
            tool_workers=args.tool_workers,
            sessions=args.sessions,
            seed=args.seed,
            offline_delay=args.offline_delay,
            max_uptime=args.max_uptime,
            dsn=args.dsn,
            daemons=args.daemons,
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
