"""The storage contract: what any backend of copilotd must guarantee.

A store holds, per session, one ``SessionRecord`` (metadata, kept current on
every write) and an append-only log of persisted ``SessionEvent`` values.
The contract test suite is in two halves, ``StoreContract`` in
``tests/test_store_contract.py`` (sessions, events, reads, batches) and
``LifecycleContract`` in ``tests/test_store_lifecycle.py`` (deletion, purging,
listing, turns, pins, backups); every backend subclasses both (its fixture
class is in ``tests/support/store_ops.py``) and must pass them unchanged.

The contract:

* **Sequence numbers.** A session's persisted events are numbered 1, 2, 3, …
  in append order with no gaps and no reuse. The store assigns ``sequence``
  and ``parent_id`` (the id of the previous event; empty for the first) when
  it appends; whatever the caller put there is overwritten.
* **Metadata.** Every append updates the session's metadata through
  ``copilotd.events.apply_to_metadata`` in the same transaction, so that
  listing never reads events.
* **Durability and atomicity.** ``write_batch`` runs its operations in one
  transaction and returns only once that transaction is durably committed
  (it survives a crash of the process or of the machine from then on).
  Each operation is isolated: one that raises ``StoreError`` has written
  nothing and does not stop the others; any other exception aborts the whole
  batch and is raised, leaving the store as it was.
* **Reads** never see uncommitted data, cost in proportion to what they
  return (range scans, never a scan of a whole history or of all sessions;
  event reads and listing can be bounded by bytes as well as by count, so
  that no answer built from them outgrows a gRPC message), and may run in any thread,
  concurrently with a ``write_batch`` in another thread. Calls to
  ``write_batch`` may come from several threads; the store serialises them.
* **Deletion** removes a session in one transaction: from its commit on, no
  read finds the session or any of its events, and a session later created
  under the same id starts with an empty log. The space of the deleted
  events is reclaimed afterwards, in steps of bounded size
  (``StoreWriter.purge_deleted``), so that deleting a long history never
  holds a transaction (and every other writer) for long. The pending work is
  recorded durably with the deletion: after a crash, purging goes on where
  it stopped.
* **Listing** is ordered by ``metadata.modified_time``, newest first, ties
  broken by session id (the greater first); page tokens are opaque strings,
  and a full walk through the pages returns each session that existed,
  unmodified, throughout exactly once. A session modified during a walk moves
  ahead of it: it is never returned twice, but may not be returned at all.
* **Capacity.** A store that fills its current space grows by itself; when it
  cannot grow (a configured cap, or a full disk) writes raise ``StoreFull``
  and reads go on working.
* **Event ids** are unique within a session's log, and a queued message's
  id names no event of its log: ``create_session``, ``append_events`` and
  ``stage_events`` refuse an event (or queued message) whose id the log
  already holds with ``EventIdTaken``, checked in the same transaction that
  would write it (before ``expected_last_sequence``, so that a message sent
  again is recognised as such). ``find_event`` looks an id up at the cost of
  one index lookup: this is how a message id sent again is recorded once.
* **Imports** are staged: ``begin_import`` opens a log that no read sees,
  ``stage_events`` fills it in as many transactions as the caller likes (each
  bounded), and ``commit_import`` makes it a session in one transaction,
  replacing the session of that id when asked (the old one stays whole until
  then). A staged log neither committed nor discarded when the store closes
  (a crash mid-import) is discarded when the store is next opened; its
  events are reclaimed by ``purge_deleted``.
* **Versioning.** Opening a store written by a newer schema version raises
  ``StoreVersionError`` and leaves the files untouched; an older one is
  migrated in place.
* **Turns across daemons.** A session runs one turn at a time. Opening a
  turn (``open_turn``) while another is open (and not closed by the same
  call) raises ``TurnBusy``. A turn's own writes carry its id as a fencing
  token (``fence``): the append raises ``TurnLost`` (nothing written) unless
  that turn is still the session's open turn and its lease is this store's.
  A store shared by several daemons (``shared``: PostgreSQL) keeps a lease per
  session whose turn is open (or whose queue a daemon is working through):
  an owner (``lease_owner``), a fencing token (the turn's id) and an expiry
  ``lease_seconds`` ahead, renewed by ``renew_leases``. ``open_turn`` and
  ``take_over`` raise ``TurnBusy`` while another owner's lease is live;
  once it has expired, ``take_over`` moves it to this store so the turn can
  be closed as interrupted, and the old owner's fenced writes fail from
  then on. A store used by one daemon (LMDB, memory) holds every lease
  trivially: ``take_over`` never refuses and ``renew_leases`` does nothing.
* **Queued messages** live in the session's record (``pending``), changed
  in the writing transaction either whole (``pending``) or one message at a
  time (``queue``: add one, at the end or first, and remove one by id), so
  that daemons queueing and dequeuing at once on one session lose nothing.
  Adding a message already queued changes nothing (a message sent again
  through another daemon is queued once). The queue is first in, first out
  across daemons: opening a turn while messages are queued raises
  ``TurnBusy`` unless the same call removes a queued message (the one the
  turn answers), so a message sent while others wait is queued behind them
  even when no turn runs (its daemon died between two turns).
* **Changes from other daemons.** ``watch`` reports, from a thread of the
  store's, what other daemons committed (``StoreChange``); ``None`` means
  reports may have been missed and the watcher should re-read what it
  follows. A store used by one daemon reports nothing.
* **Relayed requests** (``relay``, a ``copilotd.store.relay.Relay``): on a
  shared store, calls that only the daemon running a session's turn can
  serve (abort, a tool result, a permission decision) are posted there for
  the lease holder, which is told at once and also finds them on every
  lease renewal; the first daemon to claim one answers it, and the poster
  reads the answer (a resume closing the turn's calls, too). Live-only
  events (deltas) reach the other daemons through it too, best-effort, and
  so do the tool clients attached to each daemon (``ToolAttachment`` rows
  that expire unless their daemon renews them) and the calls assigned to
  them. A store used by one daemon has none: every client is attached to
  the one daemon, so memory and LMDB need nothing for it.
* **Pinning** (``set_pinned``) changes only ``metadata.pinned``: the listing
  order and every other field stay as they were.
* **Forks** (``fork_session``) refer to their source's log instead of
  copying it: the fork's record names the logs it inherits (``ancestry``:
  log number and last sequence per log, oldest first) and its own log holds
  only the events after the fork point, numbered on from it. Forking costs
  the same whatever the length of the history (it writes the new record, one
  reference count per inherited log and the fork's own first events). Reads
  (``read_events``, ``find_event``) and the event-id check compose the
  inherited ranges (``lineage``), so a fork reads like any session. Every
  log carries a reference count (``log_refs``: absent means its own session
  only): deleting a session releases its own log and every log it inherits,
  and a log's events are handed to ``purge_deleted`` only when its count
  reaches zero. Deleting a parent thus leaves its forks whole, and the
  shared events go with the last session that reads them.
* **Rewinds** are appended as one ``session.snapshot_rewind`` event whose
  ``to_sequence`` names the last event kept: the store fills in the range it
  cuts (to the event before it) and records it in the session's ``rewound``
  ranges, in the same transaction, so a crash leaves a session either
  rewound or not. It refuses (``TurnBusy``) while a turn is open and
  (``SequenceUnavailable``) a point that is not a kept event before the
  last. Cut events stay in the log: ``read_events`` returns them; readers
  that want the history as the conversation goes on skip the ``rewound``
  ranges (``visible``). Sequence numbers are never reused.
* **Backup.** ``copy_to`` writes a consistent copy of the whole store, as it
  stood at one instant, while reads and writes go on in other threads. A
  backend whose data cannot outlive the process (the memory store) raises
  ``BackupUnsupported`` instead; the contract suite accepts either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd.proto.v1 import store_pb2
from copilotd.store.relay import Relay

SessionEvent = events_pb2.SessionEvent
SessionMetadata = copilot_pb2.SessionMetadata
SessionRecord = store_pb2.SessionRecord
PendingMessage = copilot_pb2.PendingMessage

# 2: the per-session index of event ids (built when a version 1 store opens).
# 3: the reference counts of logs that forks share (``log_refs``, empty when
#    a version 2 store opens).
SCHEMA_VERSION = 3

T = TypeVar("T")

# How long a lease lasts unless renewed, by default (``[store] lease_seconds``).
DEFAULT_LEASE_SECONDS: Final = 30.0


@dataclass(frozen=True)
class QueueEdit:
    """One change to a session's queue of pending messages, made in the writing transaction."""

    add: PendingMessage | None = None
    # Put ``add`` first (a message sent with mode=immediate) rather than last.
    first: bool = False
    # The id of a queued message to remove (its turn is starting).
    remove: str = ""


# "request" and "answer": a relayed request for this daemon, or the answer to
# one it posted (``relay``); "live": another daemon's live-only event;
# "assign": a call for a tool client attached here (the payload: its JSON
# ``relay.Assignment``); "tools": a session's tool clients on other daemons changed.
ChangeKind = Literal[
    "events", "created", "deleted", "updated", "request", "answer", "live", "assign", "tools"
]


@dataclass(frozen=True)
class StoreChange:
    """What another daemon committed: a session's new events, creation, deletion or pin."""

    kind: ChangeKind
    session_id: str
    # The session's last sequence after the change (0 for a deletion); for a
    # live event, the last stored one's when it was made.
    last_sequence: int
    # A live event (a serialized ``SessionEvent``).
    payload: bytes = b""


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class SessionNotFound(StoreError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionExists(StoreError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"a session with id {session_id!r} already exists")
        self.session_id = session_id


class SequenceConflict(StoreError):
    """The session's last sequence number is not the one the writer expected."""

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"session {session_id!r} is at sequence {actual}, not {expected} as expected"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class EventIdTaken(StoreError):
    """An event's id (or a queued message's) is already that of an event of the log."""

    def __init__(self, session_id: str, event_id: str, sequence: int) -> None:
        super().__init__(
            f"session {session_id!r} already holds an event with id {event_id!r} "
            f"(sequence {sequence})"
        )
        self.session_id = session_id
        self.event_id = event_id
        self.sequence = sequence


class TurnBusy(StoreError):
    """The session has a turn open, or another daemon's live lease on it."""

    def __init__(self, session_id: str, holder: str) -> None:
        super().__init__(f"session {session_id!r} is busy: {holder}")
        self.session_id = session_id


class TurnLost(StoreError):
    """A fenced write of a turn that is no longer the session's open turn under this lease."""

    def __init__(self, session_id: str, turn_id: str, why: str) -> None:
        super().__init__(f"turn {turn_id!r} of session {session_id!r} can no longer write: {why}")
        self.session_id = session_id
        self.turn_id = turn_id


class SequenceUnavailable(StoreError):
    """A fork point or rewind target that is no kept event of the session."""

    def __init__(self, session_id: str, sequence: int, why: Literal["range", "rewound"]) -> None:
        what = "is rewound" if why == "rewound" else "is out of range"
        super().__init__(f"sequence {sequence} of session {session_id!r} {what}")
        self.session_id = session_id
        self.sequence = sequence
        self.why = why


class StoreFull(StoreError):
    """No space left: the size cap is reached or the disk is full."""


class StoreVersionError(StoreError):
    """The store was written by a newer schema version than this code knows."""


class StoreCorrupt(StoreError):
    """The store's files cannot be read as a copilotd store."""


class BackupUnsupported(StoreError):
    """This backend cannot write a copy of itself (its data lives only in memory)."""


class StoreWriter(ABC):
    """The operations available inside one ``Store.write_batch`` transaction."""

    @abstractmethod
    def create_session(
        self, metadata: SessionMetadata, events: Sequence[SessionEvent]
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        """Create a session from ``metadata`` (its ``session_id`` set) with first ``events``.

        Raises ``SessionExists`` when the id is taken. Returns the stored record
        and the events as stored (sequence numbers and parent ids assigned).

        The store owns ``last_sequence``, ``last_event_id``, ``message_count``
        and ``turn_running`` (whatever the caller set is reset). ``start_time``
        becomes the first event's timestamp (the caller's is kept when there
        are no events); an unset ``modified_time`` defaults to ``start_time``.
        """

    @abstractmethod
    def append_events(
        self,
        session_id: str,
        events: Sequence[SessionEvent],
        *,
        expected_last_sequence: int | None = None,
        open_turn: tuple[str, str] | None = None,
        close_turn: bool = False,
        pending: Sequence[PendingMessage] | None = None,
        queue: QueueEdit | None = None,
        fence: str | None = None,
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        """Append persisted ``events`` to a session's log, in order.

        Args:
            session_id: the session to append to.
            events: events to append (may be empty, e.g. only to close a turn).
            expected_last_sequence: when given, raise ``SequenceConflict`` (and
                write nothing) unless the session's last sequence equals it.
            open_turn: ``(turn_id, user_message_id)`` to record as the turn in
                progress (``metadata.turn_running`` becomes true).
            close_turn: clear the turn in progress. Applied before
                ``open_turn``, so one call can end a turn and start the next.
            pending: the whole queue of pending messages, replacing it.
            queue: one change to the queue (after ``pending``); the id of a
                message added is checked against the log like an event's.
            fence: the id of the turn these events belong to: ``TurnLost``
                unless it is the open turn and its lease is this store's.

        Opening a turn while another stays open raises ``TurnBusy``, as does
        another daemon's live lease on the session (module docstring).
        Raises ``SessionNotFound``. Returns the updated record and the stored
        events (copies: the caller's events are left as they were). An
        ephemeral event raises ``ValueError``, which aborts the batch.
        """

    @abstractmethod
    def fork_session(
        self,
        source_id: str,
        session_id: str,
        up_to_sequence: int,
        events: Sequence[SessionEvent],
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        """Create ``session_id`` as a fork of ``source_id``: its history is the
        source's events 1 to ``up_to_sequence``, then ``events`` (numbered on).

        Nothing is copied (module docstring). The fork's metadata is the
        source's (model, system message, tools, provider) with
        ``parent_session_id`` and ``fork_sequence`` set; when the point is
        before the source's last event, the counters (message_count, token
        sums) count only what follows it. Raises ``SessionNotFound`` for the
        source, ``SessionExists`` for a taken id, ``SequenceUnavailable`` for a
        point below 1, past the source's last event, or rewound.
        """

    @abstractmethod
    def take_over(self, session_id: str) -> str:
        """Take the session's lease for this store, to close a turn its owner left open.

        Returns the previous owner when it was another daemon whose lease had
        expired ("" when the lease was free or this store's already). Raises
        ``TurnBusy`` while another owner's lease is live, ``SessionNotFound``.
        """

    @abstractmethod
    def delete_session(self, session_id: str) -> None:
        """Delete a session: its record now, its events by ``purge_deleted``.

        Raises ``SessionNotFound``.
        """

    @abstractmethod
    def purge_deleted(self, limit: int) -> int:
        """Remove up to ``limit`` events of deleted sessions.

        Returns how many it removed; fewer than ``limit`` means none are left.
        Raises ``ValueError`` for a limit below 1.
        """

    @abstractmethod
    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        """Set ``metadata.pinned``; nothing else changes. Raises ``SessionNotFound``."""

    @abstractmethod
    def begin_import(self, metadata: SessionMetadata) -> int:
        """Open a staged log for a session to come, from ``metadata``; returns its number.

        Nothing of it is visible to reads until ``commit_import``. The counters
        the store owns are reset and ``start_time`` is taken from the first
        staged event, as in ``create_session``.
        """

    @abstractmethod
    def stage_events(self, staging: int, events: Sequence[SessionEvent]) -> SessionRecord:
        """Append ``events`` to the staged log ``staging``, numbered as ``append_events`` does.

        Returns the record as it will be committed. Raises ``EventIdTaken``
        (nothing written) for an id the staged log already holds, and
        ``ValueError`` for an unknown staging number or an ephemeral event.
        """

    @abstractmethod
    def commit_import(
        self, staging: int, session_id: str, *, replace: bool
    ) -> tuple[SessionRecord, bool]:
        """Make the staged log the session ``session_id``; returns its record and
        whether a session of that id was replaced.

        With ``replace``, a session of that id is deleted (as by
        ``delete_session``) in the same transaction; without it, that raises
        ``SessionExists`` and the staged log stays, to commit under another id.
        Raises ``ValueError`` for an unknown staging number.
        """

    @abstractmethod
    def discard_import(self, staging: int) -> None:
        """Drop a staged log (its events go the way of a deleted session's); no-op if unknown."""


class Store(ABC):
    """A session store; see the module docstring for the contract."""

    @abstractmethod
    def write_batch(self, operations: Sequence[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        """Run ``operations`` in one durable transaction.

        Returns, per operation and in order, its return value or the
        ``StoreError`` it raised (an operation that raised wrote nothing).
        Raises ``StoreFull`` when the transaction cannot be committed for lack
        of space; then nothing was written.

        A store may call an operation more than once (it re-runs the whole
        batch after growing its space), so operations must act only through
        the writer; the results returned are those of the run that committed.
        """

    @abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None."""

    @abstractmethod
    def read_events(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int,
        newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> list[SessionEvent]:
        """Persisted events with ``after < sequence < before``, at most ``limit``.

        Oldest first by default: the ``limit`` events just after ``after``.
        With ``newest_first``: the ``limit`` events just before ``before``
        (``None``: from the end), newest first. Raises ``SessionNotFound``;
        ``ValueError`` for a negative bound or limit (a limit of 0 gives []).

        With ``max_bytes``, the read also stops before the event that would
        bring the summed serialized sizes of the events returned (each one's
        ``ByteSize()``) past ``max_bytes``; the first event is returned
        whatever its size, so a read of a non-empty window is never empty.
        This bounds what an answer carrying the events weighs, and the read
        costs what it returns: large events beyond the budget are not
        decoded. The caller cannot tell a page cut by ``max_bytes`` from one
        that reached the end of the window; the session's ``last_sequence``
        says whether more follow.
        """

    @abstractmethod
    def find_event(self, session_id: str, event_id: str) -> SessionEvent | None:
        """The session's event with id ``event_id``, or None. Raises ``SessionNotFound``."""

    @abstractmethod
    def list_sessions(
        self, *, limit: int, page_token: str = "", max_bytes: int | None = None
    ) -> tuple[list[SessionRecord], str]:
        """Up to ``limit`` sessions, most recently modified first, after ``page_token``.

        Returns the page and the token of the next one ("" when this was the
        last page). Raises ``ValueError`` for a token this store did not issue
        and for a ``limit`` below 1. With ``max_bytes``, the page also stops
        before the session whose metadata would bring the summed sizes of the
        page's metadata (``ByteSize()``; a system message may weigh as much as
        a prompt) past ``max_bytes``, as ``read_events`` does; the first is
        always returned, and the token leads on to the rest.
        """

    @abstractmethod
    def sessions_with_open_turns(self) -> list[SessionRecord]:
        """Sessions with a turn in progress or queued messages (cost: those sessions only).

        These are the sessions the daemon must attend to at start-up: close a
        turn a crash interrupted, then run the queued messages. A shared store
        leaves out the sessions under another owner's live lease.
        """

    # Several daemons on one store (module docstring); a store that only one
    # daemon uses keeps these defaults.
    shared: bool = False
    relay: Relay | None = None
    lease_owner: str = ""
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    def renew_leases(self) -> int:
        """Push back the expiry of every lease this store holds; returns how many."""
        return 0

    def watch(self, on_change: Callable[[StoreChange | None], None]) -> None:
        """Call ``on_change`` (from a thread of the store's) for each change another
        daemon commits, and with ``None`` when some may have been missed."""
        return  # nothing to report: no other daemon writes to this store

    @abstractmethod
    def session_count(self) -> int:
        """How many sessions there are (cost: constant)."""

    @abstractmethod
    def size_bytes(self) -> int:
        """About how many bytes the stored data occupies (for status and metrics)."""

    @abstractmethod
    def copy_to(self, fd: int) -> None:
        """Write a consistent copy of the whole store to the open file descriptor ``fd``.

        The copy is the store as it stood at one instant; writes committed
        while it is made are not in it, and they are not held back by it.
        ``fd`` may be a pipe: the bytes are written in order, never sought.
        The LMDB backend writes a compacted LMDB data file (``data.mdb``) that
        ``LmdbStore.open`` opens as a store. Raises ``BackupUnsupported`` when
        the backend has no such copy (the memory store).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the store; no call may follow. Idempotent."""
