"""Finding, reading and overriding the config file.

Order of precedence, lowest first: the embedded default (only when no file is found), the file
(`--config`, else `$CONFIG_PATH`, else `./llmrelay.toml`), the `PORT` environment variable, then the
command line's `--host`, `--port` and `--workers`.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from llmrelay.config.decode import decode
from llmrelay.config.errors import ConfigError
from llmrelay.config.resolve import resolve_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import ConfigFile, EndpointSection, LimitsSection, RelayKey, ServerSection
from llmrelay.config.secrets import is_command

DEFAULT_FILE_NAME = "llmrelay.toml"
EMBEDDED_SOURCE = "<embedded default>"


class Overrides(msgspec.Struct, frozen=True):
    host: str | None = None
    port: int | None = None
    workers: int | None = None


def find_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file to load, or None for the embedded default."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get("CONFIG_PATH"):
        return Path(env["CONFIG_PATH"])
    local = Path(DEFAULT_FILE_NAME)
    return local if local.is_file() else None


def embedded_default_text() -> str:
    return resources.files("llmrelay.config").joinpath("default.toml").read_text("utf-8")


def _uses_commands(data: Any) -> bool:
    if isinstance(data, str):
        return is_command(data)
    if isinstance(data, dict):
        return any(_uses_commands(value) for value in data.values())
    if isinstance(data, list):
        return any(_uses_commands(value) for value in data)
    return False


def _apply_overrides(
    data: dict[str, Any], overrides: Overrides, environ: Mapping[str, str], errors: list[str]
) -> None:
    server = data.setdefault("server", {})
    if not isinstance(server, dict):
        return
    workers = overrides.workers
    listen = server.get("listen")
    if isinstance(listen, list) and listen and isinstance(listen[0], dict):
        server = listen[0]  # with several listeners, --host, --port and $PORT move the first one
    port_env = environ.get("PORT")
    if port_env:
        try:
            server["port"] = int(port_env)
        except ValueError:
            errors.append(f"PORT: expected a port number, got {port_env!r}")
    if overrides.host is not None:
        server["host"] = overrides.host
    if overrides.port is not None:
        server["port"] = overrides.port
    if workers is not None:
        data["server"]["workers"] = workers


def _salvage(data: dict[str, Any]) -> ConfigFile:
    """The parts of a file with schema errors that are valid on their own.

    Cross-field and secret checks then run on these too, so one pass reports every error.
    """
    server = decode(ServerSection, data.get("server", {}), []) or ServerSection()
    endpoints: dict[str, EndpointSection] = {}
    raw_endpoints = data.get("endpoints", {})
    if isinstance(raw_endpoints, dict):
        for name, section in raw_endpoints.items():
            endpoint = decode(EndpointSection, section, [])
            if endpoint is not None and isinstance(name, str):
                endpoints[name] = endpoint
    try:
        auth_keys = msgspec.convert(data.get("auth_keys", []), list[RelayKey])
    except msgspec.ValidationError:
        auth_keys = []
    limits = decode(LimitsSection, data.get("limits", {}), []) or LimitsSection()
    return ConfigFile(server=server, endpoints=endpoints, auth_keys=auth_keys, limits=limits)


def load_config_text(
    text: str,
    source: str,
    overrides: Overrides = Overrides(),
    environ: Mapping[str, str] | None = None,
    allow_commands: bool = True,
) -> RelayConfig:
    """Parse, validate and resolve one config document; raise ConfigError with every problem."""
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax: {exc}"], source) from None
    errors: list[str] = []
    if not allow_commands and _uses_commands(data):
        errors.append(
            "$(command) key sources: refused because the config file is writable by other users"
        )
        raise ConfigError(errors, source)
    _apply_overrides(data, overrides, env, errors)
    file = decode(ConfigFile, data, errors) or _salvage(data)
    if data.get("endpoints") in (None, {}):  # judged on the file, not on what survived its errors
        errors.append("endpoints: at least one endpoint is required")
    config = resolve_config(file, source, errors, env)
    if errors or config is None:
        raise ConfigError(errors, source)
    return config


def load_config(
    path: Path | None,
    overrides: Overrides = Overrides(),
    environ: Mapping[str, str] | None = None,
) -> RelayConfig:
    """Load the file at `path`, or the embedded default when `path` is None."""
    if path is None:
        return load_config_text(embedded_default_text(), EMBEDDED_SOURCE, overrides, environ)
    try:
        text = path.read_text("utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {path}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read config file: {exc}"], str(path)) from None
    writable_by_others = bool(mode & stat.S_IWOTH)
    return load_config_text(text, str(path), overrides, environ, allow_commands=not writable_by_others)
