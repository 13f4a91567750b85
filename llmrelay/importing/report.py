"""What an import did with each source key: where it went, or why it had nowhere to go."""

from __future__ import annotations

import msgspec


class Moved(msgspec.Struct, frozen=True):
    source: str  # the key's path in the source file ("providers[2].weight")
    destination: str  # its path in the llmrelay config ("endpoints.oai.upstreams[2].weight")
    note: str = ""


class Dropped(msgspec.Struct, frozen=True):
    source: str
    reason: str
    changes_behaviour: bool  # True: the imported relay would act differently, and nothing says so


class Report:
    """Collects Moved and Dropped entries in the order a converter meets the keys."""

    def __init__(self, format_name: str) -> None:
        self.format_name = format_name
        self.moved_keys: list[Moved] = []
        self.dropped_keys: list[Dropped] = []
        self.notes: list[str] = []

    def moved(self, source: str, destination: str, note: str = "") -> None:
        self.moved_keys.append(Moved(source, destination, note))

    def dropped(self, source: str, reason: str, *, changes_behaviour: bool = True) -> None:
        self.dropped_keys.append(Dropped(source, reason, changes_behaviour))

    def note(self, text: str) -> None:
        """A remark about the whole import (not tied to one key)."""
        self.notes.append(text)

    @property
    def changes_behaviour(self) -> bool:
        return any(entry.changes_behaviour for entry in self.dropped_keys)

    def lines(self) -> list[str]:
        """The report as printed on standard error."""
        out = [f"import-config: read as {self.format_name}"]
        if self.moved_keys:
            out.append("mapped:")
            for moved in self.moved_keys:
                suffix = f"  ({moved.note})" if moved.note else ""
                out.append(f"  {moved.source} -> {moved.destination}{suffix}")
        ignored = [entry for entry in self.dropped_keys if not entry.changes_behaviour]
        changed = [entry for entry in self.dropped_keys if entry.changes_behaviour]
        if ignored:
            out.append("not carried over (no change in behaviour):")
            out.extend(f"  {entry.source}: {entry.reason}" for entry in ignored)
        if changed:
            out.append("not carried over, CHANGES BEHAVIOUR:")
            out.extend(f"  {entry.source}: {entry.reason}" for entry in changed)
        out.extend(f"note: {text}" for text in self.notes)
        if changed:
            out.append(f"import-config: {len(changed)} setting(s) would change behaviour; review them (exit status 1)")
        else:
            out.append("import-config: every setting has an equivalent")
        return out
