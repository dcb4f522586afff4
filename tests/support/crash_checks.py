"""The crash harness's bookkeeping and verdicts: what clients were told was
written (``Acks``), the figures of a run, and the checks that run after each
kill (see ``tests/support/crash_harness.py`` for the order they run in)."""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.events import (
    ASSISTANT_TURN_END,
    SESSION_DELETED,
    TOOL_EXECUTION_COMPLETE,
    USER_MESSAGE,
    TurnEndReason,
)
from copilotd.sessions.recovery import INTERRUPTED_AT_RESTART, TAKEN_OVER
from copilotd.sessions.tools import INTERRUPTED_RESULT
from tests.support.store_check import StoreReport

PROBE_TIMEOUT = 120.0
if TYPE_CHECKING:  # the async stub exists only in the type stubs
    Stub = copilot_pb2_grpc.CopilotServiceAsyncStub


class HarnessFailure(AssertionError):
    """A check of the harness failed: something acknowledged was lost or broken."""


@dataclass
class Acks:
    """Every write the daemon acknowledged, per source (a worker or the harness)."""

    created: set[str] = field(default_factory=set)
    # source -> the sessions it created, in order (a killed worker's are adopted)
    created_by: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
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
                self.created_by[source].append(line["create"])
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

    def sessions_of(self, source: str) -> list[str]:
        with self.changed:
            return list(self.created_by.get(source, ()))


@dataclass
class Figures:
    kills: int = 0
    daemons: int = 1
    backend: str = "lmdb"
    workers: int = 0
    tool_workers: int = 0
    worker_kills: int = 0
    sessions_acknowledged: int = 0
    messages_acknowledged: int = 0
    events_checked: int = 0
    interrupted_turns_closed: int = 0
    waiting_turns_at_kill: int = 0
    calls_waiting_at_kill: int = 0
    permissions_waiting_at_kill: int = 0
    queued_at_kill: int = 0
    answers_acknowledged: int = 0
    probes_answered: int = 0
    strict_probes_accepted: int = 0
    tool_calls: int = 0
    results: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    misordered: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0

    def summary(self) -> dict[str, object]:
        restarts = self.restart_seconds or [0.0]
        summary: dict[str, object] = {
            "kills": self.kills,
            "daemons (store)": f"{self.daemons} ({self.backend})",
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
        if self.tool_workers:
            summary |= {
                "tool client processes (SIGKILLed)": f"{self.tool_workers} ({self.worker_kills})",
                "tool calls in the store at the end": self.tool_calls,
                "results: " + ", ".join(sorted(self.results)): ", ".join(
                    str(self.results[kind]) for kind in sorted(self.results)
                ),
                "turns waiting for tools at a kill": self.waiting_turns_at_kill,
                "calls waiting for a result / a decision at a kill": (
                    f"{self.calls_waiting_at_kill} / {self.permissions_waiting_at_kill}"
                ),
                "next turns through a strict provider, accepted": self.strict_probes_accepted,
            }
        return summary


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


def note_kill(report: StoreReport, figures: Figures) -> None:
    """Count what the kill interrupted: tool calls waiting for a result or a decision."""
    for state in report.sessions.values():
        if state.open_tool_calls:
            figures.waiting_turns_at_kill += 1
        figures.permissions_waiting_at_kill += len(state.awaiting_permission)
        figures.calls_waiting_at_kill += len(state.open_tool_calls) - len(state.awaiting_permission)


def count_results(report: StoreReport, figures: Figures) -> None:
    """The kinds of results the calls got: answered by a client, denied, or closed
    unanswered by the daemon (a resume without pending work, the pending timeout)."""
    figures.tool_calls = report.tool_call_count
    figures.results.clear()
    for state in report.sessions.values():
        for event in state.events:
            if event.type != TOOL_EXECUTION_COMPLETE:
                continue
            result = event.tool_execution_complete.result
            closed = result.text_result_for_llm.startswith(INTERRUPTED_RESULT)
            kind = result.result_type or "success"
            figures.results[f"closed unanswered ({kind})" if closed else kind] += 1


async def await_turn_end(stub: Stub, report: StoreReport, session_id: str, turn_id: str) -> str:
    """Follows the session after the kill until ``turn_id`` ends; its end's message
    ("" when its client deleted the session first)."""
    after = len(report.sessions[session_id].events)
    call = stub.StreamEvents(
        pb.StreamEventsRequest(session_id=session_id, after_sequence=after),
        timeout=PROBE_TIMEOUT,
    )
    try:
        async for response in call:
            for event in response.events:
                if event.type == SESSION_DELETED:
                    return ""
                if event.type == ASSISTANT_TURN_END and event.assistant_turn_end.turn_id == turn_id:
                    end = event.assistant_turn_end
                    interrupted = end.reason == TurnEndReason.TURN_END_REASON_INTERRUPTED
                    return end.message if interrupted else "ended"
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return ""
        raise HarnessFailure(
            f"{session_id}: turn {turn_id}, open at the kill, never ended ({error.code().name})"
        ) from error
    finally:
        call.cancel()
    raise HarnessFailure(f"{session_id}: the stream ended before turn {turn_id} did")


async def check_closed_at_restart(stub: Stub, report: StoreReport) -> int:
    """On one daemon: each turn the kill left open that was not waiting for tool calls
    is closed at the restart, with the marker as the very next event after the last
    one on disk. Returns how many."""
    closing = report.open_turns.items() - report.waiting_turns.items()
    for session_id, turn_id in closing:
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
    return len(closing)


async def check_open_turns_end(stub: Stub, report: StoreReport, *, shared: bool) -> int:
    """Each turn open at the kill ends; returns how many ended interrupted by it.

    On one daemon only the turns waiting for tool calls are left (the others
    were closed at the restart, ``check_closed_at_restart``): they go on, their
    calls answerable, and must end. On a shared store every turn open at the
    kill: the survivors' go on, the killed daemon's are closed by it at its
    restart or taken over by a survivor, whichever comes first.
    """
    closers = {INTERRUPTED_AT_RESTART, TAKEN_OVER}
    following = report.open_turns if shared else report.waiting_turns
    ends = await asyncio.gather(
        *(
            await_turn_end(stub, report, session_id, turn_id)
            for session_id, turn_id in following.items()
        )
    )
    return sum(1 for message in ends if message in closers)


async def check_queue_resumed(stub: Stub, report: StoreReport) -> None:
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
