"""Running the main example (examples/persisting_sessions.py) as its users do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "persisting_sessions.py"


def run_step(step: str, env: dict[str, str]) -> str:
    """One step of the example in its own process; its output (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), step],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
