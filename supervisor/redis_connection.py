"""One connection to Redis for the limits' store: the URL (`parse_redis_url`: redis:// or rediss://,
user and password, database, TLS settings) and `RedisConnection`, one socket speaking RESP
(llmrelay.limits.resp), used by one call at a time under a lock. Waiting for the lock and the call
itself are each bounded by `timeout`; losing the connection raises `StoreUnavailable` (the message
names the server, never the password), and the next call reconnects after a backoff of 0.1 s doubling
to 5 s, during which calls fail at once. Scripts go as EVALSHA, or as EVAL with their body where a
proxy or an ACL refuses EVALSHA.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import trio

from llmrelay.limits.resp import NEED_DATA, Argument, ErrorReply, ProtocolError, Reply, RespParser, encode_commands
from llmrelay.limits.store import StoreUnavailable
from supervisor.redis_scripts import Script

TIMEOUT = 1.0  # every call: connect, handshake and replies included
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class RedisAddress(msgspec.Struct, frozen=True):
    """Where the server is and how to log in, from `redis://[user:password@]host:port/db` or
    `rediss://...` (TLS; `?ssl_cert_reqs=none` skips verification, `?ssl_ca_certs=PATH` trusts a CA)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str = ""
    password: str = ""
    tls: bool = False
    verify: bool = True
    ca_file: str = ""

    @property
    def shown(self) -> str:
        """The server as logs and errors name it: never the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """`ValueError` (whose message never holds the password) for a URL that cannot be used."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise ValueError("redis_url: not a URL of the form redis://[user:password@]host:port/db") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url: the scheme must be redis:// or rediss://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("redis_url: no host")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError("redis_url: the path must be a database number (/0)")
    query = parse_qs(parts.query)
    cert_reqs = query.get("ssl_cert_reqs", ["required"])[-1].lower()
    if cert_reqs not in ("none", "required"):
        raise ValueError("redis_url: ssl_cert_reqs must be none or required")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        tls=parts.scheme == "rediss",
        verify=cert_reqs == "required",
        ca_file=query.get("ssl_ca_certs", [""])[-1],
    )


class _Lost(Exception):
    """The connection cannot be used any more (closed, broken, garbage, too slow)."""


class ScriptCall(msgspec.Struct, frozen=True):
    script: Script
    key: str
    args: list[Argument]


class RedisConnection:
    """One RESP connection, one call at a time, reconnected with backoff after a failure."""

    def __init__(self, address: RedisAddress, timeout: float = TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._lock = trio.Lock()
        self._stream: trio.abc.Stream | None = None
        self._parser = RespParser()
        self._loaded: set[str] = set()  # scripts loaded on this connection
        self._eval_only = False  # the server (or a proxy) refuses SCRIPT or EVALSHA
        self._delay = 0.0
        self._retry_at = 0.0
        self._last_error = ""

    async def execute(self, commands: list[tuple[Argument, ...]]) -> list[Reply]:
        """Replies in the order of the commands (an error reply is a value, not raised)."""
        return await self._in_turn(lambda: self._exchange(commands))

    async def run_scripts(self, calls: list[ScriptCall], first: Callable[[], list[ScriptCall]] | None = None) -> list[Reply]:
        """Each call's reply, in order, from one pipeline (more only when a script has to be loaded
        again, or the server turns out to refuse EVALSHA). `first()`, called once the connection
        is this call's and up, gives calls to send before `calls` (their replies come first)."""

        async def operation() -> list[Reply]:
            return await self._scripts((first() if first is not None else []) + calls)

        return await self._in_turn(operation)

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

    # -- the parts under the lock -----------------------------------------------------------------
    async def _in_turn(self, operation: Callable[[], Awaitable[list[Reply]]]) -> list[Reply]:
        """Wait for the connection (at most `timeout`: calls queue behind a slow one), then run."""
        with trio.move_on_after(self.timeout) as waiting:
            await self._lock.acquire()
        if waiting.cancelled_caught:
            raise StoreUnavailable(f"redis {self.address.shown}: busy (the calls before this one took over {self.timeout:g} s)")
        try:
            return await self._guarded(operation)
        finally:
            self._lock.release()

    async def _guarded(self, operation: Callable[[], Awaitable[list[Reply]]]) -> list[Reply]:
        now = time.monotonic()
        if self._stream is None and now < self._retry_at:
            raise StoreUnavailable(
                f"redis {self.address.shown} unreachable ({self._last_error}); next attempt in {self._retry_at - now:.1f} s"
            )
        try:
            with trio.fail_after(self.timeout):
                if self._stream is None:
                    await self._connect()
                return await operation()
        except (_Lost, OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, trio.TooSlowError) as exc:
            await self._drop()
            self._last_error = self._describe(exc)
            self._delay = BACKOFF_FIRST if self._delay == 0 else min(BACKOFF_MAX, self._delay * 2)
            self._retry_at = time.monotonic() + self._delay
            raise StoreUnavailable(f"redis {self.address.shown}: {self._last_error}") from None
        except BaseException:
            # Cancelled (or a bug) between a request and its reply: what is still to come on this
            # connection would be taken for the next call's replies.
            await self._drop()
            raise

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, trio.TooSlowError):
            text = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, ProtocolError):
            text = f"not a Redis reply ({exc})"
        elif isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            text = "connection lost"
        else:
            text = str(exc) or type(exc).__name__
        if self.address.password:
            text = text.replace(self.address.password, "***")
        return text

    async def _connect(self) -> None:
        stream: trio.abc.Stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        try:
            if self.address.tls:
                tls = trio.SSLStream(stream, self._tls_context(), server_hostname=self.address.host)
                await tls.do_handshake()
                stream = tls
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self._stream = stream
        self._parser = RespParser()
        self._loaded = set()
        self._eval_only = False
        hello: list[tuple[Argument, ...]] = []
        if self.address.password:
            user = (self.address.username,) if self.address.username else ()
            hello.append(("AUTH", *user, self.address.password))
        if self.address.db:
            hello.append(("SELECT", self.address.db))
        for command, reply in zip(hello, await self._exchange(hello)):
            if isinstance(reply, ErrorReply):
                what = "authentication refused" if command[0] == "AUTH" else f"SELECT {self.address.db} refused"
                raise _Lost(f"{what}: {reply.message}")
        self._delay = 0.0

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.address.ca_file or None)
        if not self.address.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _exchange(self, commands: list[tuple[Argument, ...]]) -> list[Reply]:
        if not commands:
            return []
        stream = self._stream
        assert stream is not None
        await stream.send_all(encode_commands(commands))
        replies: list[Reply] = []
        while len(replies) < len(commands):
            reply = self._parser.next_reply()
            if reply is NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    raise _Lost("connection closed by the server")
                self._parser.feed(data)
            else:
                replies.append(reply)
        return replies

    async def _scripts(self, calls: list[ScriptCall]) -> list[Reply]:
        results: list[Reply] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(3):  # load, then at most a reload and a fall back to EVAL
            loads = [] if self._eval_only else list({calls[i].script.sha: calls[i].script for i in pending if calls[i].script.sha not in self._loaded}.values())
            commands: list[tuple[Argument, ...]] = [("SCRIPT", "LOAD", script.body) for script in loads]
            for i in pending:
                call = calls[i]
                if self._eval_only:
                    commands.append(("EVAL", call.script.body, 1, call.key, *call.args))
                else:
                    commands.append(("EVALSHA", call.script.sha, 1, call.key, *call.args))
            sent_eval = self._eval_only
            replies = await self._exchange(commands)
            for script, reply in zip(loads, replies):
                if isinstance(reply, ErrorReply):
                    self._eval_only = True  # Twemproxy, Codis, a renamed SCRIPT: EVAL from now on
                else:
                    self._loaded.add(script.sha)
            retry = []
            for i, reply in zip(pending, replies[len(loads) :]):
                if isinstance(reply, ErrorReply) and not sent_eval:
                    if reply.code == "NOSCRIPT":  # SCRIPT FLUSH, a restart, a failover; or not loadable
                        self._loaded.discard(calls[i].script.sha)
                        retry.append(i)
                        continue
                    if _refuses_evalsha(reply):
                        self._eval_only = True
                        retry.append(i)
                        continue
                results[i] = reply
            pending = retry
            if not pending:
                return results
        raise _Lost("scripts could not be run (NOSCRIPT after loading them)")


def _refuses_evalsha(reply: ErrorReply) -> bool:
    """Redis with EVALSHA renamed away ("unknown command"), a proxy that does not allow it (Codis:
    "command 'EVALSHA' is not allowed"), an ACL that denies it (NOPERM)."""
    text = reply.message.lower()
    if "unknown command" in text:
        return True
    return "evalsha" in text and (reply.code == "NOPERM" or any(w in text for w in ("not allowed", "not supported", "unsupported")))
