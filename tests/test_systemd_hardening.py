"""The user unit's hardening holds in a user manager, checked as a user would.

In a ``systemd --user`` unit, settings that need a mount namespace
(``ProtectSystem=``, ``PrivateTmp=``, ``ReadWritePaths=`` …) apply only
inside a user namespace: systemd 254 and later imply ``PrivateUsers=yes``
for them, older releases silently skip them. So the unit sets it, and:

* ``systemd-analyze security --user`` (offline, on the unit that
  ``copilotd install-service`` writes) credits every setting the README
  claims;
* where a user manager runs, a probe started with the unit's own settings
  through ``systemd-run --user`` finds the file system read-only outside the
  data directory and ``/tmp`` private (skipped where none runs, e.g. in a
  container without systemd as PID 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from copilotd.cli.service import render_unit

# Settings that need a mount namespace (systemd.exec(5)); in a user unit each
# needs PrivateUsers=yes to take effect on systemd < 254.
MOUNT_NAMESPACE_SETTINGS = frozenset(
    {
        "BindPaths",
        "BindReadOnlyPaths",
        "InaccessiblePaths",
        "PrivateDevices",
        "PrivateTmp",
        "ProtectControlGroups",
        "ProtectHome",
        "ProtectKernelLogs",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "ProtectSystem",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "TemporaryFileSystem",
    }
)
# The sandbox the README promises; the probe runs under exactly these.
CLAIMED = ("NoNewPrivileges", "PrivateUsers", "ProtectSystem", "PrivateTmp", "ReadWritePaths")


def service_settings(data_dir: Path) -> dict[str, str]:
    """``[Service]`` of the unit install-service writes, key to value."""
    text = render_unit(
        "copilotd.service", command=[sys.executable, "-m", "copilotd"], data_dir=data_dir
    )
    settings: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_mount_sandboxing_comes_with_a_user_namespace(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "data")
    assert MOUNT_NAMESPACE_SETTINGS & settings.keys(), "the unit lost its sandboxing"
    assert settings.get("PrivateUsers") == "yes", (
        "ProtectSystem=/PrivateTmp=/ReadWritePaths= do nothing in a user unit on systemd < 254 "
        "without PrivateUsers=yes"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_systemd_analyze_security_credits_the_claimed_settings(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / "copilotd.service"
    unit.write_text(
        render_unit(
            "copilotd.service",
            command=[sys.executable, "-m", "copilotd"],
            data_dir=tmp_path / "data",
        )
    )
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "security", "--user", "--offline=yes", str(unit)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    for setting in ("NoNewPrivileges", "PrivateUsers", "ProtectSystem", "PrivateTmp"):
        assert any(line.startswith(f"✓ {setting}=") for line in lines), (setting, result.stdout)
    overall = next(line for line in lines if "Overall exposure level" in line)
    print(f"\nFIGURES systemd-analyze security --user: {overall.split(':', 1)[1].strip()}")


def user_manager_runs() -> bool:
    if shutil.which("systemd-run") is None or shutil.which("systemctl") is None:
        return False
    state = subprocess.run(
        ["systemctl", "--user", "is-system-running"], capture_output=True, text=True
    )
    return state.stdout.strip() in {"running", "degraded"}


PROBE = """
import os, sys
data_dir, home, marker = sys.argv[1:4]
def writable(folder):
    try:
        with open(os.path.join(folder, "copilotd-probe"), "w"):
            pass
    except OSError:
        return "read-only"
    os.unlink(os.path.join(folder, "copilotd-probe"))
    return "writable"
print("data", writable(data_dir))
print("home", writable(home))
print("usr", writable("/usr"))
print("tmp", "shared" if os.path.exists(marker) else "private")
"""


@pytest.mark.skipif(not user_manager_runs(), reason="no systemd user manager runs here")
def test_the_sandbox_applies_under_the_user_manager(tmp_path: Path) -> None:
    home = Path.home()
    data_dir = Path(tempfile.mkdtemp(prefix=".copilotd-probe-", dir=home))
    marker = Path(tempfile.mkstemp(prefix="copilotd-probe-", dir="/tmp")[1])
    try:
        settings = service_settings(data_dir)
        properties = [f"--property={key}={settings[key]}" for key in CLAIMED]
        result = subprocess.run(
            [
                "systemd-run",
                "--user",
                "--wait",
                "--pipe",
                "--quiet",
                *[p.replace("%h", str(home)) for p in properties],
                sys.executable,
                "-c",
                PROBE,
                str(data_dir),
                str(home),
                str(marker),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "data writable",
            "home read-only",
            "usr read-only",
            "tmp private",
        ]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        marker.unlink(missing_ok=True)
