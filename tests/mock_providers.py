"""Mock LLM provider HTTP server for llmrelay integration tests.

It speaks the real wire formats of the OpenAI (chat completions, models),
Anthropic (messages) and Gemini (generateContent / streamGenerateContent)
APIs, streamed (SSE) and not, so the official SDKs can parse its answers.
An ``/echo`` route reports the SHA-256 and length of the body it received,
to check that large streamed uploads arrive intact.  Standard library only:
a ``ThreadingHTTPServer`` in a background daemon thread, HTTP/1.1 with
keep-alive, optional TLS.

Request headers steer single requests:

``x-mock-delay: S``
    Sleep S seconds before each SSE event (the first one too).  A non-streamed
    answer is delayed once, before its headers.
``x-mock-events: N``
    The content becomes ``"w0 w1 ... w{N-1}"`` (N content deltas in streams).
``x-mock-status: C``
    Answer status C with an error body shaped like the route's provider.
``x-mock-hang: 1``
    Never answer; wait until the client goes away, ``stop()``, or 60 s.
``x-mock-reset: 1``
    Abort the connection with a TCP RST, without answering.
``x-mock-garbage: 1``
    Write ``b"this is not http\\r\\n\\r\\n"`` and close.

``x-mock-reset-after: N``
    In an SSE answer, write N events, then abort the connection with a TCP RST
    (the stream never ends cleanly).

Attributes steer one mock (for tests with several mocks behind one relay,
where a request header would reach whichever mock the relay picks):

``answer(status, key=..., path=..., retry_after=...)``
    Answer a fixed status to the requests that match (all of them, or those
    presenting a given key, or on a given path); ``clear_rules()`` ends it.
``hang(key=..., path=...)``
    Never answer the requests that match.
``reset_after_events``
    Like ``x-mock-reset-after`` for every SSE answer.
``kill()`` / ``revive()``
    Close the listening socket (connects are refused), finish the responses
    under way, drop the idle connections and reset any request still
    arriving; then listen again on the same port.

Every response carries ``x-mock-request-index``, the index of the request in
``MockProvider.requests``.  The ``time.monotonic()`` at which each SSE event
(``[DONE]`` included, the closing zero-length chunk not) is written is kept
in ``MockProvider.event_times[index]``; it is taken just before the write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["MockProvider", "RecordedRequest", "Rule"]

log = logging.getLogger(__name__)

DEFAULT_CONTENT = {
    "openai": "Hello from mock openai",
    "anthropic": "Hello from mock anthropic",
    "gemini": "Hello from mock gemini",
}
HANG_LIMIT = 60.0  # seconds an x-mock-hang request waits at most
POLL_STEP = 0.01  # seconds between peer-closed checks while sleeping
GARBAGE = b"this is not http\r\n\r\n"
_MSG_PEEK_NOWAIT = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_TRUE = frozenset({"1", "true", "yes", "on"})
RESET_PAUSE = 0.1  # seconds between the last event written and the RST of a cut stream


@dataclass
class RecordedRequest:
    """One request as the mock received it."""

    method: str
    path: str  # request target exactly as in the request line, query included
    headers: dict[str, str]  # lower-cased names -> value (last wins)
    raw_headers: list[tuple[str, str]]  # as received, in order
    body: bytes
    peer: tuple[str, int]
    at: float = field(default_factory=time.monotonic)  # when it was recorded (body read)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str | None:
        """The credential it presented (Bearer token, x-api-key, x-goog-api-key or ?key=)."""
        return _presented_key(self.headers, self.path)

    @property
    def route_path(self) -> str:
        """The path of the request target, without its query."""
        return urlsplit(self.path).path


def _presented_key(headers: dict[str, str], target: str) -> str | None:
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else authorization
    for name in ("x-api-key", "x-goog-api-key"):
        if name in headers:
            return headers[name].strip()
    found = parse_qs(urlsplit(target).query).get("key")
    return found[0] if found else None


@dataclass
class Rule:
    """A fixed answer for the requests that match every set condition."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # the presented credential (see RecordedRequest.key)
    path: str | None = None  # the path without its query, exactly
    method: str | None = None
    hang: bool = False  # never answer (like x-mock-hang) instead of `status`

    def matches(self, request: RecordedRequest) -> bool:
        return (
            (self.key is None or request.key == self.key)
            and (self.path is None or request.route_path == self.path)
            and (self.method is None or request.method == self.method)
        )


class MockProvider:
    """A mock OpenAI / Anthropic / Gemini server on a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.requests: list[RecordedRequest] = []
        self.event_times: dict[int, list[float]] = {}
        self.stream_bodies: dict[int, bytearray] = {}  # the SSE bytes sent, per request index
        self.stream_disconnects = 0  # SSE streams whose client left early
        self.disconnects = 0  # all detected client departures (streams, hangs, delays)
        self.rules: list[Rule] = []  # fixed answers, the first match wins
        self.reset_after_events: int | None = None  # cut every SSE answer after this many events
        self.resets_while_dead = 0  # requests that arrived on an old connection after kill()
        self._lock = threading.Lock()
        self._disconnected = threading.Event()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> MockProvider:
        if self._server is not None:
            raise RuntimeError("MockProvider already started")
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mock-provider-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def kill(self) -> None:
        """Stop listening (new connects are refused) and drop every connection once idle.

        A response under way is finished, then its connection closed; an idle keep-alive
        connection is shut down at once; a request that still arrives on an old connection gets
        a TCP RST and no answer (counted in `resets_while_dead`). `revive()` listens again on the
        same port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.start_dying()
        server.shutdown()
        server.server_close()
        server.close_idle_connections()
        if thread is not None:
            thread.join(timeout=5)

    def revive(self) -> MockProvider:
        """Listen again on the same port after `kill()` (or `stop()`)."""
        return self.start()

    @property
    def alive(self) -> bool:
        return self._server is not None

    # -- steering ---------------------------------------------------------------

    def answer(
        self,
        status: int,
        *,
        key: str | None = None,
        path: str | None = None,
        method: str | None = None,
        retry_after: str | int | float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Rule:
        """Answer `status` (an error body in the route's provider shape from 400 on) to the
        requests that match; returns the rule (`remove_rule` it, or `clear_rules()`)."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        rule = Rule(status, extra, key, path, method)
        with self._lock:
            self.rules = [*self.rules, rule]
        return rule

    def hang(self, *, key: str | None = None, path: str | None = None, method: str | None = None) -> Rule:
        """Never answer the requests that match (like `x-mock-hang`); returns the rule."""
        rule = Rule(0, {}, key, path, method, hang=True)
        with self._lock:
            self.rules = [*self.rules, rule]
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            self.rules = [r for r in self.rules if r is not rule]

    def clear_rules(self) -> None:
        with self._lock:
            self.rules = []

    # -- reading what was received ------------------------------------------------

    def received(
        self, path: str | None = None, method: str | None = None, key: str | None = None, since: int = 0
    ) -> list[RecordedRequest]:
        """The recorded requests from index `since` on that match every given condition."""
        with self._lock:
            requests = self.requests[since:]
        return [
            r for r in requests
            if (path is None or r.route_path == path)
            and (method is None or r.method == method)
            and (key is None or r.key == key)
        ]

    def count(self, path: str | None = None, method: str | None = None, key: str | None = None, since: int = 0) -> int:
        return len(self.received(path, method, key, since))

    def path_counts(self) -> Counter[str]:
        """How many requests each path (without its query) received."""
        with self._lock:
            return Counter(r.route_path for r in self.requests)

    def key_counts(self, since: int = 0) -> Counter[str | None]:
        """How many requests presented each credential."""
        with self._lock:
            return Counter(r.key for r in self.requests[since:])

    def __enter__(self) -> MockProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def index_of(self, request_id: str) -> int:
        """The index of the request that carried `x-request-id: request_id`."""
        with self._lock:
            for index, request in enumerate(self.requests):
                if request.headers.get("x-request-id") == request_id:
                    return index
        raise KeyError(request_id)

    def last(self) -> RecordedRequest:
        with self._lock:
            if not self.requests:
                raise LookupError("no request received yet")
            return self.requests[-1]

    def wait_for_disconnect(self, timeout: float) -> bool:
        """True if a client disconnect was (or is, within timeout) detected.

        A True answer consumes the signal: the next call waits for a new one.
        """
        if self._disconnected.wait(timeout):
            self._disconnected.clear()
            return True
        return False

    # -- used by the handler threads -------------------------------------

    def _rule_for(self, request: RecordedRequest) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request):
                return rule
        return None

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            index = len(self.requests)
            self.requests.append(request)
            self.event_times[index] = []
            return index

    def _note_disconnect(self, *, stream: bool) -> None:
        with self._lock:
            self.disconnects += 1
            if stream:
                self.stream_disconnects += 1
        self._disconnected.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], mock: MockProvider) -> None:
        self.mock = mock
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._conns: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()  # connections with a request being answered
        self._conns_lock = threading.Lock()
        self.dying = False
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(): a DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.mock.tls_context
        if context is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs here, in the connection's own thread.
        try:
            tls = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            log.debug("mock: TLS wrap failed", exc_info=True)
            return
        try:
            tls.settimeout(10)
            tls.do_handshake()
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        except OSError:
            log.debug("mock: TLS connection failed", exc_info=True)
        finally:
            try:
                socket.socket.shutdown(tls, socket.SHUT_WR)
            except OSError:
                pass
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("mock: error on connection from %s", client_address, exc_info=True)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def begin_request(self, conn: socket.socket) -> bool:
        """Mark a connection busy; False once the mock was killed (the request gets no answer)."""
        with self._conns_lock:
            if self.dying:
                return False
            self._busy.add(conn)
            return True

    def end_request(self, conn: socket.socket) -> bool:
        """Mark a connection idle again; True if it must be closed now (the mock was killed)."""
        with self._conns_lock:
            self._busy.discard(conn)
            return self.dying

    def start_dying(self) -> None:
        with self._conns_lock:
            self.dying = True

    def close_idle_connections(self) -> None:
        with self._conns_lock:
            idle = list(self._conns - self._busy)
        for conn in idle:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass

    def close_connections(self) -> None:
        """Shut down open connections so idle keep-alive threads exit."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass


class _BadRequest(Exception):
    pass


class _Stopping(Exception):
    pass


@dataclass(frozen=True)
class _Controls:
    delay: float = 0.0
    events: int | None = None
    status: int | None = None
    hang: bool = False
    reset: bool = False
    garbage: bool = False
    reset_after: int | None = None

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> _Controls:
        def flag(name: str) -> bool:
            return headers.get(name, "").strip().lower() in _TRUE

        try:
            delay = float(headers.get("x-mock-delay", "0"))
            events = int(headers["x-mock-events"]) if "x-mock-events" in headers else None
            status = int(headers["x-mock-status"]) if "x-mock-status" in headers else None
            reset_after = int(headers["x-mock-reset-after"]) if "x-mock-reset-after" in headers else None
        except ValueError as exc:
            raise _BadRequest(f"bad x-mock-* header: {exc}") from None
        if delay < 0 or (events is not None and events < 0) or (reset_after is not None and reset_after < 0):
            raise _BadRequest("x-mock-delay, x-mock-events and x-mock-reset-after must not be negative")
        if status is not None and not 200 <= status <= 599:
            raise _BadRequest("x-mock-status must be within 200..599")
        return cls(
            delay, events, status, flag("x-mock-hang"), flag("x-mock-reset"), flag("x-mock-garbage"), reset_after
        )


def _route(method: str, path: str) -> tuple[str, str] | None:
    """(route name, model from the path) for a request, None if unknown."""
    if method == "POST" and path.endswith("/chat/completions"):
        return "openai_chat", ""
    if method == "POST" and path.endswith("/messages"):
        return "anthropic_messages", ""
    if method == "POST" and "/models/" in path:
        model, _, action = path.rsplit("/models/", 1)[1].partition(":")
        if action == "generateContent":
            return "gemini", model
        if action == "streamGenerateContent":
            return "gemini_stream", model
    if method == "GET" and path.endswith("/models"):
        return "models", ""
    if method in ("POST", "PUT") and path.endswith("/echo"):
        return "echo", ""
    return None


def _provider(route: str | None) -> str:
    if route == "anthropic_messages":
        return "anthropic"
    if route in ("gemini", "gemini_stream"):
        return "gemini"
    return "openai"


def _pieces(provider: str, events: int | None) -> list[str]:
    """Content split into stream deltas; "".join(result) is the full content."""
    if events is None:
        words = DEFAULT_CONTENT[provider].split(" ")
    else:
        words = [f"w{i}" for i in range(events)]
    return [w + " " for w in words[:-1]] + words[-1:]


def _count_words(value: Any) -> int:
    """Deterministic stand-in for a token count of a prompt."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_words(v) for k, v in value.items() if k not in ("role", "type"))
    return 0


def _error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    if provider == "anthropic":
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "gemini":
        kind = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED",
        }.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": kind}}
    kind = {
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _sse(data: Any, event: str | None = None, sep: bytes = b"\n\n") -> bytes:
    payload = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + payload + sep


def _openai_events(body: dict[str, Any], model: str, pieces: list[str]) -> Iterator[bytes]:
    created = int(time.time())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return obj

    yield _sse(chunk({"role": "assistant", "content": ""}, None))
    for piece in pieces:
        yield _sse(chunk({"content": piece}, None))
    yield _sse(chunk({}, "stop"))
    if include_usage:
        prompt = _count_words(body.get("messages"))
        final = chunk({}, None)
        final["choices"] = []
        final["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": len(pieces),
            "total_tokens": prompt + len(pieces),
        }
        yield _sse(final)
    yield _sse(b"[DONE]")


def _anthropic_events(body: dict[str, Any], model: str, pieces: list[str]) -> Iterator[bytes]:
    prompt = _count_words([body.get("system"), body.get("messages")])
    message = {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    yield _sse({"type": "message_start", "message": message}, "message_start")
    block = {"type": "text", "text": ""}
    yield _sse({"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start")
    yield _sse({"type": "ping"}, "ping")
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        yield _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": len(pieces)},
    }
    yield _sse(message_delta, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")


def _gemini_response(
    body: dict[str, Any], model: str, text: str, *, final: bool, output_tokens: int
) -> dict[str, Any]:
    content = {"parts": [{"text": text}], "role": "model"}
    candidate: dict[str, Any] = {"content": content, "index": 0}
    response: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
    if final:
        candidate["finishReason"] = "STOP"
        prompt = _count_words([body.get("systemInstruction"), body.get("contents")])
        response["usageMetadata"] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt + output_tokens,
        }
    return response


def _gemini_events(
    body: dict[str, Any], model: str, pieces: list[str], *, sse: bool
) -> Iterator[bytes]:
    parts = pieces or [""]
    for i, piece in enumerate(parts):
        last = i == len(parts) - 1
        response = _gemini_response(body, model, piece, final=last, output_tokens=len(pieces))
        if sse:
            yield _sse(response, sep=b"\r\n\r\n")
        else:  # without ?alt=sse Gemini streams one JSON array
            data = json.dumps(response).encode()
            yield (b"[" if i == 0 else b",\r\n") + data + (b"]" if last else b"")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmrelay-mock/1.0"
    sys_version = ""
    server: _Server

    _index: int | None = None
    _chunked = False
    _cut_after: int | None = None

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("mock %s: " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        self._index = None
        if not self.server.begin_request(self.connection):
            with self.server.mock._lock:
                self.server.mock.resets_while_dead += 1
            self._reset()
            return
        try:
            self._serve()
        except _Stopping:
            self.close_connection = True
        except (OSError, ValueError):
            log.debug("mock: client connection error", exc_info=True)
            self.close_connection = True
        except Exception:
            log.exception("mock: unexpected error while serving %s %s", self.command, self.path)
            self.close_connection = True
        finally:
            if self.server.end_request(self.connection):
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    # -- request ----------------------------------------------------------

    def _serve(self) -> None:
        mock = self.server.mock
        target = self.requestline.split()[1] if len(self.requestline.split()) > 1 else self.path
        headers = {name.lower(): value for name, value in self.headers.items()}
        bad: str | None = None
        try:
            body = self._read_body(headers)
        except _BadRequest as exc:
            body, bad = b"", str(exc)
        peer = self.client_address
        self._index = mock._record(
            RecordedRequest(
                method=self.command,
                path=target,
                headers=headers,
                raw_headers=list(self.headers.items()),
                body=body,
                peer=(str(peer[0]), int(peer[1])),
            )
        )
        if bad is not None:  # broken framing: answer and drop the connection
            self.close_connection = True
            self._send_json(400, _error_body("openai", 400, bad))
            return
        rule = mock._rule_for(mock.requests[self._index])
        if rule is not None:
            self._send_rule(rule)
            return

        try:
            controls = _Controls.from_headers(headers)
        except _BadRequest as exc:
            self._send_json(400, _error_body("openai", 400, str(exc)))
            return
        self._cut_after = controls.reset_after if controls.reset_after is not None else mock.reset_after_events
        if controls.reset:
            log.debug("mock: request %d: resetting the connection", self._index)
            self._reset()
            return
        if controls.garbage:
            log.debug("mock: request %d: answering garbage", self._index)
            self.close_connection = True
            self.wfile.write(GARBAGE)
            return
        if controls.hang:
            log.debug("mock: request %d: hanging", self._index)
            self.close_connection = True
            if not self._pause(HANG_LIMIT):
                log.debug("mock: request %d: client left a hanging request", self._index)
                mock._note_disconnect(stream=False)
            return

        url = urlsplit(target)
        found = _route(self.command, url.path)
        route, path_model = found if found is not None else (None, "")
        provider = _provider(route)
        if controls.status is not None and controls.status != 200:
            self._delay_once(controls.delay)
            status = controls.status
            self._send_json(status, _error_body(provider, status, f"mock error {status}"))
            return
        if route is None:
            message = f"Unknown request URL: {self.command} {url.path}"
            self._send_json(404, _error_body("openai", 404, message))
            return
        if route == "echo":
            self._delay_once(controls.delay)
            digest = hashlib.sha256(body).hexdigest()
            self._send_bytes(
                200,
                f"{digest}\n{len(body)}".encode(),
                "application/octet-stream",
                [("x-mock-body-length", str(len(body)))],
            )
            return
        if route == "models":
            self._delay_once(controls.delay)
            entry = {"id": "mock-model", "object": "model", "created": int(time.time()), "owned_by": "mock"}
            self._send_json(200, {"object": "list", "data": [entry]})
            return

        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self._send_json(400, _error_body(provider, 400, "request body is not a JSON object"))
            return
        model = path_model or str(request.get("model") or "mock-model")
        pieces = _pieces(provider, controls.events)
        delay = controls.delay
        sse_type = "text/event-stream; charset=utf-8"

        if route == "openai_chat":
            if request.get("stream") is True:
                self._send_stream(_openai_events(request, model, pieces), delay, sse_type)
            else:
                self._delay_once(delay)
                self._send_json(200, self._openai_completion(request, model, pieces))
        elif route == "anthropic_messages":
            if request.get("stream") is True:
                self._send_stream(_anthropic_events(request, model, pieces), delay, sse_type)
            else:
                self._delay_once(delay)
                self._send_json(200, self._anthropic_message(request, model, pieces))
        elif route == "gemini_stream":
            sse = parse_qs(url.query).get("alt") == ["sse"]
            content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
            self._send_stream(_gemini_events(request, model, pieces, sse=sse), delay, content_type)
        else:  # gemini
            self._delay_once(delay)
            text = "".join(pieces)
            reply = _gemini_response(request, model, text, final=True, output_tokens=len(pieces))
            self._send_json(200, reply)

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length_text = headers.get("content-length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise _BadRequest(f"bad Content-Length: {length_text!r}") from None
        if length < 0:
            raise _BadRequest(f"bad Content-Length: {length_text!r}")
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("client closed the connection inside the body")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self._readline()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size line: {line!r}") from None
            if size < 0:
                raise _BadRequest(f"bad chunk size line: {line!r}")
            if size == 0:
                break
            data = self.rfile.read(size)
            if len(data) < size:
                raise ConnectionError("client closed the connection inside a chunk")
            parts.append(data)
            if self._readline() not in (b"\r\n", b"\n"):
                raise _BadRequest("chunk data not followed by CRLF")
        while self._readline() not in (b"\r\n", b"\n"):  # trailer fields
            pass
        return b"".join(parts)

    def _readline(self) -> bytes:
        line = self.rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed the connection inside the body")
        if len(line) > 65536:
            raise _BadRequest("line too long in chunked body")
        return line

    # -- responses --------------------------------------------------------

    def _common_headers(self) -> None:
        if self._index is not None:
            self.send_header("x-mock-request-index", str(self._index))
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()
    ) -> None:
        no_body = status in (204, 304)
        self.send_response(status)
        if not no_body:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self._common_headers()
        self.end_headers()
        if not no_body and self.command != "HEAD":
            self.wfile.write(data)

    def _send_rule(self, rule: Rule) -> None:
        if rule.hang:
            self.close_connection = True
            if not self._pause(HANG_LIMIT):
                self.server.mock._note_disconnect(stream=False)
            return
        status = rule.status
        extra = list(rule.headers.items())
        if status >= 400:
            route = _route(self.command, urlsplit(self.path).path)
            provider = _provider(route[0] if route else None)
            data = json.dumps(_error_body(provider, status, f"mock error {status}")).encode()
        else:
            data = b'{"ok": true}'
        self._send_bytes(status, data, "application/json", extra)

    def _send_json(self, status: int, obj: Any) -> None:
        self._send_bytes(status, json.dumps(obj).encode(), "application/json")

    def _send_stream(self, events: Iterable[bytes], delay: float, content_type: str) -> None:
        """Send events one by one, each in its own chunk, noting disconnects; with
        `x-mock-reset-after: N` (or `reset_after_events`) a TCP RST follows the N-th event."""
        mock = self.server.mock
        cut_after = self._cut_after
        assert self._index is not None
        times = mock.event_times[self._index]
        sent = mock.stream_bodies.setdefault(self._index, bytearray())
        self._chunked = self.request_version != "HTTP/1.0"
        if not self._chunked:  # HTTP/1.0: the body ends when the connection does
            self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self._common_headers()
        try:
            self.end_headers()
            for event in events:
                if delay > 0 and not self._pause(delay):
                    raise ConnectionAbortedError("client went away during a delay")
                if self._peer_closed():
                    raise ConnectionAbortedError("client went away")
                # Noted just before the write, so that a client which has
                # read an event always finds its timestamp recorded.
                times.append(time.monotonic())
                try:
                    self._write_frame(event)
                except OSError:
                    times.pop()
                    raise
                sent += event
                if cut_after is not None and len(times) >= cut_after:
                    time.sleep(RESET_PAUSE)  # the events reach the client before the RST
                    log.debug("mock: stream %s: reset after %d events", self._index, cut_after)
                    self._reset()
                    return
        except OSError:
            log.debug("mock: stream %s: client disconnected", self._index, exc_info=True)
            self.close_connection = True
            mock._note_disconnect(stream=True)
            return
        if self._chunked:
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True

    def _write_frame(self, data: bytes) -> None:
        if self._chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with SO_LINGER 0, so the peer gets a RST and no response."""
        self.close_connection = True
        conn = self.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # detach(): the buffered reader still holds a reference to the socket,
        # so close() alone would not close the descriptor now.
        os.close(conn.detach())

    # -- waiting ------------------------------------------------------------

    def _peer_closed(self) -> bool:
        """Whether the client closed its side (or reset), without blocking."""
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if not readable:
                return False
            # Peek at the TCP stream itself, under any TLS layer.
            data = socket.socket.recv(conn, 1, _MSG_PEEK_NOWAIT)
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True
        return data == b""

    def _pause(self, seconds: float) -> bool:
        """Sleep, watching the peer; False if it went away meanwhile."""
        deadline = time.monotonic() + seconds
        stopping = self.server.mock._stopping
        while True:
            if self._peer_closed():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if stopping.wait(min(POLL_STEP, remaining)):
                raise _Stopping

    def _delay_once(self, seconds: float) -> None:
        if seconds > 0 and not self._pause(seconds):
            self.server.mock._note_disconnect(stream=False)
            raise ConnectionAbortedError("client went away before the response")

    # -- bodies ---------------------------------------------------------------

    @staticmethod
    def _openai_completion(
        request: dict[str, Any], model: str, pieces: list[str]
    ) -> dict[str, Any]:
        prompt = _count_words(request.get("messages"))
        return {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(pieces),
                "total_tokens": prompt + len(pieces),
            },
        }

    @staticmethod
    def _anthropic_message(
        request: dict[str, Any], model: str, pieces: list[str]
    ) -> dict[str, Any]:
        return {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(pieces)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": _count_words([request.get("system"), request.get("messages")]),
                "output_tokens": len(pieces),
            },
        }


def _self_check() -> None:
    import anthropic
    import httpx
    import openai

    with MockProvider() as mock:
        # OpenAI, through the official SDK.
        oai = openai.OpenAI(base_url=mock.base_url + "/v1", api_key="x", max_retries=0)
        messages: Any = [{"role": "user", "content": "say hi"}]
        completion = oai.chat.completions.create(model="gpt-mock", messages=messages)
        assert completion.choices[0].message.content == "Hello from mock openai", completion
        assert completion.model == "gpt-mock" and completion.usage is not None
        assert completion.usage.total_tokens == 2 + 4
        assert mock.last().path == "/v1/chat/completions"

        stream = oai.chat.completions.create(
            model="gpt-mock", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from mock openai", text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert len(mock.event_times[len(mock.requests) - 1]) == 1 + 4 + 1 + 1 + 1

        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-mock", messages=messages, stream=True, extra_headers={"x-mock-events": "5"}
        )
        index = int(raw.headers["x-mock-request-index"])
        deltas = [c.choices[0].delta.content for c in raw.parse() if c.choices]
        deltas = [d for d in deltas if d]
        assert deltas == ["w0 ", "w1 ", "w2 ", "w3 ", "w4"], deltas
        assert len(mock.event_times[index]) == 1 + 5 + 1 + 1

        assert [m.id for m in oai.models.list()] == ["mock-model"]
        try:
            failing = {"x-mock-status": "429"}
            oai.chat.completions.create(model="m", messages=messages, extra_headers=failing)
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
        else:
            raise AssertionError("x-mock-status: 429 did not raise")

        # Anthropic, through the official SDK.
        ant = anthropic.Anthropic(base_url=mock.base_url, api_key="x", max_retries=0)
        msg_args: Any = {
            "model": "claude-mock",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }
        message = ant.messages.create(**msg_args)
        assert message.content[0].type == "text"
        assert message.content[0].text == "Hello from mock anthropic"
        assert message.stop_reason == "end_turn" and message.model == "claude-mock"
        assert mock.last().path == "/v1/messages"

        events = list(ant.messages.create(**msg_args, stream=True))
        assert [e.type for e in events] == (
            ["message_start", "content_block_start"] + ["content_block_delta"] * 4
            + ["content_block_stop", "message_delta", "message_stop"]
        ), [e.type for e in events]

        with ant.messages.stream(**msg_args, extra_headers={"x-mock-events": "3"}) as ms:
            assert "".join(ms.text_stream) == "w0 w1 w2"
            final = ms.get_final_message()
        assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"
        try:
            ant.messages.create(**msg_args, extra_headers={"x-mock-status": "529"})
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 529
            assert exc.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        else:
            raise AssertionError("x-mock-status: 529 did not raise")

        with httpx.Client(base_url=mock.base_url, timeout=10) as http:
            # Gemini: non-streamed, then SSE with \r\n\r\n separators.
            gem_body = {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
            reply = http.post("/v1beta/models/gemini-mock:generateContent", json=gem_body).json()
            assert reply["candidates"][0]["content"]["parts"][0]["text"] == "Hello from mock gemini"
            assert reply["usageMetadata"]["promptTokenCount"] == 2
            url = "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse"
            with http.stream("POST", url, json=gem_body) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                raw_sse = resp.read().decode()
            assert mock.last().path == url
            frames = [f for f in raw_sse.split("\r\n\r\n") if f]
            parsed = [json.loads(f.removeprefix("data: ")) for f in frames]
            texts = [p["candidates"][0]["content"]["parts"][0]["text"] for p in parsed]
            assert "".join(texts) == "Hello from mock gemini", texts
            assert parsed[-1]["candidates"][0]["finishReason"] == "STOP"
            assert "usageMetadata" in parsed[-1]

            # Echo: a 5 MB upload with chunked transfer encoding.
            blob = os.urandom(5 * 1024 * 1024)

            def upload() -> Iterator[bytes]:
                for start in range(0, len(blob), 64 * 1024):
                    yield blob[start : start + 64 * 1024]

            resp = http.post("/echo", content=upload())
            assert resp.text == f"{hashlib.sha256(blob).hexdigest()}\n{len(blob)}", resp.text
            assert resp.headers["x-mock-body-length"] == str(len(blob))
            assert mock.last().headers.get("transfer-encoding") == "chunked"
            assert mock.last().body == blob
            resp = http.put("/echo", content=b"abc")
            assert resp.text == f"{hashlib.sha256(b'abc').hexdigest()}\n3"
            assert http.get("/nothing/here").status_code == 404

            # Keep-alive: both requests above came over one connection.
            assert mock.requests[-1].peer == mock.requests[-2].peer

            # A client leaving mid-stream is seen during a delay.
            before = mock.stream_disconnects
            chat: Any = {"model": "m", "messages": messages, "stream": True}
            slow = {"x-mock-delay": "0.2", "x-mock-events": "20"}
            with http.stream("POST", "/v1/chat/completions", json=chat, headers=slow) as resp:
                next(resp.iter_raw())
            gone_at = time.monotonic()
            assert mock.wait_for_disconnect(2)
            assert time.monotonic() - gone_at < 0.5
            assert mock.stream_disconnects == before + 1

            # Hang, reset and garbage.
            try:
                hang = {"x-mock-hang": "1"}
                http.post("/v1/chat/completions", json=chat, headers=hang, timeout=0.3)
            except httpx.ReadTimeout:
                pass
            else:
                raise AssertionError("x-mock-hang answered")
            assert mock.wait_for_disconnect(2)
            for control in ("x-mock-reset", "x-mock-garbage"):
                try:
                    http.post("/v1/chat/completions", json=chat, headers={control: "1"})
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    pass
                else:
                    raise AssertionError(f"{control} answered")

        # HTTP/1.0 client streaming: no chunked framing, closed at the end.
        with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
            payload = json.dumps(chat).encode()
            head = b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(payload)
            sock.sendall(head + payload)
            received = b""
            while data := sock.recv(65536):
                received += data
        head, _, rest = received.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower() and rest.endswith(b"data: [DONE]\n\n"), received

    _self_check_steering()
    print("mock ok")


def _self_check_steering() -> None:
    import httpx

    chat: Any = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with MockProvider() as mock:
        with httpx.Client(base_url=mock.base_url, timeout=10) as http:
            # Rules: by key (with Retry-After), by path, for everything; the first match wins.
            rule = mock.answer(429, key="sk-a", retry_after=2)
            mock.answer(204, path="/v1/healthz")
            limited = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer sk-a"})
            assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
            assert limited.json()["error"]["type"] == "rate_limit_error"
            fine = http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer sk-b"})
            assert fine.status_code == 200
            assert http.get("/v1/healthz").status_code == 204
            mock.remove_rule(rule)
            assert http.post("/v1/chat/completions", json=chat, headers={"x-api-key": "sk-a"}).status_code == 200
            assert mock.key_counts() == {"sk-a": 2, "sk-b": 1, None: 1}
            assert mock.count(path="/v1/chat/completions") == 3 and mock.count(key="sk-a") == 2
            assert mock.path_counts() == {"/v1/chat/completions": 3, "/v1/healthz": 1}
            mock.clear_rules()
            assert http.get("/v1/healthz").status_code == 404
            mock.hang(path="/v1/models")
            try:
                http.get("/v1/models", timeout=0.3)
            except httpx.ReadTimeout:
                pass
            else:
                raise AssertionError("a hang rule answered")
            assert mock.wait_for_disconnect(2)
            mock.clear_rules()

            # A stream cut by a RST after N events.
            stream: Any = {**chat, "stream": True}
            lines: list[str] = []
            try:
                with http.stream("POST", "/v1/chat/completions", json=stream, headers={"x-mock-reset-after": "3"}) as resp:
                    lines.extend(line for line in resp.iter_lines() if line)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                pass
            else:
                raise AssertionError("a cut stream ended cleanly")
            assert len(lines) == 3, lines

        # kill(): refused connects and a reset on an old keep-alive connection; revive() on the same port.
        port = mock.port
        old = socket.create_connection(("127.0.0.1", port), timeout=5)
        mock.kill()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("a killed mock accepted a connection")
        try:
            old.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            assert old.recv(100) == b""
        except OSError:
            pass
        old.close()
        mock.revive()
        assert mock.port == port
        assert httpx.get(mock.base_url + "/v1/models", timeout=5).status_code == 200


if __name__ == "__main__":
    _self_check()
