"""Helpers for the import-config tests: the example source configs, and the command run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from relaytest import EXAMPLES

SOURCES = EXAMPLES / "import"  # copies of the peer configs the import is written against


def run_import(source: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`llmrelay import-config SOURCE ARGS...` in a subprocess; stdout is the config, stderr the report."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", "import-config", str(source), *args],
        capture_output=True, text=True, timeout=60, env=full_env,
    )


def imported(source: Path, *args: str) -> tuple[str, dict[str, Any], str, int]:
    """(config text, the text parsed by tomllib, report, exit status) of an import."""
    result = run_import(source, *args)
    assert result.returncode in (0, 1), result.stderr
    return result.stdout, tomllib.loads(result.stdout), result.stderr, result.returncode


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmrelay", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, env=full_env,
    )


def rewritten_source(source: Path, destination: Path, replacements: dict[str, str]) -> Path:
    """A copy of `source` with each key of `replacements` replaced by its value (hosts and ports of
    providers pointed at mocks), written to `destination`."""
    text = source.read_text("utf-8")
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in {source.name}"
        text = text.replace(old, new)
    destination.write_text(text, "utf-8")
    return destination


def write_source(folder: Path, text: str, name: str) -> Path:
    """`text` written to `folder / name` (the suffix tells YAML from TOML)."""
    path = folder / name
    path.write_text(text, "utf-8")
    return path


def leaf_paths(data: Any, path: str = "") -> list[str]:
    """The paths a report names: every scalar, a list of scalars whole, a list of tables by index."""
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in leaf_paths(value, f"{path}.{key}" if path else str(key))]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return [leaf for index, item in enumerate(data) for leaf in leaf_paths(item, f"{path}[{index}]")]
    return [path]
