"""Setup steps that need root (creating a user, mounting a disk): run them or skip the test."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest


def run_as_root_or_skip(command: list[str], what: str) -> None:
    """Run ``command`` for the test's setup; skip the test, saying why, where it cannot run."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")
    if shutil.which(command[0]) is None:
        pytest.skip(f"{what} needs {command[0]}, which is not installed")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot {what} here: {result.stderr.strip()}")


@pytest.fixture
def stranger() -> Iterator[str]:
    """A local user created for this test (root only), removed afterwards."""
    name = f"cpd-stranger-{os.getpid()}"
    run_as_root_or_skip(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        "creating another local user",
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def python_for(user: str) -> str:
    """A Python interpreter that ``user`` may run (this venv's may sit in root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"], user=user, capture_output=True, cwd="/"
            )
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python interpreter that {user} may run")


def unprivileged_user(names: Sequence[str]) -> pwd.struct_passwd | None:
    """Whom a server that refuses root (or should not have it) runs as: nobody
    else when this is not root, else the first of ``names`` that exists.

    Raises:
        LookupError: This is root and none of ``names`` exists.
    """
    if os.geteuid() != 0:
        return None
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LookupError(f"running as root, and none of the users {tuple(names)} exists")
