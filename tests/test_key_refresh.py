"""Refreshed keys (`refresh_interval` beside a `$(command)` key), through real processes: a provider's 401
makes the supervisor re-run the command once (not again within 30 s), the new value reaches the
workers without a reload and the request is sent again with it; the period re-runs it too; a failing
command keeps the last value. No token ever reaches the log."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from mock_providers import MockProvider, Rule
from relaytest import endpoint_config, wait_until

from llmrelay.config.summary import summary
from llmrelay.config import ConfigError, load_config_text

RELAY_KEY = "relay-key-for-refresh-tests"
TOKENS = ["sk-ant-oat01-First-token-AAAA", "sk-ant-oat01-Second-token-BBBB", "sk-ant-oat01-Third-token-CCCC"]

# The command: print the token file, and count the runs (one line per run) beside it.
TOKEN_COMMAND = """\
import pathlib, sys
folder = pathlib.Path(sys.argv[1])
with open(folder / "runs", "a") as runs:
    runs.write("run\\n")
if (folder / "fail").exists():
    sys.exit("token service unavailable")
print((folder / "token").read_text().strip())
"""


def token_source(folder: Path, first: str) -> str:
    (folder / "token").write_text(first)
    (folder / "print_token.py").write_text(TOKEN_COMMAND)
    return f"$({sys.executable} {folder / 'print_token.py'} {folder})"


def runs(folder: Path) -> int:
    path = folder / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def ask_claude(relay_url: str) -> anthropic.types.Message:
    client = anthropic.Anthropic(base_url=relay_url, api_key=RELAY_KEY, max_retries=0)
    return client.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )


def test_a_401_reruns_the_command_once_and_the_request_succeeds_with_the_new_token(
    mock: MockProvider, start_relay, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    source = token_source(tmp_path, TOKENS[0])
    config = f'auth_keys = ["{RELAY_KEY}"]\n' + endpoint_config(
        "claude", mock, "anthropic", "", api_key=source, key_type="oauth", refresh_interval=3600
    )
    relay = start_relay(config, workers=2)
    assert runs(tmp_path) == 1  # (the load ran it; the workers were given its value)
    assert ask_claude(relay.url("/claude")).content
    assert mock.last().headers["authorization"] == f"Bearer {TOKENS[0]}"

    # The token expires at the provider, and the helper has written the next one.
    mock.rules.append(Rule(status=401, key=TOKENS[0]))
    (tmp_path / "token").write_text(TOKENS[1])
    seen_before = len(mock.requests)
    message = ask_claude(relay.url("/claude"))
    assert message.content
    attempts = mock.requests[seen_before:]
    assert [r.headers["authorization"] for r in attempts] == [f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}"]
    assert [v for n, v in attempts[-1].raw_headers if n.lower() == "anthropic-beta"] == [
        "prompt-caching-2024-07-31,oauth-2025-04-20"
    ]
    assert runs(tmp_path) == 2  # one re-run

    # Every worker has the new token now, without a reload: a burst spread over both uses it alone.
    seen_before = len(mock.requests)
    for _ in range(8):
        with httpx.Client() as fresh:  # (a new connection each time: both workers take some)
            answer = fresh.post(
                relay.url("/claude/v1/messages"),
                headers={"x-api-key": RELAY_KEY, "anthropic-version": "2023-06-01"},
                json={"model": "claude-3-5-haiku-latest", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
        assert answer.status_code == 200, answer.text
    assert {r.headers["authorization"] for r in mock.requests[seen_before:]} == {f"Bearer {TOKENS[1]}"}
    assert "reload ok" not in relay.logs()

    # Within 30 s of that run, another 401 does not run the command again: the client gets the 401.
    mock.rules.append(Rule(status=401, key=TOKENS[1]))
    (tmp_path / "token").write_text(TOKENS[2])
    with pytest.raises(anthropic.AuthenticationError):
        ask_claude(relay.url("/claude"))
    assert runs(tmp_path) == 2
    logs = relay.logs()
    assert "the provider answered 401; re-running its command" in logs
    assert "not again before 30 s" in logs
    assert not any(token in logs for token in TOKENS) and RELAY_KEY not in logs


def test_the_period_reruns_the_command_and_a_failure_keeps_the_last_value(
    mock: MockProvider, start_relay, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    source = token_source(tmp_path, TOKENS[0])
    config = f'auth_keys = ["{RELAY_KEY}"]\n' + endpoint_config(
        "claude", mock, "anthropic", "", api_keys=[{"key": source, "key_type": "oauth", "refresh_interval": 1}]
    )
    relay = start_relay(config)
    (tmp_path / "token").write_text(TOKENS[1])

    def the_mock_sees(token: str) -> bool:
        assert ask_claude(relay.url("/claude")).content
        return mock.last().headers["authorization"] == f"Bearer {token}"

    assert wait_until(lambda: the_mock_sees(TOKENS[1]), timeout=10, step=0.2)  # (no reload: the period did it)
    assert "command re-run: new value" in relay.logs() and "reload ok" not in relay.logs()

    (tmp_path / "fail").write_text("")
    before = runs(tmp_path)
    assert wait_until(lambda: runs(tmp_path) >= before + 2, timeout=10)
    assert ask_claude(relay.url("/claude")).content
    assert mock.last().headers["authorization"] == f"Bearer {TOKENS[1]}"  # the last good value
    logs = relay.logs()
    assert "re-running its command failed (command" in logs and "token service unavailable" in logs
    assert "keeping the last value" in logs
    assert not any(token in logs for token in TOKENS)
    assert relay.process.poll() is None


def test_a_shared_command_runs_once_for_every_key_written_with_it(
    mock: MockProvider, start_relay, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    source = token_source(tmp_path, TOKENS[0])
    upstream = {"target_base": mock.base_url, "provider": "anthropic", "api_key": source, "key_type": "oauth", "refresh_interval": 1}
    config = f'auth_keys = ["{RELAY_KEY}"]\n[endpoints.claude]\n'
    for name in ("one", "two"):
        config += "[[endpoints.claude.upstreams]]\n" + f'name = "{name}"\n'
        config += "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in upstream.items())
    relay = start_relay(config)
    start = runs(tmp_path)
    time.sleep(2.6)
    ran = runs(tmp_path) - start
    assert 1 <= ran <= 3, ran  # (once a second for both upstreams, not twice)
    assert relay.logs().count("refreshable keys: 1 command(s)") == 1


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ('api_key = "sk-literal"\nrefresh_interval = 60\n', "endpoints.c.refresh_interval: only a $(command) key can be refreshed"),
        ('token_env = "TOKEN"\nrefresh_interval = 60\n', "endpoints.c.refresh_interval: refreshes a $(command) api_key only"),
        ('api_keys = [{ key = "${TOKEN}", refresh_interval = 60 }]\n', "endpoints.c.api_keys[0].refresh_interval: only a $(command) key"),
        ('api_keys = [{ key = "$(echo x)" }]\nrefresh_interval = 60\n', "endpoints.c.refresh_interval: refreshes api_keys entries only"),
        ('api_key = "$(echo x)"\nrefresh_interval = 0.5\n', "endpoints.c.refresh_interval: expected `float` >= 1"),
    ],
)
def test_refresh_interval_belongs_beside_a_command_key(keys: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(f'[endpoints.c]\ntarget_base = "https://api.anthropic.com"\n{keys}', "t", environ={"TOKEN": "t"})
    assert any(line.startswith(error) for line in info.value.errors), info.value.errors


def test_a_refreshed_key_keeps_its_command_and_period() -> None:
    config = load_config_text(
        '[endpoints.c]\ntarget_base = "https://api.anthropic.com"\nkey_type = "oauth"\n'
        'api_key = " $(echo tok-1) "\nrefresh_interval = 120\n',
        "t",
    )
    key = config.endpoints[0].upstreams[0].api_keys[0]
    assert (key.key, key.refresh, key.command) == ("tok-1", 120.0, "$(echo tok-1)")
    assert "tok-1" not in repr(key)
    lines = summary(config)
    assert any(line.strip().startswith("upstream c#0") and "api_keys=1 (1 oauth, 1 refreshed every 120s)" in line for line in lines)
    assert not any("tok-1" in line for line in lines)
