"""Relay keys gathered from every `auth_keys` list of a config (`RelayKeyBook`): a key's name holds
for the whole config (an unnamed mention of a named key's value is that name too), which is what makes
`auth_key_names`, the access log's relay key and the limit rules' `relay_key` matches mean one thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from llmrelay.config.decode import printable
from llmrelay.config.schema import RelayKey, RelayKeyEntry
from llmrelay.config.secrets import SecretError, resolve_secret
from llmrelay.observe.requestinfo import relay_key_label


RELAY_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~@+-]{0,63}")


class RelayKeyBook:
    """Every relay key of the config, resolved once, with the name it goes by.

    A name belongs to one key value and a value to one name (the same `{ name, key }` may appear in
    several `auth_keys` lists); a name is never a key's value (names are logged, values never are),
    nor the label of an unnamed key (two keys would be shown alike). An unnamed key goes by its label.
    """

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self._environ = environ
        self._name_of: dict[str, str] = {}  # value -> name
        self._named: dict[str, tuple[str, str]] = {}  # name -> (value, key path of its first entry)
        self._values: set[str] = set()
        self._entries: list[tuple[str, str]] = []  # (name, key path) of every named entry, in order

    def resolve(self, entries: list[RelayKey], path: str, errors: list[str]) -> list[str]:
        """The values of `entries` (an `auth_keys` list at `path`), in order."""
        values: list[str] = []
        for index, entry in enumerate(entries):
            where = f"{path}[{index}]"
            source = entry if isinstance(entry, str) else entry.key
            try:
                value = resolve_secret(source, self._environ)
            except SecretError as exc:
                errors.append(f"{where}{'' if isinstance(entry, str) else '.key'}: {exc}")
                continue
            values.append(value)
            self._values.add(value)
            if isinstance(entry, RelayKeyEntry):
                self._name(entry, value, where, errors)
        return values

    def _name(self, entry: RelayKeyEntry, value: str, where: str, errors: list[str]) -> None:
        name = entry.name
        if not RELAY_KEY_NAME.fullmatch(name):
            errors.append(
                f"{where}.name: invalid relay key name {printable(name)!r} (letters, digits, '_', '.', '~', '@', '+', "
                "'-'; at most 64)"
            )
            return
        self._entries.append((name, where))
        known = self._named.get(name)
        if known is not None and known[0] != value:
            errors.append(f"{where}.name: {name!r} already names another key ({known[1]})")
            return
        other = self._name_of.get(value)
        if other is not None and other != name:
            errors.append(f"{where}.name: this key is already named {other!r} ({self._named[other][1]})")
            return
        self._named.setdefault(name, (value, where))
        self._name_of[value] = name

    def check(self, errors: list[str]) -> None:
        """The checks that need every key: a name that is a key value, or an unnamed key's label."""
        labels = {relay_key_label(value) for value in self._values if value not in self._name_of}
        for name, where in self._entries:
            if name in self._values:
                errors.append(f"{where}.name: a relay key's name must not be a key value (names are logged)")
            elif name in labels:
                errors.append(f"{where}.name: {name!r} is the label of an unnamed key; choose another name")

    def name(self, value: str) -> str:
        """What logs, usage and limits call the key `value`: its name, else its label."""
        return self._name_of.get(value) or relay_key_label(value)

    def name_matched(self, entry: str) -> str | None:
        """The name of the key a rule's `relay_key` entry means: a key (a literal, `${NAME}` or
        `$(command)`, resolved like `auth_keys`; SecretError when it cannot be) or a key's name.
        None: neither, so the rule would never match it."""
        value = resolve_secret(entry, self._environ)
        if value in self._values:
            return self.name(value)
        if value == entry and entry in self._named:
            return entry
        return None
