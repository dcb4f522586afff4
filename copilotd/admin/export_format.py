"""The export file: JSON Lines, versioned (see docs/export-format.md).

::

    {"kind": "copilotd-export", "format_version": 1, "exported_at": "...", "producer": "..."}
    {"kind": "session", "session": {<SessionMetadata>}, "event_count": 3}
    {"kind": "event", "session_id": "s1", "event": {<SessionEvent>}}      x event_count
    ...                                                                    (more sessions)
    {"kind": "end", "session_count": 1}

Messages use protobuf's JSON mapping with the .proto field names. The end
line makes a truncated file detectable; ``event_count`` does the same for
each session.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from copilotd.events import SessionEvent, SessionMetadata

M = TypeVar("M", bound=Message)

FORMAT_NAME: Final = "copilotd-export"
FORMAT_VERSION: Final = 1


class ExportFormatError(Exception):
    """The file is not a copilotd export this version can read; the message names the line."""


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class ExportWriter:
    """Writes one file: ``begin``; per session, ``session`` then its ``event``s; ``end``."""

    def __init__(self, stream: IO[str], *, producer: str) -> None:
        self._stream = stream
        self._producer = producer
        self._sessions = 0

    def _line(self, value: dict[str, Any]) -> None:
        self._stream.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")

    def begin(self) -> None:
        self._line(
            {
                "kind": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "exported_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "producer": self._producer,
            }
        )

    def session(self, metadata: SessionMetadata, event_count: int) -> None:
        self._sessions += 1
        self._line({"kind": "session", "session": _to_json(metadata), "event_count": event_count})

    def event(self, session_id: str, event: SessionEvent) -> None:
        self._line({"kind": "event", "session_id": session_id, "event": _to_json(event)})

    def end(self) -> None:
        self._line({"kind": "end", "session_count": self._sessions})


@dataclass
class ExportedSession:
    metadata: SessionMetadata
    event_count: int
    events: list[SessionEvent] = field(default_factory=list)


class ExportReader:
    """Reads an export file session by session, checking its structure as it goes.

    Args:
        lines: the file's lines.
        name: the file's name, for error messages.
    """

    def __init__(self, lines: Iterable[str], *, name: str) -> None:
        self._lines = enumerate(lines, start=1)
        self._name = name
        self.header: dict[str, Any] = {}

    def _error(self, number: int, message: str) -> ExportFormatError:
        return ExportFormatError(f"{self._name} line {number}: {message}")

    def _next(self) -> tuple[int, dict[str, Any]] | None:
        for number, line in self._lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise self._error(number, f"not JSON ({error.msg})") from None
            if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
                raise self._error(number, 'not a copilotd export line (no "kind")')
            return number, value
        return None

    def sessions(self) -> Iterator[ExportedSession]:
        """Each session with its events; raises ``ExportFormatError`` at the first defect."""
        first = self._next()
        if first is None:
            raise ExportFormatError(f"{self._name} is empty; it is not a copilotd export")
        number, header = first
        if header.get("kind") != FORMAT_NAME:
            raise self._error(number, f'the first line must be the "{FORMAT_NAME}" header')
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise self._error(
                number,
                f"format version {version!r}; this copilotd reads version {FORMAT_VERSION} "
                "(upgrade copilotd to import newer exports)",
            )
        self.header = header
        count = 0
        while True:
            item = self._next()
            if item is None:
                raise ExportFormatError(
                    f"{self._name} ends without its end line; the file is truncated"
                )
            number, value = item
            kind = value["kind"]
            if kind == "end":
                if value.get("session_count") != count:
                    raise self._error(
                        number,
                        f"the end line counts {value.get('session_count')!r} sessions, "
                        f"but the file has {count}",
                    )
                if self._next() is not None:
                    raise ExportFormatError(f"{self._name} has lines after its end line")
                return
            if kind != "session":
                raise self._error(number, f'expected a "session" line, found {kind!r}')
            session = self._session(number, value)
            count += 1
            yield session

    def _session(self, number: int, value: dict[str, Any]) -> ExportedSession:
        metadata = self._parse(number, value.get("session"), SessionMetadata(), "session")
        event_count = value.get("event_count")
        if not isinstance(event_count, int) or event_count < 0:
            raise self._error(number, "event_count must be a whole number")
        session = ExportedSession(metadata, event_count)
        for _ in range(event_count):
            item = self._next()
            if item is None or item[1]["kind"] != "event":
                where = item[0] if item else number
                raise self._error(
                    where,
                    f"session {metadata.session_id!r} announces {event_count} events but has "
                    f"{len(session.events)}; the file is truncated or was edited",
                )
            event_number, event_line = item
            if event_line.get("session_id") != metadata.session_id:
                raise self._error(event_number, "an event of another session, out of place")
            session.events.append(
                self._parse(event_number, event_line.get("event"), SessionEvent(), "event")
            )
        return session

    def _parse(self, number: int, value: Any, message: M, what: str) -> M:
        if not isinstance(value, dict):
            raise self._error(number, f'"{what}" must be a JSON object')
        try:
            return json_format.ParseDict(value, message)
        except json_format.ParseError as error:
            raise self._error(
                number,
                f"{what} not understood ({error}); if the file comes from a newer copilotd, "
                "upgrade this one",
            ) from None
