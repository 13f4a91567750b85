"""`llmrelay import-config` on the actix llm-proxy's TOML: routes as endpoints with `paths`, the llm's
base_url and token_env, streaming switches as a processor, an `openai_chat` processor as `rewrite_with`;
the report of every key; wrong-format input; then a relay started on the imported example, pointed at
mocks: `/v1/chat/completions` rewritten by the rewrite model first and sent with the token from the
environment, `/v1/messages` refused unless streamed."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import pytest

from importtest import SOURCES, check_config, imported, rewritten_source, run_import, write_source
from llmrelay.importing.sources import detect_format, parse_source
from mock_providers import MockProvider

write = functools.partial(write_source, name="actix.toml")  # (a source file in tmp_path)

pytestmark = pytest.mark.timeout(60)

EXAMPLE = SOURCES / "actix-llm-proxy.toml"
PROMPT = "Rewrite the user's question so that it is precise and self-contained."
TOKENS = {"OPENAI_API_KEY": "sk-openai-from-env-51c2", "ANTHROPIC_API_KEY": "sk-ant-from-env-7d90"}



LLMS = """
[llm.gpt]
provider = "openai"
type = "chat"
base_url = "https://api.openai.com/v1"
token_env = "OPENAI_API_KEY"
supports_streaming = true
"""


def test_the_example_is_told_apart_as_actix_toml() -> None:
    assert detect_format(*parse_source(EXAMPLE)) == "actix-toml"


def test_each_route_is_an_endpoint_with_its_path_its_llm_and_its_processors() -> None:
    text, config, report, status = imported(EXAMPLE)
    assert status == 0, report
    chat, claude = config["endpoints"]["openai_chat"], config["endpoints"]["claude"]
    assert chat["paths"] == ["/v1/chat/completions"] and claude["paths"] == ["/v1/messages"]
    assert (chat["target_base"], chat["provider"], chat["token_env"]) == ("https://api.openai.com/v1", "openai", "OPENAI_API_KEY")
    assert (claude["target_base"], claude["provider"], claude["token_env"]) == ("https://api.anthropic.com", "anthropic", "ANTHROPIC_API_KEY")
    assert chat["processors"] == [{"rewrite_with": {"endpoint": "openai_chat", "model": "gpt-4o-mini", "prompt": PROMPT, "fail_open": False}}]
    assert claude["processors"] == [{"allow_non_streaming": False}]
    assert config["server"] == {
        "host": "127.0.0.1", "port": 3000,
        "cors": {"allow_origins": ["https://app.relay.test"], "allow_methods": ["GET", "POST"], "allow_headers": ["authorization", "content-type"], "max_age": 3600},
    }
    assert "rewrite through endpoint 'openai_chat'" in report
    assert "OPENAI_API_KEY" in text and "${" not in text  # the variable's name, never its value


def test_every_key_of_the_example_is_in_the_report() -> None:
    _, _, report, _ = imported(EXAMPLE)
    source, _ = parse_source(EXAMPLE)
    paths = [f"server.{key}" for key in source["server"]]
    paths += [f"llm.{name}.{key}" for name, llm in source["llm"].items() for key in llm]
    paths += [f"processor.enhance_query.{key}" for key in ("type", "config_value")] + ["processor.enhance_query.additional_config.system_prompt"]
    paths += [f"route[{index}].{key}" for index, route in enumerate(source["route"]) for key in route if not (key == "processors" and not route[key])]
    for path in paths:
        assert f"  {path} ->" in report or f"  {path}:" in report or f"  {path}[0] ->" in report, path


def test_streaming_switches_shadowed_routes_and_processors_without_an_equivalent(tmp_path: Path) -> None:
    source = write(tmp_path, LLMS + """
[llm.embed]
provider = "openai"
type = "embedding"
base_url = "https://api.openai.com/v1"
token_env = "OPENAI_API_KEY"
supports_streaming = false

[llm.spare]
provider = "openai"
type = "chat"
base_url = "https://spare.test/v1"
token_env = "SPARE"
supports_streaming = true

[processor.log_request]
type = "logger"
config_value = "INFO"

[processor.translate]
type = "deepl"
config_value = "de"

[processor.unused]
type = "logger"
config_value = "DEBUG"

[[route]]
path_prefix = "/v1/embeddings"
target_llm = "embed"
processors = ["log_request", "translate"]
allow_streaming = true
allow_non_streaming = true

[[route]]
path_prefix = "/v1/embeddings/batch"
target_llm = "gpt"
processors = []

[[route]]
path_prefix = "/v1/other"
target_llm = "nowhere"
processors = []

[server]
host = "0.0.0.0"
port = 3000
log_level = "WARN"
request_timeout_secs = 120
cors_allowed_origins = []
tls = true
""")
    _, config, report, status = imported(source)
    assert status == 1
    endpoints = config["endpoints"]
    assert list(endpoints) == ["embed"]  # the shadowed route and the one to no llm are not served
    assert endpoints["embed"]["processors"] == [{"allow_streaming": False}]  # supports_streaming = false
    assert endpoints["embed"]["first_byte_timeout"] == 120 and endpoints["embed"]["public"] is True
    assert config["server"]["log_level"] == "warning" and "cors" not in config["server"]
    unchanged, changed = report.split("CHANGES BEHAVIOUR:", 1)
    assert "  route[1].path_prefix: never reached in actix: route[0] (/v1/embeddings) matches first" in unchanged
    assert "  processor.log_request: logs each request" in unchanged
    assert "  processor.unused.type: no route uses this processor" in unchanged
    assert "  llm.spare.base_url: no route sends to this llm" in unchanged
    assert "  processor.translate: a processor of type 'deepl'" in changed
    assert "  route[2].target_llm: target_llm 'nowhere'" in changed
    assert "  server.tls: not a key this format is known to have" in changed
    assert "(public = true)" in report


def test_a_rewrite_with_no_route_to_its_llm_gets_an_endpoint_of_its_own(tmp_path: Path) -> None:
    source = write(tmp_path, LLMS + """
[llm.claude]
provider = "anthropic"
type = "chat"
base_url = "https://api.anthropic.com"
token_env = "ANTHROPIC_API_KEY"
supports_streaming = true

[processor.enhance]
type = "openai_chat"
config_value = "gpt-4o-mini"
additional_config = { system_prompt = "Be precise.", temperature = 0.2 }

[[route]]
path_prefix = "/v1/messages"
target_llm = "claude"
processors = ["enhance"]
allow_streaming = false
allow_non_streaming = true
""")
    _, config, report, status = imported(source)
    assert status == 1  # additional_config.temperature has nowhere to go
    assert config["endpoints"]["gpt"] == {"target_base": "https://api.openai.com/v1", "provider": "openai", "token_env": "OPENAI_API_KEY"}
    assert config["endpoints"]["claude"]["processors"] == [
        {"allow_streaming": False},
        {"rewrite_with": {"endpoint": "gpt", "model": "gpt-4o-mini", "prompt": "Be precise.", "fail_open": False}},
    ]
    assert "made for llm.gpt (no route targets it)" in report
    assert "  processor.enhance.additional_config.temperature:" in report.split("CHANGES BEHAVIOUR:", 1)[1]


@pytest.mark.parametrize(("text", "named"), [
    ('route = "/v1"\n[llm.a]\nprovider = "openai"\n', "`route`"),
    ("llm = 5\n", "`llm`"),
    ('[endpoints.a]\ntarget_base = "https://x.test"\n', "`llm`, `route`"),
])
def test_a_file_of_another_format_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    result = run_import(write(tmp_path, text), "--format", "actix-toml")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "not a actix llm-proxy TOML file" in result.stderr
    assert result.stdout == ""


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def openai_mock() -> Any:
    with MockProvider() as mock:
        yield mock


@pytest.fixture
def anthropic_mock() -> Any:
    with MockProvider() as mock:
        yield mock


def test_the_imported_relay_routes_rewrites_and_gates_like_actix(tmp_path: Path, openai_mock: MockProvider, anthropic_mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    source = rewritten_source(EXAMPLE, tmp_path / "actix.toml", {
        '"https://api.openai.com/v1"': f'"{openai_mock.base_url}/v1"',
        '"https://api.anthropic.com"': f'"{anthropic_mock.base_url}"',
    })
    text, _, report, status = imported(source)
    assert status == 0, report
    config = tmp_path / "imported.toml"
    config.write_text(text, "utf-8")
    checked = check_config(config, env=TOKENS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert check_config(config).returncode == 1  # the tokens come from the environment
    relay = start_relay(text, env=TOKENS)
    question = {"model": "gpt-4o", "messages": [{"role": "user", "content": "whats the weather"}]}
    with httpx.Client(timeout=10) as client:
        answer = client.post(relay.url("/v1/chat/completions"), json=question, headers={"authorization": "Bearer client-key"})
        refused = client.post(relay.url("/v1/messages"), json={**question, "max_tokens": 8})
        refused_count = anthropic_mock.count()
        streamed = client.post(relay.url("/v1/messages"), json={**question, "max_tokens": 8, "stream": True})
    assert answer.status_code == 200, answer.text
    rewrite, forwarded = openai_mock.requests
    assert rewrite.route_path == forwarded.route_path == "/v1/chat/completions"
    assert rewrite.json()["model"] == "gpt-4o-mini"
    assert PROMPT in str(rewrite.json()["messages"][0])
    assert forwarded.json()["messages"][-1]["content"] == "Hello from mock openai"  # the rewritten question
    assert rewrite.key == forwarded.key == TOKENS["OPENAI_API_KEY"]
    assert refused.status_code == 400 and refused_count == 0
    assert streamed.status_code == 200 and "message_stop" in streamed.text
    assert [(r.route_path, r.key) for r in anthropic_mock.requests] == [("/v1/messages", TOKENS["ANTHROPIC_API_KEY"])]
