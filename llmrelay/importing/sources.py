"""Reading a source config and telling which proxy wrote it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

FORMATS = ("openproxy", "llm-proxy-go", "actix-toml", "llmrelay")
YAML_MISSING = (
    "reading YAML needs PyYAML, which is not installed: pip install 'llmrelay[import]' (or pip install pyyaml)"
)


class ImportSourceError(Exception):
    """The source file cannot be read, parsed, or recognised; the message says which and why."""


def parse_source(path: Path) -> tuple[dict[str, Any], str]:
    """The file's data and its syntax ("yaml" or "toml"), told by its suffix, else by trying TOML first."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ImportSourceError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"{path}: cannot read: {exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _toml(text, path), "toml"
    if suffix in (".yml", ".yaml"):
        return _yaml(text, path), "yaml"
    try:
        return tomllib.loads(text), "toml"
    except tomllib.TOMLDecodeError:
        return _yaml(text, path), "yaml"


def _toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImportSourceError(f"{path}: TOML syntax: {exc}") from None


def _yaml(text: str, path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ImportSourceError(YAML_MISSING) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ImportSourceError(f"{path}: YAML syntax: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ImportSourceError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ImportSourceError(f"{path}: expected a mapping at the top, got a {type(data).__name__}")
    return data


def detect_format(data: dict[str, Any], syntax: str) -> str:
    """The format a parsed file is written in; ImportSourceError when nothing fits."""
    if syntax == "toml":
        if "llm" in data or "route" in data or "processor" in data:
            return "actix-toml"
        if "endpoints" in data or "server" in data:
            return "llmrelay"
    else:
        providers = data.get("providers")
        if isinstance(providers, list):
            return "openproxy"
        if isinstance(providers, dict) or "features" in data:
            return "llm-proxy-go"
    raise ImportSourceError(
        "cannot tell the format of this file; name it with --format (" + "|".join(FORMATS) + ")"
    )
