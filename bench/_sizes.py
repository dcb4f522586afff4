"""How big each run is: ``full`` is what the targets are stated for, ``quick``
is a few minutes, ``tiny`` only checks that everything still runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """The scale of one run.

    Attributes:
        name: full, quick or tiny.
        sessions: sessions stored for the large-store benchmarks.
        events: events stored in total in that store (about).
        resume_sizes: event counts of the sessions resumed (smallest first).
        resume_pool: sessions of each resume size below the largest (resumes
            rotate over them, since every resume appends an event).
        largest_pool: sessions of the largest resume size.
        calls: sequential calls timed per latency figure.
        full_listings: complete paginated listings timed.
        client_counts: concurrent clients for turns per second.
        client_processes: processes those clients are spread over (at most).
        durable_processes: client processes of the durable-turns benchmark.
        turn_seconds: how long each kind of load (pings, copilotd turns,
            baseline turns) is measured, per client count.
        durable_seconds: how long each side of the durable-turns run is measured.
        slot_seconds: length of the alternating slots the kinds of load take.
        cold_starts: client processes started for the cold-start figure.
        prompt_bytes: size of a prompt (and of the baseline's items).
        pg_filler_events: events in each session of the PostgreSQL store other
            than those resumed (the same sessions and resume sizes as the LMDB
            store, with shorter fillers: ``COPY`` of ten million events would
            take longer than the whole run).
    """

    name: str
    sessions: int
    events: int
    resume_sizes: tuple[int, int, int]
    resume_pool: int
    largest_pool: int
    calls: int
    full_listings: int
    client_counts: tuple[int, ...]
    client_processes: int
    durable_processes: int
    turn_seconds: float
    durable_seconds: float
    cold_starts: int
    slot_seconds: float
    prompt_bytes: int = 500
    pg_filler_events: int = 9


FULL = Sizes(
    name="full",
    sessions=100_000,
    events=10_000_000,
    resume_sizes=(10, 1_000, 100_000),
    resume_pool=100,
    largest_pool=2,
    calls=1_000,
    full_listings=3,
    client_counts=(1, 8, 32),
    client_processes=4,
    durable_processes=16,
    turn_seconds=10.0,
    durable_seconds=15.0,
    cold_starts=10,
    slot_seconds=1.0,
)

QUICK = Sizes(
    name="quick",
    sessions=5_000,
    events=300_000,
    resume_sizes=(10, 1_000, 20_000),
    resume_pool=50,
    largest_pool=1,
    calls=300,
    full_listings=2,
    client_counts=(1, 8, 32),
    client_processes=4,
    durable_processes=16,
    turn_seconds=3.0,
    durable_seconds=4.0,
    cold_starts=3,
    slot_seconds=0.5,
)

TINY = Sizes(
    name="tiny",
    sessions=60,
    events=2_000,
    resume_sizes=(10, 100, 500),
    resume_pool=5,
    largest_pool=1,
    calls=20,
    full_listings=1,
    client_counts=(1, 4),
    client_processes=2,
    durable_processes=2,
    turn_seconds=0.5,
    durable_seconds=0.5,
    cold_starts=1,
    slot_seconds=0.25,
)

MODES = {sizes.name: sizes for sizes in (FULL, QUICK, TINY)}
