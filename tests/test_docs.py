"""The README stays the one config reference: every schema key has a row, every example loads."""

from __future__ import annotations

import msgspec

from llmrelay.config.schema import ConfigFile, EndpointSection, ServerSection
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


def test_readme_quick_start_has_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/llmrelay serve" in quick_start
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert test_command in quick_start
    assert test_command in (ROOT / ".ci" / "run").read_text()  # CI runs the README's command verbatim
