"""The config file: found by precedence, errors name the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from copilotd.config import ConfigError, load_config
from tests.support.daemon_process import DaemonProcess


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COPILOTD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = load_config()
    assert config.path is None and config.section("retention") == {}


def test_file_is_read_by_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    default = tmp_path / "copilotd" / "config.toml"
    default.parent.mkdir()
    default.write_text("[retention]\nmax_sessions = 5\n")
    assert load_config().section("retention") == {"max_sessions": 5}
    other = tmp_path / "other.toml"
    other.write_text("[retention]\nmax_sessions = 7\n")
    monkeypatch.setenv("COPILOTD_CONFIG", str(other))
    assert load_config().section("retention") == {"max_sessions": 7}
    assert load_config(default).section("retention") == {"max_sessions": 5}


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[retention\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    not_a_table = tmp_path / "scalar.toml"
    not_a_table.write_text('retention = "forever"\n')
    with pytest.raises(ConfigError, match=r"\[retention\] must be a table"):
        load_config(not_a_table).section("retention")


def test_daemon_refuses_a_broken_config(short_tmp: Path) -> None:
    broken = short_tmp / "broken.toml"
    broken.write_text("this is not toml")
    command = [*DaemonProcess(short_tmp).command(), "--config", str(broken)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{broken}: not valid TOML" in result.stderr
