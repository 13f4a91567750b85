"""The shape of a provider module's answer: what the relay needs to know about one provider."""

from __future__ import annotations

from collections.abc import Callable

import msgspec


class Provider(msgspec.Struct, frozen=True):
    name: str
    key_field: Callable[[bytes], tuple[bytes, bytes]]  # the provider key -> the header that carries it
    error_body: Callable[[int, str], bytes]  # (status, message) -> a JSON error body
    sse_error_event: Callable[[str], bytes]  # message -> the SSE event that ends a cut stream
