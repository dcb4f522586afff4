"""``copilotd serve`` builds one typed config: every table and key checked before it starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from copilot_client import CopilotClient
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess

OFFLINE_PROVIDER = '[providers.house]\ntype = "offline"\nmodels = ["m"]\n'


def refusal(root: Path, text: str) -> str:
    """What ``copilotd serve --config FILE`` with ``text`` in FILE says as it exits 1."""
    config = root / "config.toml"
    config.write_text(text)
    command = [*DaemonProcess(root).command(), "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    # One line a person can act on, never a traceback.
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"copilotd: cannot start: {config}: "), result.stderr
    return result.stderr.removeprefix(f"copilotd: cannot start: {config}: ").rstrip("\n")


def test_a_misspelt_table_is_refused_with_the_known_ones(short_tmp: Path) -> None:
    assert refusal(short_tmp, '[retenton]\nmax_age = "30d"\n') == (
        "unknown table 'retenton' (did you mean 'retention'?); "
        "the known ones: access, models, providers, retention, store, tools"
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            '[store]\nmax_sise = "1GiB"\n',
            "[store]: unknown key 'max_sise' (did you mean 'max_size'?); "
            "the known ones: backend, dsn, dsn_env, lease_seconds, max_size",
        ),
        (
            '[access]\nlisten = "127.0.0.1:0"\ntoken = "secret-secret-secret"\n',
            "[access]: unknown key 'token' (did you mean 'token_file'?); "
            "the known ones: listen, tls_cert, tls_key, token_file",
        ),
        (
            "[retention]\nmax_session = 5\n",
            "[retention]: unknown key 'max_session' (did you mean 'max_sessions'?); "
            "the known ones: max_age, max_sessions, sweep_interval",
        ),
        (
            '[models]\ndefault = "m"\nfallback = "house"\n' + OFFLINE_PROVIDER,
            "[models]: unknown key 'fallback' (did you mean 'fallback_provider'?); "
            "the known ones: default, fallback_provider, session_secret_missing",
        ),
        (
            OFFLINE_PROVIDER + "context_windw = 8000\n",
            "[providers.house]: unknown key 'context_windw' (did you mean 'context_window'?)",
        ),
        (
            '[providers.house]\ntype = "offline"\nmodels = { m = { wire_modle = "w" } }\n',
            "[providers.house] model 'm': unknown key 'wire_modle' (did you mean "
            "'wire_model'?); the known ones: context_window, max_output_tokens, "
            "max_prompt_tokens, wire_model",
        ),
    ],
)
def test_an_unknown_key_is_refused_in_every_table(
    short_tmp: Path, text: str, complaint: str
) -> None:
    assert refusal(short_tmp, text).startswith(complaint)


def test_an_unknown_store_backend_is_refused_not_served_on_lmdb(short_tmp: Path) -> None:
    assert refusal(short_tmp, '[store]\nbackend = "mysql"\n') == (
        "[store] backend = 'mysql' is not a backend copilotd can serve from; "
        "the known ones: lmdb, postgresql"
    )
    assert not (short_tmp / "data" / "store").exists()  # refused before anything was opened


async def test_a_full_config_is_served(short_tmp: Path) -> None:
    token_file = short_tmp / "token"
    token_file.write_text("t" * 24 + "\n")
    token_file.chmod(0o600)
    config = short_tmp / "config.toml"
    config.write_text(
        f"""
[store]
backend = "lmdb"
max_size = "256MiB"

[access]
listen = "127.0.0.1:0"
token_file = "{token_file}"

[models]
default = "house-model"

[providers.house]
type = "offline"
models = {{ "house-model" = {{ wire_model = "house-wire" }} }}

[retention]
max_age = "30d"
sweep_interval = "2h"
"""
    )
    daemon = DaemonProcess(short_tmp, ["--config", str(config)]).start()
    try:
        daemon.wait_for_output("listening on tcp 127.0.0.1:")
        status = json.loads(ok(copilotd(daemon, "status", "--json")))
        assert status["retention"] == "delete sessions inactive for more than 30d, swept every 2h"
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session()  # no model: [models] default
            answer = await session.send_and_wait("Which model are you?")
        # The offline provider names the wire model it was asked for.
        assert answer is not None and "'house-wire' included" in (answer.data.content or "")
        assert (daemon.data_dir / "store" / "data.mdb").exists()
    finally:
        assert daemon.terminate() == 0
