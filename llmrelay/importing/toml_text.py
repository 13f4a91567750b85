"""Writing an llmrelay config as TOML text, laid out the way the README's examples are.

Tables become `[section]` headers (`[[array]]` for lists of tables), short tables inside lists stay
inline (`api_keys = [{ key = "...", weight = 1.0 }]`), and a table may carry a comment line saying
where it came from. Hand-written rather than tomli-w for that layout and those comments; the tests
read every output back with tomllib, and a fuzz test checks that round trip on arbitrary values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INLINE_WIDTH = 100
_COMMENT_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class TomlTextError(ValueError):
    """A value TOML cannot hold (None inside a list, a key that is not a string, ...)."""


def key_text(key: str) -> str:
    if not isinstance(key, str):
        raise TomlTextError(f"a table key must be a string, got {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else string_text(key)


def string_text(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def value_text(value: Any) -> str:
    """A value on the right of `=`: scalars, lists, and tables written inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(ch in text for ch in ".en") else text + ".0"
    if isinstance(value, str):
        return string_text(value)
    if isinstance(value, Mapping):
        items = [f"{key_text(k)} = {value_text(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        if any(item is None for item in value):
            raise TomlTextError("a list cannot hold None")
        return "[" + ", ".join(value_text(item) for item in value) + "]"
    raise TomlTextError(f"TOML cannot hold a {type(value).__name__}")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _flat(table: Mapping[str, Any]) -> bool:
    return not any(_is_table(v) or _is_table_list(v) for v in table.values())


def _inline_list(items: list[Mapping[str, Any]], key: str) -> str | None:
    """`key = [{...}, {...}]` on one line, or one item a line; None when a header reads better."""
    if not all(_flat(item) for item in items):
        return None
    rendered = [value_text(item) for item in items]
    if any(len(text) > _INLINE_WIDTH for text in rendered):
        return None
    one_line = f"{key} = [" + ", ".join(rendered) + "]"
    if len(one_line) <= _INLINE_WIDTH:
        return one_line
    return f"{key} = [\n" + "".join(f"  {text},\n" for text in rendered) + "]"


def _comment_lines(text: str) -> list[str]:
    """`text` as comment lines: TOML comments cannot hold control characters (but tab), which names
    taken from a source file may carry, so those are written as `\\xNN`."""
    return [f"# {_COMMENT_UNSAFE.sub(_escaped_byte, line)}".rstrip() for line in text.splitlines()]


def _escaped_byte(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def document_text(data: Mapping[str, Any], comments: Mapping[str, str] | None = None, header: str = "") -> str:
    """The whole file. `comments` maps a table's dotted path ("endpoints.oai", "endpoints.oai.upstreams[0]") to a comment
    written above its header; `header` is written first, as comment lines."""
    lines: list[str] = _comment_lines(header)
    _table(lines, data, [], comments or {}, array=False, top=True)
    return "\n".join(lines).strip("\n") + "\n"


def _table(
    lines: list[str],
    table: Mapping[str, Any],
    path: list[str],
    comments: Mapping[str, str],
    *,
    array: bool,
    top: bool = False,
    index: int = 0,
) -> None:
    dotted = ".".join(path) + (f"[{index}]" if array else "")
    own: list[str] = []  # this table's own `key = value` lines
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if value is None:
            continue
        if _is_table(value):
            nested.append((key, value))
        elif _is_table_list(value):
            child = ".".join([*path, key])
            commented = any(f"{child}[{position}]" in comments for position in range(len(value)))
            # A comment is written above a header, so a list with one keeps its `[[...]]` tables.
            inline = None if commented else _inline_list(list(value), key_text(key))
            if inline is None:
                nested.append((key, value))
            else:
                own.append(inline)
        else:
            own.append(f"{key_text(key)} = {value_text(value)}")
    # A table holding only tables needs no header of its own (`[endpoints]` above `[endpoints.a]`).
    implicit = not own and bool(nested) and not array and dotted not in comments
    if not top and not implicit:
        if lines:
            lines.append("")
        if dotted in comments:
            lines.extend(_comment_lines(comments[dotted]))
        header = ".".join(key_text(part) for part in path)
        lines.append(f"[[{header}]]" if array else f"[{header}]")
    lines.extend(own)
    for key, value in nested:
        if _is_table(value):
            _table(lines, value, [*path, key], comments, array=False)
        else:
            for index, item in enumerate(value):
                _table(lines, item, [*path, key], comments, array=True, index=index)
