"""``copilotd sessions …``: list, show, search, fork, rewind, delete, prune, pin and unpin,
over the gRPC API."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from copilot_client import InvalidPointError, TurnRunningError
from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd import events as ev
from copilotd.admin.retention import format_duration
from copilotd.cli.common import (
    DURATION,
    CliError,
    Daemon,
    age,
    connect,
    local_time,
    reports_errors,
    run,
    socket_option,
    to_datetime,
)
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.limits import MAX_PAGE_SIZE

SUMMARY_WIDTH = 48
# Sessions `sessions list` shows on a terminal unless --limit says otherwise.
TERMINAL_ROWS = 50


@click.group("sessions")
def sessions_group() -> None:
    """List, inspect, delete, prune and pin sessions (through the running daemon)."""


# -- reading -----------------------------------------------------------------------


async def list_all(
    daemon: Daemon, *, older_than: timedelta | None = None, limit: int | None = None
) -> list[SessionMetadata]:
    """Sessions, most recently active first, page by page."""
    cutoff = datetime.now(UTC) - older_than if older_than is not None else None
    found: list[SessionMetadata] = []
    token = ""
    while limit is None or len(found) < limit:
        response = await daemon.call(
            daemon.stub.ListSessions,
            pb.ListSessionsRequest(page_size=MAX_PAGE_SIZE, page_token=token),
        )
        for metadata in response.sessions:
            if cutoff is None or to_datetime(metadata.modified_time) < cutoff:
                found.append(metadata)
        token = response.next_page_token
        if not token:
            break
    return found if limit is None else found[:limit]


async def read_events(
    daemon: Daemon, session_id: str, up_to: int, *, include_rewound: bool = False
) -> list[SessionEvent]:
    """Persisted events 1..``up_to``, oldest first (later ones are left out)."""
    events: list[SessionEvent] = []
    cursor = 0
    while cursor < up_to:
        response = await daemon.call(
            daemon.stub.ListEvents,
            pb.ListEventsRequest(
                session_id=session_id,
                cursor=cursor,
                page_size=MAX_PAGE_SIZE,
                include_rewound=include_rewound,
            ),
        )
        page = [e for e in response.events if e.sequence <= up_to]
        events.extend(page)
        if not response.events or not response.next_cursor:
            break
        cursor = response.next_cursor
    return events


def metadata_dict(metadata: SessionMetadata) -> dict[str, Any]:
    """A session as plain JSON: numbers as numbers, times as RFC 3339."""
    return {
        "session_id": metadata.session_id,
        "start_time": metadata.start_time.ToJsonString(),
        "modified_time": metadata.modified_time.ToJsonString(),
        "summary": metadata.summary,
        "model": metadata.model,
        "message_count": metadata.message_count,
        "last_sequence": metadata.last_sequence,
        "turn_running": metadata.turn_running,
        "pinned": metadata.pinned,
        "parent_session_id": metadata.parent_session_id,
        "fork_sequence": metadata.fork_sequence,
        "rewound_events": metadata.rewound_events,
    }


def print_table(sessions: Sequence[SessionMetadata]) -> None:
    now = datetime.now(UTC)
    rows = [("ID", "LAST ACTIVE", "AGE", "MSGS", "MODEL", "PIN", "SUMMARY")]
    for m in sessions:
        summary = (
            m.summary if len(m.summary) <= SUMMARY_WIDTH else m.summary[: SUMMARY_WIDTH - 1] + "…"
        )
        rows.append(
            (
                m.session_id,
                local_time(m.modified_time),
                age(m.modified_time, now),
                str(m.message_count),
                m.model,
                "yes" if m.pinned else "",
                summary,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


@sessions_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.option("--older-than", type=DURATION, help="Only sessions inactive for longer (e.g. 30d).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many sessions.")
@socket_option
@reports_errors
def list_command(
    as_json: bool, older_than: timedelta | None, limit: int | None, socket_path: Path | None
) -> None:
    """Sessions, most recently active first.

    On a terminal, without --limit, the first 50 are shown and the command
    says how to see more.
    """
    # One more than is shown, to know whether there are more.
    fetch = limit if limit is not None or as_json or not sys.stdout.isatty() else TERMINAL_ROWS + 1

    async def main() -> list[SessionMetadata]:
        async with connect(socket_path) as daemon:
            return await list_all(daemon, older_than=older_than, limit=fetch)

    sessions = run(main())
    if fetch is not None and limit is None and len(sessions) > TERMINAL_ROWS:
        print_table(sessions[:TERMINAL_ROWS])
        click.echo(
            f"(the {TERMINAL_ROWS} most recently active shown; there are more: "
            "`copilotd sessions list --limit N` shows N, `--json` or a pipe shows all)",
            err=True,
        )
        return
    if as_json:
        click.echo(json.dumps([metadata_dict(m) for m in sessions], indent=2, ensure_ascii=False))
    elif sessions:
        print_table(sessions)
    else:
        click.echo(
            "no sessions"
            + (f" inactive for more than {format_duration(older_than)}" if older_than else ""),
            err=True,
        )


def transcript_line(event: SessionEvent) -> str | None:
    """One readable line for an event of the transcript (None: nothing worth showing)."""
    stamp = to_datetime(event.timestamp).astimezone().strftime("%H:%M:%S")
    kind = event.type
    if kind == ev.USER_MESSAGE:
        text = f"user: {event.user_message.content}"
    elif kind == ev.ASSISTANT_MESSAGE:
        message = event.assistant_message
        if message.tool_requests and not message.content:
            return None  # a message that only calls tools: its tool.execution_start lines say it
        partial = " [partial]" if message.partial else ""
        text = f"assistant{partial}: {message.content}"
    elif kind == ev.TOOL_EXECUTION_START:
        start = event.tool_execution_start
        text = f"tool call {start.tool_name} {start.arguments_json} [{start.tool_call_id}]"
    elif kind == ev.TOOL_EXECUTION_COMPLETE:
        done = event.tool_execution_complete
        outcome = "" if done.success else f" {done.result.result_type or 'failure'}"
        text = (
            f"tool result {done.tool_name} [{done.tool_call_id}]{outcome}: "
            f"{done.result.text_result_for_llm}"
        )
    elif kind == ev.EXTERNAL_TOOL_REQUESTED:
        return None  # the same call as its tool.execution_start; still waiting ones are listed
    elif kind == ev.SESSION_START:
        text = f"-- session started (model {event.session_start.model})"
    elif kind == ev.SESSION_RESUME:
        text = "-- resumed"
    elif kind == ev.SESSION_ERROR:
        error = event.session_error
        text = f"!! error ({error.error_type}): {error.message}"
    elif kind == ev.ABORT:
        text = f"-- aborted: {event.abort.reason}"
    elif kind == ev.ASSISTANT_TURN_END:
        end = event.assistant_turn_end
        if end.reason == ev.TurnEndReason.TURN_END_REASON_COMPLETED:
            return None
        reason = ev.TurnEndReason.Name(end.reason).removeprefix("TURN_END_REASON_").lower()
        text = f"-- turn {reason}" + (f": {end.message}" if end.message else "")
    elif kind == ev.ASSISTANT_TURN_START:
        return None
    else:
        text = f"-- {kind}"
    return f"[{stamp}] {text}"


@sessions_group.command("search")
@click.argument("query")
@click.option("--prefix", default="", help="Only sessions whose id starts with this.")
@click.option("--since", type=DURATION, help="Only events of the last DURATION (e.g. 7d).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of lines.")
@socket_option
@reports_errors
def search_command(
    query: str,
    prefix: str,
    since: timedelta | None,
    limit: int,
    as_json: bool,
    socket_path: Path | None,
) -> None:
    """Messages and tool results across all sessions that match QUERY, best first.

    QUERY is SQLite FTS5 syntax: words (all must match), "a phrase", OR, NOT,
    prefix*; quote words with punctuation. Each hit names the session and the
    event's sequence (`copilotd sessions show SESSION` shows the conversation).
    """
    request = pb.SearchSessionsRequest(query=query, session_id_prefix=prefix)
    if since is not None:
        request.since.FromDatetime(datetime.now(UTC) - since)

    async def main() -> list[pb.SearchHit]:
        hits: list[pb.SearchHit] = []
        async with connect(socket_path) as daemon:
            while len(hits) < limit:
                request.page_size = min(MAX_PAGE_SIZE, limit - len(hits))
                response = await daemon.call(daemon.stub.SearchSessions, request)
                hits.extend(response.hits)
                request.page_token = response.next_page_token
                if not request.page_token:
                    break
        return hits[:limit]

    hits = run(main())
    if as_json:
        rows = [json_format.MessageToDict(hit, preserving_proto_field_name=True) for hit in hits]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif hits:
        for hit in hits:
            where = f"{hit.session_id}#{hit.sequence}"
            click.echo(f"{where}  {local_time(hit.event_time)}  {hit.event_type}  {hit.snippet}")
    else:
        click.echo(f"nothing matches {query!r}", err=True)


@sessions_group.command("show")
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata and events as JSON.")
@click.option("--include-rewound", is_flag=True, help="Also the events rewinds cut (for audit).")
@socket_option
@reports_errors
def show_command(
    session_id: str, as_json: bool, include_rewound: bool, socket_path: Path | None
) -> None:
    """A session's metadata and its transcript (nothing is recorded: no resume)."""

    async def main() -> tuple[SessionMetadata, list[SessionEvent]]:
        async with connect(socket_path) as daemon:
            response = await daemon.call(
                daemon.stub.GetSession, pb.GetSessionRequest(session_id=session_id)
            )
            metadata = response.session
            events = await read_events(
                daemon, session_id, metadata.last_sequence, include_rewound=include_rewound
            )
            return metadata, events

    metadata, events = run(main())
    if as_json:
        payload = {
            "session": {
                **metadata_dict(metadata),
                "tools": [tool.name for tool in metadata.tools],
                "pending_tool_calls": [
                    json_format.MessageToDict(call, preserving_proto_field_name=True)
                    for call in metadata.pending_tool_calls
                ],
            },
            "events": [
                json_format.MessageToDict(e, preserving_proto_field_name=True) for e in events
            ],
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    fields = [
        ("session", metadata.session_id),
        ("model", metadata.model),
        ("started", local_time(metadata.start_time)),
        (
            "last active",
            f"{local_time(metadata.modified_time)} ({age(metadata.modified_time)} ago)",
        ),
        ("messages", str(metadata.message_count)),
        ("events", str(metadata.last_sequence)),
        ("pinned", "yes" if metadata.pinned else "no"),
        ("turn running", "yes" if metadata.turn_running else "no"),
        ("summary", metadata.summary),
    ]
    if metadata.parent_session_id:
        fields.append(("forked from", f"{metadata.parent_session_id} at {metadata.fork_sequence}"))
    if metadata.rewound_events:
        fields.append(("rewound", f"{metadata.rewound_events} events (--include-rewound)"))
    if metadata.tools:
        fields.append(("tools", ", ".join(tool.name for tool in metadata.tools)))
    fields.extend(
        ("waiting call", f"{call.tool_name} {call.arguments_json} [{call.tool_call_id}]")
        for call in metadata.pending_tool_calls
    )
    for name, value in fields:
        click.echo(f"{name + ':':<14}{value}")
    click.echo()
    for event in events:
        line = transcript_line(event)
        if line is not None:
            click.echo(line)


# -- changing ----------------------------------------------------------------------


def _point_hint(error: InvalidPointError | TurnRunningError, flag: str) -> CliError:
    """The daemon's refusal, with the flag that picks another point on this command."""
    hint = (
        "pass --abort-turn to abort it first"
        if isinstance(error, TurnRunningError)
        else f"pick another point with {flag}; `copilotd sessions show` lists the events"
    )
    return CliError(f"{error.message} ({hint})")


@sessions_group.command("fork")
@click.argument("source_id", metavar="SRC")
@click.option("--id", "new_id", default="", help="The fork's id (default: a new UUID).")
@click.option(
    "--at",
    type=click.IntRange(min=1),
    help="The last event of SRC the fork inherits (default: its last event).",
)
@socket_option
@reports_errors
def fork_command(source_id: str, new_id: str, at: int | None, socket_path: Path | None) -> None:
    """Fork a session: a new session whose history is SRC's up to an event (nothing is
    copied, so it is as quick at any length)."""
    request = pb.ForkSessionRequest(source_session_id=source_id, new_session_id=new_id)
    if at is not None:
        request.up_to_sequence = at

    async def main() -> SessionMetadata:
        async with connect(socket_path) as daemon:
            response: pb.ForkSessionResponse = await daemon.call(daemon.stub.ForkSession, request)
            return response.session

    try:
        fork = run(main())
    except InvalidPointError as error:
        raise _point_hint(error, "--at SEQ") from None
    click.echo(f"forked {source_id} at {fork.fork_sequence} as {fork.session_id}")


@sessions_group.command("rewind")
@click.argument("session_id", metavar="ID")
@click.argument("sequence", metavar="SEQ", type=click.IntRange(min=1))
@click.option("--abort-turn", is_flag=True, help="Abort a running turn first.")
@click.option("--reason", default="", help="Why, recorded in the rewind event.")
@socket_option
@reports_errors
def rewind_command(
    session_id: str, sequence: int, abort_turn: bool, reason: str, socket_path: Path | None
) -> None:
    """Rewind a session to the event SEQ: the conversation goes on as if the events
    after it had not happened (they stay in the log: `show --include-rewound`)."""
    request = pb.RewindSessionRequest(
        session_id=session_id, to_sequence=sequence, abort_turn=abort_turn, reason=reason
    )

    async def main() -> pb.RewindSessionResponse:
        async with connect(socket_path) as daemon:
            response: pb.RewindSessionResponse = await daemon.call(
                daemon.stub.RewindSession, request
            )
            return response

    try:
        response = run(main())
    except (InvalidPointError, TurnRunningError) as error:
        raise _point_hint(error, "SEQ") from None
    cut = response.rewind.session_snapshot_rewind
    click.echo(
        f"rewound {session_id} to {sequence}: cut {cut.events_removed} events "
        f"({cut.first_rewound_sequence}-{cut.last_rewound_sequence}), kept in the log"
    )


@sessions_group.command("delete")
@click.argument("session_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@socket_option
@reports_errors
def delete_command(session_ids: tuple[str, ...], yes: bool, socket_path: Path | None) -> None:
    """Delete sessions and all their events, for good (asks first unless --yes)."""
    if not yes and not sys.stdin.isatty():
        raise CliError("not deleting without a confirmation (stdin is not a terminal): pass --yes")

    async def main() -> None:
        async with connect(socket_path) as daemon:
            for session_id in session_ids:
                response = await daemon.call(
                    daemon.stub.GetSession, pb.GetSessionRequest(session_id=session_id)
                )
                m = response.session
                question = (
                    f"Delete session {session_id} ({m.message_count} messages, last active "
                    f"{local_time(m.modified_time)}{', pinned' if m.pinned else ''})?"
                )
                if not yes and not click.confirm(question, default=False, err=True):
                    click.echo(f"kept {session_id}", err=True)
                    continue
                await daemon.call(
                    daemon.stub.DeleteSession, pb.DeleteSessionRequest(session_id=session_id)
                )
                click.echo(f"deleted {session_id}")

    run(main())


@sessions_group.command("prune")
@click.option(
    "--older-than", type=DURATION, help="Delete sessions inactive for longer than this (e.g. 30d)."
)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    help="Keep the N most recently active sessions, whatever their age.",
)
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as a JSON array.")
@socket_option
@reports_errors
def prune_command(
    older_than: timedelta | None,
    keep: int | None,
    dry_run: bool,
    as_json: bool,
    socket_path: Path | None,
) -> None:
    """Delete old sessions; pinned ones and running turns are never touched.

    With --older-than and --keep, a session goes when it is older AND not among
    the N most recent. With neither, the daemon's [retention] policy is used,
    so `copilotd sessions prune --dry-run` shows what the next sweep deletes.
    """
    request = admin_pb2.PruneSessionsRequest(dry_run=dry_run)
    if older_than is not None or keep is not None:
        request.policy.max_age_seconds = int(older_than.total_seconds()) if older_than else 0
        if keep is not None:
            request.policy.max_sessions = keep

    async def main() -> admin_pb2.PruneSessionsResponse:
        async with connect(socket_path) as daemon:
            response: admin_pb2.PruneSessionsResponse = await daemon.call(
                daemon.admin.PruneSessions, request
            )
            return response

    response = run(main())
    if as_json:
        click.echo(json.dumps(prune_report(response, dry_run=dry_run), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {response.session_count} session(s)")
    if response.sessions:
        print_table(response.sessions)
    if len(response.sessions) < response.session_count:
        click.echo(f"(the first {len(response.sessions)} shown)")
    if response.pinned_kept:
        click.echo(f"kept {response.pinned_kept} pinned session(s) the rule selects")


def prune_report(response: admin_pb2.PruneSessionsResponse, *, dry_run: bool) -> dict[str, Any]:
    """``prune --json``: the count, the sessions listed, and whether that list is cut
    short (the daemon lists as many as fit in one answer; the count is all of them)."""
    return {
        "dry_run": dry_run,
        "session_count": response.session_count,
        "sessions": [metadata_dict(m) for m in response.sessions],
        "truncated": len(response.sessions) < response.session_count,
        "pinned_kept": response.pinned_kept,
    }


def _pin(session_id: str, pinned: bool, socket_path: Path | None) -> None:
    async def main() -> None:
        async with connect(socket_path) as daemon:
            await daemon.call(
                daemon.admin.SetSessionPinned,
                admin_pb2.SetSessionPinnedRequest(session_id=session_id, pinned=pinned),
            )

    run(main())
    click.echo(f"{'pinned' if pinned else 'unpinned'} {session_id}")


@sessions_group.command("pin")
@click.argument("session_id")
@socket_option
@reports_errors
def pin_command(session_id: str, socket_path: Path | None) -> None:
    """Pin a session: retention and prune never delete it."""
    _pin(session_id, True, socket_path)


@sessions_group.command("unpin")
@click.argument("session_id")
@socket_option
@reports_errors
def unpin_command(session_id: str, socket_path: Path | None) -> None:
    """Unpin a session, so retention may delete it again."""
    _pin(session_id, False, socket_path)
