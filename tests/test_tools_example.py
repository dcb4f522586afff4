"""examples/tools.py as its users run it: a tool call outlives the killed process
that was answering it and is answered by the next one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.daemon_process import DaemonProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tools.py"


def test_the_tools_example_answers_the_call_after_its_first_process_is_killed(
    daemon: DaemonProcess,
) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=daemon.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "[ask] tool running: get_weather {'city': 'Paris'}",
        "[ask] killed in the middle of the tool call",
        "tool running: get_weather {'city': 'Paris'}",
        'call:   get_weather {"city": "Paris"}',
        "result: sunny, 21 degrees in Paris",
        'answer: get_weather returned: "sunny, 21 degrees in Paris".',
    ]


def test_resuming_with_no_call_waiting_says_to_ask_first(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "resume"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr == "weather-demo waits for no tool call: run the ask step first\n"
