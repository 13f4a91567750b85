"""The Lua scripts the Redis store runs, each atomic on one key (so one Redis Cluster slot).

A script is sent once with SCRIPT LOAD and then called by its SHA-1 (EVALSHA); a proxy that refuses
SCRIPT or EVALSHA gets the body with EVAL instead (`supervisor.redis_store`). The SHA-1 is computed
here: it is what SCRIPT LOAD would answer, so a call never waits for it.
"""

from __future__ import annotations

import hashlib

import msgspec

from supervisor.redis_scripts.counter import COUNTER_LUA, REPLY_LENGTH
from supervisor.redis_scripts.usage import USAGE_LUA


class Script(msgspec.Struct, frozen=True):
    name: str
    body: str
    sha: str

    @classmethod
    def of(cls, name: str, body: str) -> Script:
        return cls(name, body, hashlib.sha1(body.encode()).hexdigest())


COUNTER = Script.of("counter", COUNTER_LUA)
USAGE = Script.of("usage", USAGE_LUA)

__all__ = ["COUNTER", "REPLY_LENGTH", "USAGE", "Script"]
