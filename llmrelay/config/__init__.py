"""Configuration: the TOML schema, its validation, secret sources and the resolved runtime config."""

from llmrelay.config.errors import ConfigError
from llmrelay.config.load import find_config_path, load_config, load_config_text
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint

__all__ = [
    "ConfigError",
    "RelayConfig",
    "ResolvedEndpoint",
    "find_config_path",
    "load_config",
    "load_config_text",
]
