"""Setup steps that need root (creating a user, mounting a disk): run them or skip the test."""

from __future__ import annotations

import os
import shutil
import subprocess

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
