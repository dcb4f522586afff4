"""``copilotd export | import | backup | restore``: moving sessions and stores around.

Export and import go through the gRPC API (so they work while the daemon
serves, and other programs can do the same). Backup asks the daemon for a
consistent copy of its store; restore works on a data directory no daemon is
serving, and keeps the store it replaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO, Final

import click

from copilot_client import SessionNotFoundError
from copilot_client.paths import DATA_DIR_ENV, resolve_data_dir
from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd import __version__
from copilotd.admin.export_format import (
    ExportedSession,
    ExportFormatError,
    ExportReader,
    ExportWriter,
)
from copilotd.cli.common import (
    CliError,
    Daemon,
    connect,
    human_bytes,
    progress,
    reports_errors,
    run,
    socket_option,
)
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.cli.sessions import list_all, read_events
from copilotd.runtime.datadir import (
    DATA_LOCK_NAME,
    STORE_SUBDIR,
    StartupError,
    ensure_private_dir,
    exclusive_lock,
)

DATA_FILE: Final = "data.mdb"
IMPORT_BATCH_EVENTS: Final = 500
IMPORT_BATCH_BYTES: Final = 1 << 20


# -- export -----------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A file that appears at ``path`` whole, or not at all (``-``: stdout)."""
    if str(path) == "-":
        yield sys.stdout
        return
    path = path.expanduser()
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed into place below
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@click.command("export")
@click.argument("session_ids", metavar="[ID...]", nargs=-1)
@click.option("--all", "export_all", is_flag=True, help="Export every session.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The JSONL file to write ('-': standard output).",
)
@socket_option
@reports_errors
def export_command(
    session_ids: tuple[str, ...], export_all: bool, output: Path, socket_path: Path | None
) -> None:
    """Export sessions to a JSONL file (docs/export-format.md), e.g. to move them elsewhere."""
    if export_all == bool(session_ids):
        raise CliError("name the sessions to export, or pass --all (not both)")

    async def main() -> tuple[int, int]:
        async with connect(socket_path) as daemon:
            if export_all:
                sessions = await list_all(daemon)
            else:
                sessions = [
                    (
                        await daemon.call(
                            daemon.stub.GetSession, pb.GetSessionRequest(session_id=i)
                        )
                    ).session
                    for i in session_ids
                ]
            total = sum(m.last_sequence for m in sessions)
            written = 0
            with atomic_output(output) as stream, progress(total, "exporting") as bar:
                writer = ExportWriter(stream, producer=f"copilotd {__version__}")
                writer.begin()
                for metadata in sessions:
                    # The header's metadata and the events are the same moment's:
                    # events appended since are left for the next export.
                    events = await read_events(
                        daemon, metadata.session_id, metadata.last_sequence, include_rewound=True
                    )
                    writer.session(metadata, len(events))
                    for event in events:
                        writer.event(metadata.session_id, event)
                    written += len(events)
                    bar.update(len(events))
                writer.end()
            return len(sessions), written

    count, events = run(main())
    click.echo(f"exported {count} session(s), {events} events to {output}", err=True)


# -- import -----------------------------------------------------------------------------


def read_export(path: Path) -> Iterator[ExportedSession]:
    try:
        with path.open(encoding="utf-8") as handle:
            yield from ExportReader(handle, name=str(path)).sessions()
    except ExportFormatError as error:
        raise CliError(str(error)) from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text; it is not a copilotd export") from None


async def import_requests(
    session: ExportedSession, conflict: admin_pb2.ImportConflict.ValueType
) -> AsyncIterator[admin_pb2.ImportSessionRequest]:
    """The header, then the events in batches of bounded size."""
    header = admin_pb2.ImportHeader(
        metadata=session.metadata, event_count=session.event_count, on_conflict=conflict
    )
    request = admin_pb2.ImportSessionRequest(header=header)
    size = 0
    for event in session.events:
        request.events.append(event)
        size += event.ByteSize()
        if len(request.events) >= IMPORT_BATCH_EVENTS or size >= IMPORT_BATCH_BYTES:
            yield request
            request, size = admin_pb2.ImportSessionRequest(), 0
    if request.events or request.HasField("header"):
        yield request


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--rename", is_flag=True, help="Import a session whose id is taken under a new id.")
@click.option("--overwrite", is_flag=True, help="Replace a session whose id is taken.")
@socket_option
@reports_errors
def import_command(file: Path, rename: bool, overwrite: bool, socket_path: Path | None) -> None:
    """Import the sessions of an export file; ids, sequence numbers and times are kept.

    A session whose id already exists is refused (and nothing is imported)
    unless --rename or --overwrite says what to do.
    """
    if rename and overwrite:
        raise CliError("--rename and --overwrite exclude each other; choose one")
    conflict = (
        admin_pb2.IMPORT_CONFLICT_RENAME
        if rename
        else admin_pb2.IMPORT_CONFLICT_OVERWRITE
        if overwrite
        else admin_pb2.IMPORT_CONFLICT_FAIL
    )
    # A first pass checks the whole file, so a defect is found before anything is imported.
    ids, total = [], 0
    for session in read_export(file):
        ids.append(session.metadata.session_id)
        total += session.event_count

    async def main() -> list[str]:
        async with connect(socket_path) as daemon:
            if conflict == admin_pb2.IMPORT_CONFLICT_FAIL:
                await refuse_taken_ids(daemon, ids)
            reports = []
            with progress(total, "importing") as bar:
                for session in read_export(file):
                    async with daemon.mapped_errors():
                        response = await daemon.admin.ImportSession(
                            import_requests(session, conflict)
                        )
                    bar.update(session.event_count)
                    reports.append(import_report(response))
            return reports

    for line in run(main()):
        click.echo(line)


async def refuse_taken_ids(daemon: Daemon, ids: list[str]) -> None:
    """Refuse before importing anything (the daemon checks again, atomically, per session)."""
    for session_id in ids:
        try:
            await daemon.call(daemon.stub.GetSession, pb.GetSessionRequest(session_id=session_id))
        except SessionNotFoundError:
            continue
        raise CliError(
            f"session {session_id} already exists; nothing was imported. Pass --rename to "
            "import it under a new id or --overwrite to replace it"
        )


def import_report(response: admin_pb2.ImportSessionResponse) -> str:
    session = response.session
    line = f"imported {session.session_id} ({session.last_sequence} events)"
    if response.original_session_id:
        line += f", renamed from {response.original_session_id}"
    if response.replaced:
        line += ", replacing the existing session"
    if response.closed_open_turn:
        line += "; its last turn was still running at export and is marked interrupted"
    return line


# -- backup -----------------------------------------------------------------------------


def private_file(path: Path) -> BinaryIO:
    """A new file only its owner can read (a store's copy holds every conversation)."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def backup_store_dir(backup: Path) -> Path:
    """The folder holding a backup's data.mdb: ``BACKUP/store``, ``BACKUP``, or the file's."""
    if backup.is_file():
        return backup.parent
    for candidate in (backup / STORE_SUBDIR, backup):
        if (candidate / DATA_FILE).is_file():
            return candidate
    raise CliError(
        f"{backup} holds no copilotd backup (no {STORE_SUBDIR}/{DATA_FILE}); "
        "make one with `copilotd backup DEST`"
    )


def count_sessions(store_dir: Path) -> int:
    """Open the store there (which checks its version and integrity) and count its sessions."""
    # Here, not at the top: only restore needs LMDB, and every subcommand imports this module.
    from copilotd.store import LmdbStore, StoreError

    try:
        store = LmdbStore.open(store_dir)
    except StoreError as error:
        raise CliError(str(error)) from None
    try:
        return store.session_count()
    finally:
        store.close()


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@socket_option
@reports_errors
def backup_command(dest: Path, socket_path: Path | None) -> None:
    """Copy the whole store, consistently, while the daemon runs.

    DEST becomes a data directory: restore it with `copilotd restore DEST`, or
    serve it as it is with `copilotd serve --data-dir DEST`.
    """
    dest = dest.expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CliError(f"{dest} exists and is not an empty folder; choose a new one")
    # Private, like the data directory it copies: it holds every conversation.
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    store_dir = dest / STORE_SUBDIR
    store_dir.mkdir(mode=0o700, exist_ok=True)
    partial = store_dir / f"{DATA_FILE}.partial"
    # Here, not at the top: the admin service loads the whole session core.
    from copilotd.admin.service import BACKUP_FORMAT

    async def main() -> int:
        async with connect(socket_path) as daemon, daemon.mapped_errors():
            responses = aiter(daemon.admin.BackupStore(admin_pb2.BackupStoreRequest()))
            info = (await anext(responses)).info
            if info.format != BACKUP_FORMAT:
                raise CliError(
                    f"the daemon sends a {info.format!r} backup, unknown to this copilotd"
                )
            received, complete = 0, False
            with (
                private_file(partial) as handle,
                progress(info.estimated_bytes, "backing up") as bar,
            ):
                async for response in responses:
                    handle.write(response.data)
                    received += len(response.data)
                    bar.update(len(response.data))
                    complete = response.complete and response.total_bytes == received
                handle.flush()
                os.fsync(handle.fileno())
            if not complete:
                raise CliError("the backup stream ended early; nothing was kept. Retry")
            return received

    try:
        size = run(main())
        partial.rename(store_dir / DATA_FILE)
        sessions = count_sessions(store_dir)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    click.echo(
        f"backed up {sessions} session(s) ({human_bytes(size)}) to {dest}; restore with "
        f"`copilotd restore {dest}`"
    )


# -- restore ----------------------------------------------------------------------------


@click.command("restore")
@click.argument("backup", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--data-dir",
    envvar=DATA_DIR_ENV,
    type=click.Path(path_type=Path, file_okay=False),
    help=f"The data directory to restore into [env {DATA_DIR_ENV}; "
    "default $XDG_DATA_HOME/copilotd].",
)
@reports_errors
def restore_command(backup: Path, data_dir: Path | None) -> None:
    """Put a backup in place of the store of a data directory no daemon is serving.

    The store it replaces is kept beside it (store.replaced-TIME), so nothing
    is lost. Stop the daemon first: systemctl --user stop copilotd.socket copilotd.
    """
    from copilotd.search import drop_index  # the store's modules: only when needed

    source_dir = backup_store_dir(backup.expanduser())
    target = resolve_data_dir(data_dir)
    try:
        ensure_private_dir(target)
        with exclusive_lock(target / DATA_LOCK_NAME, f"the data directory {target}"):
            current, kept, sessions = _swap_in(source_dir, target)
            drop_index(target)  # it indexed the store replaced; the next start rebuilds it
    except StartupError as error:
        raise CliError(f"cannot restore: {error}") from None
    note = f"; the previous store is kept in {kept}" if kept else ""
    click.echo(f"restored {sessions} session(s) from {backup} into {current}{note}")


@click.group("search-index")
def search_index_group() -> None:
    """The full-text index behind `copilotd sessions search`."""


@search_index_group.command("rebuild")
@click.option(
    "--data-dir",
    envvar=DATA_DIR_ENV,
    type=click.Path(path_type=Path, file_okay=False),
    help=f"The data directory [env {DATA_DIR_ENV}; default $XDG_DATA_HOME/copilotd].",
)
@click.option(
    "--store-dsn",
    envvar=STORE_DSN_ENV,
    help="Rebuild the search entries of the PostgreSQL store at this connection string "
    f"[env {STORE_DSN_ENV}; config [store] dsn, as copilotd serve reads it].",
)
@reports_errors
def rebuild_index_command(data_dir: Path | None, store_dsn: str | None) -> None:
    """Rebuild the search index from the log.

    For a data directory no daemon is serving, the index is dropped here and
    rebuilt from every session's events when the daemon next starts (searches
    wait until it is whole). Stop the daemon first: systemctl --user stop
    copilotd.socket copilotd. With --store-dsn, the PostgreSQL store's search
    entries are rebuilt now, in one transaction, while daemons serve (their
    writes and searches wait for it). Without --store-dsn, the config file's
    [store] table says which store it is, as for copilotd serve.
    """
    from copilotd.config import ConfigError, load_config
    from copilotd.store.settings import POSTGRESQL, load_store_config

    try:
        store = load_store_config(load_config(), None, store_dsn)
    except ConfigError as error:
        raise CliError(f"cannot rebuild the search index: {error}") from None
    if store.backend == POSTGRESQL and store.dsn:
        _rebuild_postgres_search(store.dsn)
        return
    from copilotd.search import drop_index  # the store's modules: only when needed

    target = resolve_data_dir(data_dir)
    try:
        with exclusive_lock(target / DATA_LOCK_NAME, f"the data directory {target}"):
            existed = drop_index(target)
    except StartupError as error:
        raise CliError(f"cannot rebuild the search index: {error}") from None
    done = "dropped" if existed else "there was none"
    click.echo(f"search index of {target}: {done}; the daemon rebuilds it from the log at start")


def _rebuild_postgres_search(dsn: str) -> None:
    from copilotd.store import StoreError
    from copilotd.store.postgres_store import PostgresStore

    try:
        store = PostgresStore.open(dsn, max_connections=1)
        try:
            events = store.rebuild_search()
        finally:
            store.close()
    except StoreError as error:
        raise CliError(f"cannot rebuild the search entries: {error}") from None
    click.echo(f"search entries of {store.where}: rebuilt from {events} event(s)")


def _unused_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name-2``, ``-3``… when taken (two restores
    in one second); the caller holds the data directory's lock."""
    candidate, number = folder / name, 1
    while candidate.exists():
        number += 1
        candidate = folder / f"{name}-{number}"
    return candidate


def _swap_in(source_dir: Path, target: Path) -> tuple[Path, Path | None, int]:
    current = target / STORE_SUBDIR
    incoming = target / f"{STORE_SUBDIR}.restoring"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(mode=0o700)
    try:
        with (source_dir / DATA_FILE).open("rb") as src, private_file(incoming / DATA_FILE) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        sessions = count_sessions(incoming)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    kept: Path | None = None
    if current.exists():
        kept = _unused_name(target, f"{STORE_SUBDIR}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        current.rename(kept)
    incoming.rename(current)
    directory = os.open(target, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return current, kept, sessions
