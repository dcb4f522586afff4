"""Running the main example (examples/persisting_sessions.py) as its users do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "persisting_sessions.py"
FIRST_PROMPT = "Let's discuss TypeScript generics"


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


def check_resumed_output(output: str) -> None:
    """The resume step's output: the whole history came back and the model saw it."""
    answer = next(line for line in output.splitlines() if line.startswith("assistant:"))
    # The offline model quotes earlier prompts: only the restored history can make it.
    assert "What were we discussing?" in answer
    assert f'"{FIRST_PROMPT}"' in answer
    assert "Session: user-123-conversation" in output
    history = [line for line in output.splitlines() if line.startswith("[")]
    types = [line.split("]")[0][1:] for line in history]
    assert types == [
        "session.start",
        "user.message",
        "assistant.turn_start",
        "assistant.message",
        "assistant.turn_end",
        "session.resume",
        "user.message",
        "assistant.turn_start",
        "assistant.message",
        "assistant.turn_end",
    ]
    assert history[1] == f"[user.message] {FIRST_PROMPT}"
    assert history[6] == "[user.message] What were we discussing?"
