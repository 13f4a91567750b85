"""Decode raw TOML data into the schema's Structs, reporting every error at once.

msgspec stops at the first error of a document. Operators fixing a config in a deploy pipeline want
the whole list, so this walks the schema field by field: nested Structs, dicts of Structs and lists
of Structs are descended into, every other field is converted on its own, and each failure becomes
one `key.path: problem` line.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

_AT_PATH = re.compile(r" - at `\$(?P<rest>[^`]*)`$")


def printable(text: str) -> str:
    """A key or value as it may appear in a one-line error message."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _join(path: str, key: str) -> str:
    key = printable(key)
    return f"{path}.{key}" if path else key


def _describe(error: Exception, path: str) -> str:
    text = str(error)
    match = _AT_PATH.search(text)
    if match:
        text = text[: match.start()]
        path = path + match.group("rest").replace("[", "[").replace("$", "")
    if text[:1].isupper():
        text = text[0].lower() + text[1:]
    return f"{path}: {text}"


def _allowed_values(tp: Any) -> tuple[Any, ...] | None:
    """The values of a Literal type (also inside `Literal[...] | None` or Annotated), else None."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _allowed_values(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            values = _allowed_values(arg)
            if values is not None:
                return values
    return None


def _enum_problem(tp: Any, value: Any) -> str | None:
    """`'azure' is not one of openai, anthropic, ...` for a string outside a Literal's values."""
    values = _allowed_values(tp)
    if values is None or not isinstance(value, str) or value in values:
        return None
    return f"{printable(value)!r} is not one of {', '.join(str(v) for v in values)}"


def _unknown_key(key: str, known: list[str]) -> str:
    """`unknown key` with the closest valid key, when one is close enough to be a typo."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = [name for name in known if name.lower() == key.lower().replace("-", "_")]
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _holds_struct(tp: Any) -> bool:
    """A Struct, or a union with a Struct among its members."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_struct_type(arg) for arg in typing.get_args(tp))
    return _struct_type(tp) is not None


def _union_member(tp: Any, value: Any) -> Any:
    """The member of a union (`bool | Section | None`, `list[Entry] | None`) that a table or an
    array would be decoded as, so that its own keys are checked one by one; else `tp` itself."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(value, dict) and _struct_type(arg):
            return arg
        if isinstance(value, list) and typing.get_origin(arg) is list:
            return arg
    return tp


def _check_value(tp: Any, value: Any, path: str, errors: list[str]) -> None:
    tp = _union_member(tp, value)
    struct = _struct_type(tp)
    if struct is not None:
        check_struct(struct, value, path, errors)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict and len(args) == 2 and isinstance(value, dict):  # each value named by its key
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append(f"{path}: keys must be strings")
                continue
            _check_value(args[1], item, _join(path, key), errors)
        return
    if origin is list and args and _holds_struct(args[0]) and isinstance(value, list):
        for index, item in enumerate(value):  # (`auth_keys`: strings or `{ name, key }` tables)
            _check_value(args[0], item, f"{path}[{index}]", errors)
        return
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        enum_problem = _enum_problem(tp, value)
        errors.append(f"{path}: {enum_problem}" if enum_problem else _describe(exc, path))


def check_struct(cls: type[msgspec.Struct], data: Any, path: str, errors: list[str]) -> None:
    """Append to `errors` every problem of `data` as an instance of `cls`."""
    where = path or "the file"
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a table, got {type(data).__name__}")
        return
    before = len(errors)
    fields = {field.name: field for field in msgspec.structs.fields(cls)}
    for key in data:
        if key not in fields:
            errors.append(f"{_join(path, str(key))}: {_unknown_key(str(key), sorted(fields))}")
    for name, field in fields.items():
        if name not in data:
            if field.required:
                errors.append(f"{_join(path, name)}: required key is missing")
            continue
        _check_value(field.type, data[name], _join(path, name), errors)
    if len(errors) == before and hasattr(cls, "__post_init__"):  # its cross-field checks, at its own path
        try:
            msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            errors.append(f"{where}: {_describe(exc, '').split(': ', 1)[-1]}")


def decode(cls: type[T], data: Any, errors: list[str]) -> T | None:
    """Check `data` against `cls` collecting every error; build the Struct when there are none."""
    before = len(errors)
    check_struct(cls, data, "", errors)
    if len(errors) > before:
        return None
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:  # cross-field checks in __post_init__
        errors.append(_describe(exc, ""))
        return None
