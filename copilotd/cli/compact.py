"""``copilotd sessions compact``: summarise a session's older part now, over the gRPC API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

import click
from google.protobuf import json_format

from copilot_client import DaemonTimeoutError, InvalidArgumentError, NothingToCompactError
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.cli.common import CliError, call_timeout, connect, reports_errors, run, socket_option
from copilotd.events import SessionEvent

# A summary is one model call per chunk of the history: far longer than an
# ordinary call may take (the client's compact() waits as long).
COMPACT_TIMEOUT: Final = 300.0


@click.command("compact")
@click.argument("session_id", metavar="ID")
@click.option(
    "--instructions",
    default="",
    metavar="TEXT",
    help="What the summary should also keep (e.g. 'keep the file names'); - reads it from stdin.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the compaction's event as JSON.")
@socket_option
@reports_errors
def compact_command(
    session_id: str, instructions: str, as_json: bool, socket_path: Path | None
) -> None:
    """Compact a session now: its model sees a summary of the older part and the latest
    turns verbatim afterwards (every event stays in the log). Waits for a compaction
    already under way instead of starting another."""
    if instructions == "-":
        instructions = sys.stdin.read()
    request = pb.CompactSessionRequest(session_id=session_id, custom_instructions=instructions)
    timeout = call_timeout(COMPACT_TIMEOUT)

    async def main() -> SessionEvent:
        async with connect(socket_path, timeout=timeout) as daemon:
            response: pb.CompactSessionResponse = await daemon.call(
                daemon.stub.CompactSession, request
            )
            return response.compaction_complete

    try:
        event = run(main())
    except InvalidArgumentError as error:
        raise CliError(error.message.replace("custom_instructions", "--instructions")) from None
    except NothingToCompactError as error:
        raise CliError(error.message.replace("compact again", "run this again")) from None
    except DaemonTimeoutError:
        raise CliError(
            f"no answer within {timeout:g}s; the compaction goes on in the daemon (give "
            "`copilotd --timeout SECONDS` to wait longer; `copilotd sessions show "
            f"{session_id}` lists its session.compaction_complete once done)"
        ) from None
    if as_json:
        click.echo(json.dumps(json_format.MessageToDict(event), indent=2))
        return
    for line in report(session_id, event):
        click.echo(line)


def report(session_id: str, event: SessionEvent) -> list[str]:
    """What a compaction did, in a few lines."""
    data = event.session_compaction_complete
    lines = [
        f"compacted {session_id}: events {data.from_sequence}-{data.up_to_sequence} summarised "
        f"({data.messages_removed} messages, {data.chunks} model "
        f"call{'s' if data.chunks != 1 else ''}), recorded as event {event.sequence}",
        f"context: {data.pre_compaction_tokens} -> {data.post_compaction_tokens} tokens "
        f"(estimated; {data.tokens_removed} removed)",
    ]
    if data.HasField("compaction_tokens_used"):
        used = data.compaction_tokens_used
        estimated = " (estimated)" if used.estimated else ""
        lines.append(
            f"summary calls used {used.input_tokens} input and {used.output_tokens} output "
            f"tokens{estimated}"
        )
    return lines
