"""The [providers.*] and [models] tables: the documented configs work, mistakes are named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from copilotd.config import ConfigError, ConfigFile, load_config
from copilotd.providers import ProviderRegistry, ProviderSettings, load_provider_settings
from copilotd.redaction import REDACTOR
from tests.support.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
DOC_BLOCKS = [
    block
    for block in re.findall(
        r"```toml\n(.*?)```", (ROOT / "docs" / "configuration.md").read_text(), re.DOTALL
    )
    if "[providers." in block  # the provider examples, not e.g. [retention]
]
ENVIRON = {
    name: f"secret-value-of-{name}"
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VLLM_API_KEY")
}


def settings_of(
    text: str, tmp_path: Path, environ: dict[str, str] | None = None
) -> ProviderSettings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)  # as a config holding a key must be
    return load_provider_settings(load_config(path), environ or ENVIRON)


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_of(text, tmp_path)
    return str(caught.value)


def test_configuration_doc_has_the_configs_the_issue_asks_for() -> None:
    kinds = {re.search(r'type = "(\w+)"', block).group(1) for block in DOC_BLOCKS}  # type: ignore[union-attr]
    assert {"openai", "azure", "anthropic"} <= kinds
    text = "".join(DOC_BLOCKS)
    assert "localhost:11434" in text and "localhost:8000" in text  # Ollama, vLLM


def test_local_server_examples_send_the_max_tokens_those_servers_read(tmp_path: Path) -> None:
    """vLLM, llama.cpp and Ollama read max_tokens and ignore max_completion_tokens."""
    local = [block for block in DOC_BLOCKS if "http://localhost" in block]
    assert len(local) >= 2
    for block in local:
        for connection in settings_of(block, tmp_path).connections.values():
            assert connection.max_tokens_param == "max_tokens", block


@pytest.mark.parametrize("block", DOC_BLOCKS, ids=lambda b: b.split("]")[0].strip("["))
async def test_configuration_doc_configs_load_and_list_their_models(
    block: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(block)
    path.chmod(0o600)
    settings = load_provider_settings(load_config(path), ENVIRON)
    registry = ProviderRegistry(settings)
    try:
        await registry.warm_up()  # loads the SDKs and builds their clients
        assert "cannot be set up" not in caplog.text
        models = registry.list_models()
        assert models and models[0].is_default
        assert all(m.provider_type in ("openai", "azure", "anthropic") for m in models)
    finally:
        await registry.aclose()
    for connection in settings.connections.values():
        assert not connection.missing_secret
        if connection.api_key:
            assert REDACTOR.redact(connection.api_key) == "[redacted]"


def test_model_settings_and_defaults(tmp_path: Path) -> None:
    settings = load_provider_settings(
        ConfigFile(
            tables={
                "providers": {
                    "a": {
                        "type": "anthropic",
                        "api_key": "k" * 10,
                        "context_window": 100_000,
                        "models": {"m1": {}, "m2": {"wire_model": "w2", "max_output_tokens": 10}},
                    }
                }
            }
        ),
        {},
    )
    assert settings.default_model == "m1"
    m1, m2 = settings.models["m1"], settings.models["m2"]
    assert (m1.wire_model, m1.context_window, m1.max_output_tokens) == ("m1", 100_000, 4096)
    assert (m2.wire_model, m2.max_output_tokens) == ("w2", 10)
    assert settings.model("other") is None
    assert settings.connections["a"].base_url == "https://api.anthropic.com"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            '[providers.x]\ntype = "openai"\nmodels = ["m"]\ntimout = 5\n',
            "[providers.x]: unknown key 'timout' (did you mean 'timeout'?)",
        ),
        (
            '[providers.x]\ntype = "openai"\nmodels = { m = { wire_modle = "w" } }\n',
            "[providers.x] model 'm': unknown key 'wire_modle' (did you mean 'wire_model'?); "
            "the known ones: context_window, max_output_tokens, max_prompt_tokens, wire_model",
        ),
        ("[models]\ndefualt = 'm'\n", "[models]: unknown key 'defualt' (did you mean 'default'?)"),
        ('[providers.x]\ntype = "bedrock"\nmodels = ["m"]\n', "[providers.x]: type"),
        ('[providers.x]\ntype = "openai"\nmodels = ["m"]\ntimeout = -1\n', "timeout"),
        ('[providers.x]\ntype = "openai"\n', "list no models"),
        ('[providers.x]\ntype = "azure"\nmodels = ["m"]\n', "needs base_url"),
        ('[providers.x]\ntype = "openai"\nbase_url = "localhost"\nmodels = ["m"]\n', "http://"),
        (
            '[providers.x]\ntype = "openai"\napi_key = "a"\napi_key_env = "B"\nmodels = ["m"]\n',
            "not both",
        ),
        (
            '[providers.x]\ntype = "openai"\nmodels = ["m"]\n'
            '[providers.y]\ntype = "openai"\nmodels = ["m"]\n',
            "offered by both [providers.x] and [providers.y]",
        ),
        ('[models]\ndefault = "n"\n[providers.x]\ntype = "openai"\nmodels = ["m"]\n', "'n'"),
        ('[models]\nfallback_provider = "z"\n', "names no [providers.*] table"),
        ('[models]\nsession_secret_missing = "ignore"\n', "session_secret_missing"),
        (
            '[providers.x]\ntype = "openai"\nmodels = { m = { context_window = 100, '
            "max_output_tokens = 100 } }\n",
            "leaves no room for the prompt",
        ),
        ("[providers]\nx = 1\n", "[providers.x] must be a table"),
    ],
)
def test_mistakes_are_refused_with_their_place(text: str, complaint: str, tmp_path: Path) -> None:
    message = error_of(text, tmp_path)
    assert complaint in message
    assert str(tmp_path / "config.toml") in message


def test_unset_key_variable_is_reported_not_fatal(tmp_path: Path) -> None:
    text = '[providers.x]\ntype = "openai"\napi_key_env = "NOT_SET_ANYWHERE"\nmodels = ["m"]\n'
    connection = settings_of(text, tmp_path, {"OTHER": "1"}).connections["x"]
    assert connection.api_key is None
    assert "NOT_SET_ANYWHERE" in connection.missing_secret


def test_daemon_refuses_a_bad_provider_table(short_tmp: Path) -> None:
    config = short_tmp / "config.toml"
    config.write_text('[providers.x]\ntype = "openai"\nmodels = ["m"]\napi_kee = "typo"\n')
    command = [*DaemonProcess(short_tmp).command(), "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot start: {config}: [providers.x]: unknown key 'api_kee' (did you mean" in (
        result.stderr
    )
