"""What the relay changes in the `hpack` library it runs HTTP/2 on, and why (imported once).

- **Silence.** hpack logs every field it decodes or encodes at DEBUG, values included: a relay run
  with debug logging would write its clients' credentials, and even when the level filters them out,
  the calls cost about 28 logger look-ups per request. Its module loggers are replaced by one that
  does nothing.
- **Huffman decoding, remembered.** Clients Huffman-code header values they send again and again
  (`content-type`, `user-agent`, the SDK's own headers); hpack decodes them bit by bit in Python
  each time. The decoded value of a given code is always the same, so the last few hundred are kept;
  `decode_huffman` is that cached function, for the relay's own codec (`hpack_codec`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import hpack.hpack
import hpack.table


class _Silent:
    """A logger that drops everything without looking at a level."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return False


_SILENT = _Silent()
HUFFMAN_CACHE = 512


def apply() -> None:
    hpack.hpack.log = _SILENT  # type: ignore[assignment]
    hpack.table.log = _SILENT  # type: ignore[assignment]
    decode = getattr(hpack.hpack, "decode_huffman")
    if not hasattr(decode, "cache_info"):
        setattr(hpack.hpack, "decode_huffman", functools.lru_cache(maxsize=HUFFMAN_CACHE)(decode))


apply()
decode_huffman: Callable[[bytes], bytes] = getattr(hpack.hpack, "decode_huffman")
