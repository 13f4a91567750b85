"""The limits examples and their documentation do what they say: examples/limits-redis.toml is the
config the compose file runs (its Redis is the compose service, its admin listener the Prometheus
target), the compose file has the services, files and settings it claims, Prometheus accepts its
config, the ACL docs/limits.md gives is enough for the Redis store, the check-config commands of
docs/limits.md pass, and the README's `llmrelay usage` line reads the usage a relay running the
Redis example kept in a real Redis."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_providers import MockProvider  # noqa: E402
from redis_server import RedisServer, redis_available  # noqa: E402
from relaytest import EXAMPLES, ROOT, free_port, wait_until  # noqa: E402
from test_config import ENV  # noqa: E402  (the environment every example is loaded with)

from llmrelay.config import load_config_text  # noqa: E402
from llmrelay.limits.types import CounterAsk, CounterCharge, CounterId, CounterReturn, Limits, Units, UsageRow  # noqa: E402
from supervisor.redis_store import RedisStore, parse_redis_url  # noqa: E402

if not redis_available():  # .ci/run installs it
    pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)

REDIS_EXAMPLE = EXAMPLES / "limits-redis.toml"
COMPOSE = EXAMPLES / "docker-compose.yml"
PROMETHEUS = EXAMPLES / "prometheus.yml"
LIMITS_DOC = ROOT / "docs" / "limits.md"


# -- a reader for the YAML the examples use ----------------------------------------------------------


def read_yaml(text: str) -> Any:
    """The document, by PyYAML when it is installed, else by `block_yaml` (the venv has no YAML
    parser: llmrelay itself never reads YAML)."""
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        return block_yaml(text)
    return yaml.safe_load(text)


def block_yaml(text: str) -> Any:
    """Block-style YAML of maps, lists and scalars (plain, double-quoted, or a JSON flow list): the
    subset the example files are written in. Anything else is an error, not a guess."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        content = _without_comment(raw).rstrip()
        if content.strip():
            lines.append((len(content) - len(content.lstrip(" ")), content.strip()))
    value, end = _block(lines, 0, 0)
    assert end == len(lines), f"unexpected indentation at {lines[end][1]!r}"
    return value


def _without_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted and (index == 0 or line[index - 1] == " "):
            return line[:index]
    return line


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*:( |$)")


def _scalar(text: str) -> Any:
    if not text:
        return None
    if text[0] in '["':
        return json.loads(text)
    assert text[0] not in "{'&*!|>", f"not in the subset: {text!r}"
    return text


def _block(lines: list[tuple[int, str]], start: int, indent: int) -> tuple[Any, int]:
    if lines[start][1].startswith("- "):
        items: list[Any] = []
        index = start
        while index < len(lines) and lines[index][0] == indent and lines[index][1].startswith("- "):
            item = lines[index][1][2:].strip()
            if _KEY.match(item):  # "- key: value": a map whose first key sits after the dash
                lines[index] = (indent + 2, item)
                value, index = _block(lines, index, indent + 2)
                items.append(value)
            else:
                items.append(_scalar(item))
                index += 1
        return items, index
    mapping: dict[str, Any] = {}
    index = start
    while index < len(lines) and lines[index][0] == indent:
        key, colon, rest = lines[index][1].partition(":")
        assert colon and (not rest or rest.startswith(" ")), f"not a key: {lines[index][1]!r}"
        index += 1
        if rest.strip():
            mapping[key] = _scalar(rest.strip())
        elif index < len(lines) and (lines[index][0] > indent or (lines[index][0] == indent and lines[index][1].startswith("- "))):
            mapping[key], index = _block(lines, index, lines[index][0])
        else:
            mapping[key] = None
    return mapping, index


def test_the_yaml_subset_reader_reads_what_it_claims() -> None:
    text = 'a:\n  b: "x # y"  # note\n  c: [1, "two"]\n  d:\n    - ./f:/g:ro\n    - "8:8"\n  e:\nz: plain: text\nl:\n  - k: v\n    m:\n      - n\n  - w\n'
    assert block_yaml(text) == {
        "a": {"b": "x # y", "c": [1, "two"], "d": ["./f:/g:ro", "8:8"], "e": None}, "z": "plain: text", "l": [{"k": "v", "m": ["n"]}, "w"],
    }
    with pytest.raises(AssertionError):
        block_yaml("a: {b: 1}\n")


# -- the example files ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document = read_yaml(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def redis_example_config() -> Any:
    return load_config_text(REDIS_EXAMPLE.read_text(), str(REDIS_EXAMPLE), environ=ENV)


def test_the_redis_example_keeps_its_counters_in_the_compose_files_redis() -> None:
    config = redis_example_config()
    limits = config.limits
    assert limits.backend == "redis" and limits.on_backend_error == "allow" and limits.inject_stream_usage
    assert [rule.name for rule in limits.rules] == ["per-key", "acme-gpt-4o-day", "anthropic-total"]
    address = parse_redis_url(limits.redis_url)
    services = compose()["services"]
    assert address.host in services and services[address.host]["image"].startswith("redis:")
    assert address.port == 6379
    assert config.server.admin.host == "127.0.0.1"  # (loopback: no admin key, Prometheus shares the namespace)


def test_the_compose_file_builds_the_repository_and_mounts_the_examples() -> None:
    document = compose()
    services = document["services"]
    assert set(services) == {"llmrelay", "redis", "prometheus"}

    relay = services["llmrelay"]
    context = (COMPOSE.parent / relay["build"]["context"]).resolve()
    assert context == ROOT and (context / relay["build"]["dockerfile"]).is_file()
    environment = relay["environment"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in relay["volumes"])
    assert {source: target for source, target in mounts.items()} == {"./limits-redis.toml": environment["CONFIG_PATH"]}
    assert (COMPOSE.parent / "limits-redis.toml").resolve() == REDIS_EXAMPLE
    # Every variable the config names reaches the container, and compose refuses to start without it.
    named = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", "\n".join(l for l in REDIS_EXAMPLE.read_text().splitlines() if not l.lstrip().startswith("#"))))
    assert named and named <= set(environment)
    for name in named:
        assert environment[name].startswith(f"${{{name}:?"), name
    assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
    grace = relay["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > redis_example_config().server.drain_timeout
    published = [port.rsplit(":", 1)[-1] for port in relay["ports"]]
    assert published == [str(redis_example_config().listeners[0].port), "9090"]

    redis = services["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]  # (the usage sums outlive Redis)
    assert redis["volumes"] == ["redis-data:/data"] and redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "service:llmrelay"
    assert prometheus["volumes"][0] == "./prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert (COMPOSE.parent / "prometheus.yml").resolve() == PROMETHEUS
    assert set(document["volumes"]) == {"redis-data", "prometheus-data"}


def test_prometheus_accepts_its_config_and_scrapes_the_examples_admin_listener() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (apt-get install -y prometheus; .ci/run installs it)"
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = read_yaml(PROMETHEUS.read_text())["scrape_configs"]
    admin = redis_example_config().server.admin
    assert job["static_configs"] == [{"targets": [f"{admin.host}:{admin.port}"]}]


def test_the_check_config_commands_of_the_limits_doc_work() -> None:
    lines = [line for line in LIMITS_DOC.read_text().splitlines() if re.search(r"\bllmrelay check-config examples/", line)]
    assert lines
    for line in lines:
        *assignments, program, command, path = shlex.split(line)
        assert (program, command) == ("llmrelay", "check-config")
        env = {"PATH": "/usr/bin:/bin", **dict(assignment.split("=", 1) for assignment in assignments)}
        result = subprocess.run(
            [sys.executable, "-m", "llmrelay", command, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert result.stdout.strip().endswith("ok")


# -- the ACL of docs/limits.md ---------------------------------------------------------------------------


def documented_acl() -> list[str]:
    (line,) = [line.strip() for line in LIMITS_DOC.read_text().splitlines() if line.strip().startswith("ACL SETUSER llmrelay ")]
    words = line.split()[2:]  # the user's name, then its rules
    assert words[:3] == ["llmrelay", "on", ">PASSWORD"]
    return words[3:]


async def exercise(url: str) -> None:
    """Every call the store makes: grants and a refusal, a return, a charge, a touch, a drop, usage."""
    store = RedisStore(url, "host:1:abc")
    try:
        counter = CounterId("per-key", "v1", "alice")
        limits = Limits(requests_per_minute=2, tokens_per_day=100, concurrent_requests=1)
        need = Units(requests=1, input_tokens=3, output_tokens=4, concurrent=1)
        grants = await store.ask("host:1:abc:w1", [CounterAsk(counter, limits, need, need)] * 2)
        assert [grant.granted for grant in grants] == [need, Units()] and grants[1].retry_after > 0
        await store.give_back("host:1:abc:w1", [CounterReturn(counter, limits, Units(concurrent=1))])
        await store.charge([CounterCharge(counter, limits, 5, -2)])
        await store.touch(["host:1:abc:w1"])
        await store.drop_holder("host:1:abc:w1")
        await store.add([UsageRow("alice", "openai", "openai#0", "gpt-4o", requests=1, input_tokens=8, output_tokens=2)])
        assert await store.rows() == [UsageRow("alice", "openai", "openai#0", "gpt-4o", requests=1, input_tokens=8, output_tokens=2)]
    finally:
        await store.aclose()


@pytest.mark.parametrize("scripts", ["evalsha", "eval only"])
async def test_the_documented_acl_is_enough_for_the_redis_store(scripts: str) -> None:
    rules = documented_acl()
    if scripts == "eval only":  # the fallback the doc promises without EVALSHA and SCRIPT LOAD
        rules = [rule for rule in rules if rule not in ("+evalsha", "+script|load")]
        assert len(rules) == len(documented_acl()) - 2
    with RedisServer("--user", "llmrelay", "on", ">acl-pw-41", *rules) as redis:
        await exercise(f"redis://llmrelay:acl-pw-41@127.0.0.1:{redis.port}/0")


# -- the README's usage command against a relay running the Redis example ----------------------------------


def runnable_example(mock: MockProvider, redis: RedisServer, port: int, admin_port: int) -> str:
    """examples/limits-redis.toml with what only exists inside compose swapped for this machine's:
    the providers (a mock), Redis (a real one on a free port) and the ports."""
    text = REDIS_EXAMPLE.read_text()
    for old, new in (
        ('target_base = "https://api.openai.com/v1"', f'target_base = "{mock.base_url}/v1"'),
        ('target_base = "https://api.anthropic.com"', f'target_base = "{mock.base_url}"'),
        ('redis_url = "redis://redis:6379/0"', f'redis_url = "{redis.url}"'),
        ("port = 9811", f"port = {admin_port}"),
        ("port = 8811", f"port = {port}"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def test_the_readmes_usage_command_reads_what_the_redis_example_kept_in_redis(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Limits and usage\n", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in section.splitlines() if line.startswith(".venv/bin/llmrelay usage")]
    program, *arguments = shlex.split(line)
    assert program == ".venv/bin/llmrelay" and arguments == ["usage", "--by", "key"]

    env = {name: f"{name.lower()}-value-7f3a" for name in ("LLMRELAY_TEAM_KEY", "TENANT_B_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    with RedisServer() as redis:
        port, admin_port = free_port(), free_port()
        text = runnable_example(mock, redis, port, admin_port)
        relay = start_relay(text, env=env, workers=2, port=port)
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        for key in ("LLMRELAY_TEAM_KEY", "LLMRELAY_TEAM_KEY", "TENANT_B_KEY"):
            answer = httpx.post(relay.url("/openai/v1/chat/completions"), json=chat, headers={"authorization": f"Bearer {env[key]}"}, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-ratelimit-limit-requests"] == "600"  # the per-key rule's, on a success
        assert httpx.post(relay.url("/openai/v1/chat/completions"), json=chat, timeout=10).status_code == 401

        # The command as written, from the directory of the relay's ./llmrelay.toml.
        workdir = tmp_path / "operator"
        workdir.mkdir()
        (workdir / "llmrelay.toml").write_text(text)
        cli_env = {"PATH": "/usr/bin:/bin", **env}

        def usage() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "llmrelay", *arguments], cwd=workdir, env=cli_env, capture_output=True, text=True, timeout=30
            )

        def both_keys_counted() -> subprocess.CompletedProcess[str] | None:
            result = usage()
            rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:] if line.strip()}
            return result if rows.get("team") == "2" and rows.get("acme") == "1" else None

        result = wait_until(both_keys_counted, timeout=10, step=0.2)
        assert result, f"{usage().stdout}\n{usage().stderr}"
        assert result.returncode == 0 and "by key" in result.stdout.splitlines()[0]
        assert not any(value in result.stdout for value in env.values())  # names, never keys
        # Without the relay's environment, --admin names the listener instead of the config.
        named = subprocess.run(
            [sys.executable, "-m", "llmrelay", *arguments, "--admin", f"http://127.0.0.1:{admin_port}"],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
        )
        assert named.returncode == 0 and named.stdout.splitlines()[1:] == result.stdout.splitlines()[1:], named.stderr  # (line 0 says how long ago)

        # The sums and the counters are Redis's (the usage outlives this supervisor).
        assert int(redis.command("HLEN", "llmrelay:usage")) > 0
        counters = redis.command("KEYS", "llmrelay:limit:*").decode().split()
        assert "llmrelay:limit:{per-key:" in " ".join(counters)
        assert all(re.fullmatch(r"llmrelay:limit:\{[^{}]+\}", key) for key in counters)
