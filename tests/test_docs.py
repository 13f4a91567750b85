"""The README stays the one config reference: every schema key has a row, every TOML block in it
loads, and its check-config commands for the examples work as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import msgspec
import trustme

from llmrelay.config import load_config_text
from llmrelay.config.schema import (
    ApiKeyEntry,
    ConfigFile,
    ConnectSection,
    EndpointSection,
    HealthCheckSection,
    Http2Section,
    ListenSection,
    ServerSection,
    TlsSection,
    UpstreamSection,
)
from relaytest import ROOT


def test_every_config_key_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "### `[server]`" in readme and "### `[endpoints.NAME]`" in readme
    for section in (ServerSection, EndpointSection):
        for field in msgspec.structs.fields(section):
            assert f"| `{field.name}` |" in readme, f"{section.__name__}.{field.name} is not in the README"
    top_level = {f.name for f in msgspec.structs.fields(ConfigFile)} - {"server", "endpoints"}
    for name in top_level:
        assert f"| `{name}` |" in readme


def test_every_listener_http2_and_connect_key_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    headings: dict[type[msgspec.Struct], str] = {
        ListenSection: "### `[[server.listen]]`",
        TlsSection: "### `[[server.listen]]`",
        Http2Section: "### `[server.http2]`",
        ConnectSection: "### `[server.connect]`",
    }
    for section, heading in headings.items():
        documented = _documented_keys(readme.split(heading + "\n", 1)[1].split("\n### ", 1)[0])
        for field in msgspec.structs.fields(section):
            assert field.name in documented, f"{section.__name__}.{field.name} is not in the README"


def test_readme_quick_start_has_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/llmrelay serve" in quick_start
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert test_command in quick_start
    assert test_command in (ROOT / ".ci" / "run").read_text()  # CI runs the README's command verbatim


def _section(readme: str, heading: str) -> str:
    return readme.split(heading + "\n", 1)[1].split("\n#", 1)[0]


def _documented_keys(section: str) -> set[str]:
    """The keys named in the first cell of a reference table's rows (a row may name several)."""
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_0-9]+)`", line.split(" | ", 1)[0]))
    return keys


def test_every_upstream_and_health_check_key_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    upstream_keys = _documented_keys(_section(readme, "### `[[endpoints.NAME.upstreams]]`"))
    check_keys = _documented_keys(_section(readme, "### `health_check`"))
    for section, documented in ((UpstreamSection, upstream_keys), (HealthCheckSection, check_keys)):
        for field in msgspec.structs.fields(section):
            assert field.name in documented, f"{section.__name__}.{field.name} is not in the README"
    api_keys_row = next(line for line in readme.splitlines() if line.startswith("| `api_keys` |"))
    for field in msgspec.structs.fields(ApiKeyEntry):
        assert f"{field.name} = " in api_keys_row, f"ApiKeyEntry.{field.name} is not in the README"
    assert "deprecated" in next(line for line in readme.splitlines() if line.startswith("| `failing_retry_interval` |"))


def test_every_toml_block_in_the_readme_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    # The TLS example names /etc/llmrelay files: the same names, here, with a real certificate.
    server = trustme.CA().issue_cert("localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "anthropic-oauth-token").write_text("sk-ant-oat-example\n")  # (the refreshed-key example reads it)
    for block in blocks:
        block = block.replace("/etc/llmrelay/", f"{tmp_path}/")
        environ = {name: f"value-of-{name}" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block)}
        assert load_config_text(block, "README.md", environ=environ).endpoints


def test_the_readmes_check_config_commands_for_the_examples_work() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if "llmrelay check-config examples/" in line]
    outputs: dict[str, str] = {}
    for line in lines:
        *assignments, program, command, path = shlex.split(line)
        assert (program, command) == (".venv/bin/llmrelay", "check-config")
        env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
        env.update(assignment.split("=", 1) for assignment in assignments)  # type: ignore[misc]
        result = subprocess.run(
            [sys.executable, "-m", "llmrelay", command, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert result.stdout.strip().endswith("ok")
        outputs[path] = result.stdout
    assert "upstream compat-eu" in outputs["examples/multi-upstream.toml"]
    assert "backend=redis (redis://redis:6379/0)" in outputs["examples/limits-redis.toml"]


def test_the_switching_sections_commands_work_as_written(tmp_path: Path) -> None:
    """The import and check-config commands of "Switching from another proxy", run as written (with
    the venv's llmrelay taken as this interpreter's), in a fresh directory beside the examples."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Switching from another proxy", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) for line in block.splitlines()]
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
    ran: list[str] = []
    for command in commands:
        words = shlex.split(command)
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
            continue
        if words[:1] != [".venv/bin/llmrelay"] or words[1] == "serve":
            continue  # (the install is the test's own; serve runs until stopped)
        argv = [sys.executable, "-m", "llmrelay", *[str(ROOT / w) if w.startswith("examples/") else w for w in words[1:]]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        ran.append(words[1])
    assert ran == ["import-config", "check-config"]
    assert (tmp_path / "llmrelay.toml").stat().st_mode & 0o777 == 0o600
