"""Keeping ended requests and grouping them, for the bulk folds of the metrics and usage recorders."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def grouped(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """`items` by `key(item)`, the groups in the order their keys first appear (one pass)."""
    groups: dict[K, list[T]] = {}
    find = groups.get
    for item in items:
        group_key = key(item)
        group = find(group_key)
        if group is None:
            groups[group_key] = [item]
        else:
            group.append(item)
    return groups


class Folding(Generic[T]):
    """Items kept with one list append each and folded in bulk: at `FOLD_AT` kept, and whenever
    `fold` is called (before each report). Subclasses say how in `fold_kept`."""

    __slots__ = ("_kept",)

    FOLD_AT = 512

    def __init__(self) -> None:
        self._kept: list[T] = []

    def keep(self, item: T) -> None:
        kept = self._kept
        kept.append(item)
        if len(kept) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        kept = self._kept
        if kept:
            self._kept = []
            self.fold_kept(kept)

    def fold_kept(self, kept: list[T]) -> None:
        raise NotImplementedError
