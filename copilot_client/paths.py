"""Where the daemon listens and keeps its data.

The daemon imports this module too, so that both sides resolve the same
paths the same way: an explicit value, else an environment variable, else the
per-user default.

:func:`verify_private_socket` is what the client checks before it connects or
starts a daemon: the default folder may sit in the shared temp dir, where
another user can create it first and serve a daemon of their own there.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Final

from ._errors import UntrustedSocketError

SOCKET_ENV = "COPILOTD_SOCKET"
DATA_DIR_ENV = "COPILOTD_DATA_DIR"
SOCKET_NAME = "copilotd.sock"

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

# A daemon accepts at once; a probe that waits longer than this is left to gRPC.
PEER_PROBE_TIMEOUT: Final = 2.0
# struct ucred: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


def default_runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/copilotd``, else a per-user folder under the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "copilotd"
    return Path(tempfile.gettempdir()) / f"copilotd-{os.getuid()}"


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's socket: ``explicit``, else ``$COPILOTD_SOCKET``, else the default."""
    if explicit:
        text = os.fspath(explicit)
        return Path(text.removeprefix("unix:")).expanduser().absolute()
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return Path(from_env.removeprefix("unix:")).expanduser().absolute()
    return default_runtime_dir() / SOCKET_NAME


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The store's folder: ``explicit``, else ``$COPILOTD_DATA_DIR``, else XDG data home."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser().absolute()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().absolute() / "copilotd"


def socket_lock_path(socket_path: Path) -> Path:
    """The lock beside a socket: the daemon serving it holds it and writes its pid there."""
    return socket_path.with_name(socket_path.name + ".lock")


def channel_target(socket_path: Path) -> str:
    """The gRPC target string for a Unix socket path."""
    return f"unix:{socket_path}"


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _refuse(socket_path: Path, problem: str) -> UntrustedSocketError:
    return UntrustedSocketError(
        f"refusing to use the copilotd socket {socket_path}: {problem}. Whoever serves it "
        "would receive your sessions, prompts and keys. If it is yours, remove it or make it "
        "private (chmod 700 the folder, 600 the socket); otherwise choose another socket "
        f"(--socket or ${SOCKET_ENV}; with $XDG_RUNTIME_DIR set the default is private).",
        socket_path=socket_path,
    )


def _check_private(socket_path: Path, path: Path, info: os.stat_result, what: str) -> None:
    uid = os.getuid()
    if info.st_uid != uid:
        raise _refuse(
            socket_path,
            f"{what} {path} belongs to {_user(info.st_uid)}, not to you ({_user(uid)})",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _refuse(
            socket_path,
            f"{what} {path} has mode {mode:04o}: group or others may use it (it must be "
            f"{'0700' if what == 'folder' else '0600'})",
        )


def peer_uid(socket_path: Path) -> int | None:
    """The uid of the process listening on ``socket_path`` (``SO_PEERCRED``), or None
    when nothing accepts a connection there or the platform cannot tell."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:  # not Linux: the folder and socket checks still apply
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(PEER_PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(socket_path))
        except OSError:
            return None
        _, uid, _ = _UCRED.unpack(probe.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size))
    return int(uid)


def verify_private_socket(socket_path: Path) -> None:
    """Refuse a socket that is not this user's alone, before connecting or auto-starting.

    The folder must be a real folder (not a symbolic link), owned by this user
    and closed to group and others; so must the socket, when there is one; and
    the process listening on it must run as this user. A missing folder or
    socket passes: nothing serves there, and the daemon creates them private.

    Raises:
        UntrustedSocketError: Naming the path, its owner and its mode.
    """
    folder = socket_path.parent
    try:
        folder_info = os.lstat(folder)
    except OSError:
        return
    if stat.S_ISLNK(folder_info.st_mode):
        raise _refuse(
            socket_path,
            f"its folder {folder} is a symbolic link (owned by {_user(folder_info.st_uid)}); "
            "copilotd never serves through one",
        )
    _check_private(socket_path, folder, folder_info, "folder")
    try:
        socket_info = os.lstat(socket_path)
    except OSError:
        return
    if not stat.S_ISSOCK(socket_info.st_mode):
        raise _refuse(
            socket_path,
            f"it is not a socket (owned by {_user(socket_info.st_uid)}, mode "
            f"{stat.filemode(socket_info.st_mode)})",
        )
    _check_private(socket_path, socket_path, socket_info, "socket")
    uid = peer_uid(socket_path)
    if uid is not None and uid != os.getuid():
        raise _refuse(
            socket_path,
            f"the process serving it runs as {_user(uid)}, not as you ({_user(os.getuid())})",
        )
