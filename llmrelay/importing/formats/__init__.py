"""One converter per source format: `convert(data, report) -> Converted`.

A converter reads the parsed source, returns the llmrelay config as plain TOML-ready data (dicts,
lists, strings, numbers; None values are left out), and records every source key in the report:
`report.moved(source, destination)` when it has an equivalent, `report.dropped(source, reason,
changes_behaviour=...)` when it has none. A key the converter does not know is dropped with
changes_behaviour=True: an import never loses a setting without saying so.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import msgspec

from llmrelay.importing.report import Report


class Converted(msgspec.Struct):
    data: dict[str, Any]
    comments: dict[str, str] = {}  # a table's dotted path -> the comment written above it


Converter = Callable[[dict[str, Any], Report], Converted]

_MODULES = {
    "openproxy": "openproxy",
    "llm-proxy-go": "llm_proxy_go",
    "actix-toml": "actix_toml",
    "llmrelay": "llmrelay_shorthand",
}


def converter(format_name: str) -> Converter:
    module = importlib.import_module(f"llmrelay.importing.formats.{_MODULES[format_name]}")
    convert: Converter = module.convert
    return convert


_NOT_NAME = re.compile(r"[^A-Za-z0-9_.~-]+")


def endpoint_name(text: str, taken: set[str] | dict[str, Any]) -> str:
    """A valid llmrelay endpoint name made from `text` ("oai.relay.test/tenant-b" -> "oai.relay.test_tenant-b"),
    not among `taken` (a suffix "-2", "-3"... is added) and not the reserved "health"."""
    base = _NOT_NAME.sub("_", text).strip("_.~-") or "endpoint"
    if not base[0].isalnum():
        base = "e" + base
    name, counter = base, 1
    while name in taken or name == "health":
        counter += 1
        name = f"{base}-{counter}"
    return name
