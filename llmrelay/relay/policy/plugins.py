"""Custom processors from installed packages: the `llmrelay.processors` entry point group.

A package registers a class under a name in its pyproject:

    [project.entry-points."llmrelay.processors"]
    tag_requests = "my_package:TagRequests"

and the config uses it as `plugin = "tag_requests"` with `options = { ... }`. The class:

    class TagRequests:
        needs_body = True               # optional (default True): False for a header-only processor
        def __init__(self, options: dict[str, Any]) -> None: ...   # ValueError: a config error
        def process(self, request: ProcessorRequest) -> None: ...  # mutate it, or raise Refused

It is instantiated when the config is loaded (so `check-config` reports an unknown name, a class that
fails to import, or options its constructor refuses) and once per endpoint in each worker.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any, Protocol

from llmrelay.relay.policy.request import ProcessorRequest

GROUP = "llmrelay.processors"


class Processor(Protocol):
    def process(self, request: ProcessorRequest) -> None: ...


class PluginError(ValueError):
    """A plugin that cannot be used: unknown, failing to import, or refusing its options."""


@functools.cache
def plugin_class(name: str) -> Any:
    """The class registered as `name` (cached per process: entry points are scanned once per name)."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=GROUP))
        listed = ", ".join(known) if known else "none is installed"
        raise PluginError(f"unknown plugin {name!r} (entry points of group {GROUP}: {listed})")
    entry = next(iter(found))
    try:
        return entry.load()
    except Exception as exc:
        raise PluginError(f"plugin {name!r} ({entry.value}) failed to load: {exc}") from None


def load_plugin(name: str, options: dict[str, Any]) -> Processor:
    cls = plugin_class(name)
    try:
        instance = cls(dict(options))
    except Exception as exc:
        raise PluginError(f"plugin {name!r} refused its options: {exc}") from None
    if not callable(getattr(instance, "process", None)):
        raise PluginError(f"plugin {name!r} ({cls!r}) has no process(request) method")
    return instance  # type: ignore[no-any-return]


def needs_body(processor: Processor) -> bool:
    return bool(getattr(processor, "needs_body", True))
