"""The one exception type of the config layer: every problem found, each naming its key path."""

from __future__ import annotations


class ConfigError(Exception):
    """Raised when a config cannot be used; `errors` holds one `key.path: problem` line each."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: {len(self.errors)} error(s):\n" + "\n".join(self.errors))
