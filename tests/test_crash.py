"""Crash safety: the crash harness (tests/support/crash_harness.py) in the test suite.

CI runs bounded versions (a few SIGKILLs each): plain turns on LMDB, turns
calling tools on LMDB, and both on three daemons sharing one PostgreSQL
database; the full runs (20 SIGKILLs, also ``python -m
tests.support.crash_harness --kills 20 [--tool-workers 2] [--dsn ... --daemons 3]``)
are marked slow. A failure names the seed that replays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from copilotd.events import USER_MESSAGE, make_event
from tests.support import crash_harness
from tests.support.crash_checks import (
    Acks,
    Figures,
    HarnessFailure,
    check_acknowledged,
    check_queued_kept,
)
from tests.support.crash_harness import run
from tests.support.postgres import PostgresCluster
from tests.support.store_check import SessionState, StoreReport


def report_figures(figures: Figures) -> None:
    print("\nFIGURES crash harness:", figures.summary())


def check_figures(figures: Figures, kills: int) -> None:
    assert figures.kills == kills
    assert figures.lost == 0 and figures.misordered == 0
    assert figures.messages_acknowledged > kills and figures.sessions_acknowledged > 0
    assert figures.probes_answered == kills
    # Answers clients received before a kill were checked on disk after it.
    assert figures.answers_acknowledged > 0
    # Load was flowing: kills hit running turns, which were closed at restart.
    assert figures.interrupted_turns_closed > 0


def check_tool_figures(figures: Figures, kills: int) -> None:
    check_figures(figures, kills)
    # Tools were called, answered by handlers and by the app, some denied; every
    # call's one result was checked after each kill (the run fails otherwise).
    assert figures.tool_calls > 0 and figures.results["success"] > 0
    assert figures.results["denied"] > 0
    # Each kill was followed by a turn a strict provider accepted, in both formats.
    assert figures.strict_probes_accepted == kills
    # A tool client is SIGKILLed at every third kill: kills 2, 5, 8, ...
    assert figures.worker_kills == (kills + 1) // 3


@pytest.mark.timeout(300)
def test_crash_harness_bounded(short_tmp: Path) -> None:
    figures = run(kills=5, workers=3, sessions=4, root=short_tmp, log=False)
    report_figures(figures)
    check_figures(figures, 5)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_harness_full(short_tmp: Path) -> None:
    figures = run(kills=20, workers=4, sessions=6, root=short_tmp, log=False)
    report_figures(figures)
    check_figures(figures, 20)


@pytest.mark.timeout(300)
def test_crash_harness_with_tools_bounded(short_tmp: Path) -> None:
    figures = run(kills=4, workers=1, tool_workers=2, sessions=3, root=short_tmp, log=False)
    report_figures(figures)
    check_tool_figures(figures, 4)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_harness_with_tools_full(short_tmp: Path) -> None:
    figures = run(kills=20, workers=2, tool_workers=3, sessions=4, root=short_tmp, log=False)
    report_figures(figures)
    check_tool_figures(figures, 20)


def shared(dsn: str) -> dict[str, Any]:
    """The harness's options for three daemons on the database ``dsn``."""
    return {"dsn": dsn, "daemons": 3, "log": False}


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.mark.timeout(600)
def test_crash_harness_three_daemons_on_postgresql_bounded(short_tmp: Path, dsn: str) -> None:
    """Kills rotate among three daemons on one database; clients send through all."""
    figures = run(kills=3, workers=2, tool_workers=2, sessions=3, root=short_tmp, **shared(dsn))
    report_figures(figures)
    check_tool_figures(figures, 3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_harness_three_daemons_on_postgresql_full(short_tmp: Path, dsn: str) -> None:
    figures = run(kills=20, workers=3, tool_workers=3, sessions=4, root=short_tmp, **shared(dsn))
    report_figures(figures)
    check_tool_figures(figures, 20)


def stored(*message_ids: str, pending: tuple[str, ...] = ()) -> SessionState:
    events = []
    for message_id in message_ids:
        event = make_event(USER_MESSAGE, content="x")
        event.id = message_id
        events.append(event)
    return SessionState(
        events=events,
        user_message_ids=list(message_ids),
        pending_ids=list(pending),
        open_turn_id="",
    )


def acknowledged(*lines: tuple[str, dict[str, str]]) -> Acks:
    acks = Acks()
    for source, line in lines:
        acks.record(source, line)
    return acks


def test_the_check_sees_lost_and_misordered_writes() -> None:
    """The harness's verdict is not vacuous: it fails on the defects it looks for."""
    acks = acknowledged(
        ("w0", {"create": "s"}),
        ("w0", {"send": "s", "id": "m1"}),
        ("w0", {"send": "s", "id": "m2"}),
        ("w1", {"send": "s", "id": "m3"}),
    )
    whole = StoreReport({"s": stored("m1", "m3", pending=("m2",))})
    check_acknowledged(whole, acks, Figures())

    for broken, what in [
        (StoreReport({"s": stored("m1", "m3")}), "lost: ['m2']"),
        (StoreReport({"s": stored("m2", "m1", "m3")}), "misordered: ['w0 in s']"),
        (StoreReport({}), "session s"),
    ]:
        figures = Figures()
        with pytest.raises(HarnessFailure, match=what.replace("[", r"\[").replace("]", r"\]")):
            check_acknowledged(broken, acks, figures)
        assert figures.lost + figures.misordered > 0


def test_the_check_sees_a_lost_answer() -> None:
    acks = acknowledged(("w0", {"create": "s"}), ("w0", {"send": "s", "id": "m1", "answer": "a1"}))
    answered = stored("m1")
    answer = make_event(USER_MESSAGE, content="x")  # its type does not matter, its id does
    answer.id = "a1"
    answered.events.append(answer)
    check_acknowledged(StoreReport({"s": answered}), acks, Figures())
    with pytest.raises(HarnessFailure, match="answer a1"):
        check_acknowledged(StoreReport({"s": stored("m1")}), acks, Figures())


def test_the_check_sees_a_queued_message_dropped_or_doubled() -> None:
    queued_at_kill = {"s": {"q1"}, "gone": {"q2"}}
    check_queued_kept(StoreReport({"s": stored("m1", "q1")}), queued_at_kill)
    check_queued_kept(StoreReport({"s": stored("m1", pending=("q1",))}), queued_at_kill)
    with pytest.raises(HarnessFailure, match=r"dropped: \['q1'\]"):
        check_queued_kept(StoreReport({"s": stored("m1")}), queued_at_kill)
    with pytest.raises(HarnessFailure, match=r"stored twice: \['q1'\]"):
        check_queued_kept(StoreReport({"s": stored("m1", "q1", pending=("q1",))}), queued_at_kill)


def test_a_failure_names_the_seed_that_replays_it(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lose_everything(report: StoreReport, acks: Acks, figures: Figures) -> None:
        raise HarnessFailure("lost: ['everything']")

    monkeypatch.setattr(crash_harness, "check_acknowledged", lose_everything)
    with pytest.raises(HarnessFailure, match=r"seed 1234: replay with --seed 1234"):
        run(kills=1, workers=1, sessions=1, seed=1234, root=short_tmp, log=False)
