"""Grouping ended requests for the bulk folds of the metrics and usage recorders."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

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
