"""Where the daemon listens and keeps its data.

The daemon imports this module too, so that both sides resolve the same
paths the same way: an explicit value, else an environment variable, else the
per-user default.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SOCKET_ENV = "COPILOTD_SOCKET"
DATA_DIR_ENV = "COPILOTD_DATA_DIR"
SOCKET_NAME = "copilotd.sock"

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


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


def channel_target(socket_path: Path) -> str:
    """The gRPC target string for a Unix socket path."""
    return f"unix:{socket_path}"
