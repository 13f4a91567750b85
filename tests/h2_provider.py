"""A mock OpenAI provider speaking HTTP/2 over TLS (ALPN "h2" only), for the upstream HTTP/2 tests.

A trio server driving h2 directly, in a background thread with its own trio run, so both pytest-trio
tests and real relay processes can use it. Certificates come from trustme (`ca_path` is the CA's PEM,
for an upstream's `ca_file`). It answers the OpenAI wire formats: `POST .../chat/completions` as JSON
or as an SSE stream (`"stream": true`, ending with `data: [DONE]`), `GET .../models`, and `POST
/echo` (the length and SHA-256 of the body it received).

Request headers steer single requests:

``x-mock-delay: S``          sleep S seconds before the response head
``x-mock-event-delay: S``    sleep S seconds before each SSE event
``x-mock-events: N``         N content deltas ("w0 w1 ...")
``x-mock-stall: 1``          send the head and one event, then nothing (until the client resets)
``x-mock-trailers: 1``       end the response with trailers (``x-mock-trailer: done``)
``x-mock-reset: CODE``       reset the stream without answering (``internal`` or ``refused``)
``x-mock-goaway: after``     GOAWAY naming this stream as the last one, in the same write as the answer
``x-mock-malformed: 1``      answer a head with an upper-case field name (invalid in HTTP/2)

Attributes steer the whole mock: `max_concurrent_streams` (its SETTINGS), `goaway()` (on demand,
thread-safe), `refuse_next` (that many next requests to reach their answer get a GOAWAY naming the stream before theirs; `answering` counts the requests already past that point)
and no answer: they were never processed). It counts what the tests assert on: `connections`, `streams` (per connection in
`streams_per_connection`), `max_active` (the most streams open at once on one connection, counted
from a request's HEADERS to the END_STREAM or reset of its answer being queued), `active` (open now), `client_resets` (RST_STREAM received), and keeps a record per request in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from mock_providers import _Handler, _openai_events
import trustme


@dataclass
class H2Request:
    method: str
    path: str
    headers: dict[str, str]
    connection: int  # index of the connection it came on
    stream_id: int
    body_length: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    protocol: str = "HTTP/2"
    body: bytes = b""  # kept up to 1 MiB (larger bodies are only counted and hashed)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Stream:
    def __init__(self, request: H2Request) -> None:
        self.request = request
        self.scope = trio.CancelScope()
        self.done = False


class _Connection:
    def __init__(self, provider: H2Provider, index: int, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.provider = provider
        self.index = index
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config)
        self.lock = trio.Lock()
        self.window = trio.Event()
        self.streams: dict[int, _Stream] = {}
        self.active = 0
        self.going_away = False
        self.last_stream_id = 2**31 - 1

    async def flush(self) -> None:
        async with self.lock:
            data = self.h2.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    def goaway(self, last_stream_id: int | None = None) -> None:
        last = self.h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self.h2.close_connection(last_stream_id=last)
        # h2 takes its own GOAWAY as the end: keep the streams up to `last` going (RFC 9113 6.8).
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        self.going_away = True
        self.last_stream_id = last

    def finished(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.done:
            stream.done = True
            self.active -= 1
            self.provider.active -= 1

    async def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                return
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0 and view:
                await self.window.wait()
                continue
            last = size == len(view)
            self.h2.send_data(stream_id, bytes(view[:size]), end_stream=end and last)
            if end and last:
                self.finished(stream_id)  # (before the write: the client may open the next one at once)
            await self.flush()
            view = view[size:]
            if last:
                return


class H2Provider:
    def __init__(self, max_concurrent_streams: int = 100) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self._context)
        self._context.set_alpn_protocols(["h2"])
        self._dir = tempfile.TemporaryDirectory(prefix="h2-provider-")
        self.ca_path = Path(self._dir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self.port = 0
        self.connections = 0
        self.streams = 0
        self.streams_per_connection: Counter[int] = Counter()
        self.max_active = 0
        self.active = 0
        self.client_resets = 0
        self.requests: list[H2Request] = []
        self._open: list[_Connection] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._nursery: trio.Nursery | None = None
        self.refuse_next = 0
        self.refused = 0
        self.answering = 0  # requests whose answer has begun (past the `refuse_next` check)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> H2Provider:
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True, name="h2-provider")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the HTTP/2 mock provider did not start")
        return self

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            try:
                self._token.run_sync_soon(self._cancel.cancel)  # (thread-safe, from any thread, trio's too)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(10)
        self._dir.cleanup()

    def __enter__(self) -> H2Provider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def goaway(self) -> None:
        """GOAWAY on every open connection, naming the last stream received (thread-safe; returns
        once the frames are queued)."""
        assert self._token is not None
        done = threading.Event()
        self._token.run_sync_soon(self._goaway_all, done)
        done.wait(5)

    def _goaway_all(self, done: threading.Event) -> None:
        for connection in self._open:
            connection.goaway()
            assert self._nursery is not None
            self._nursery.start_soon(connection.flush)
        done.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._cancel = nursery.cancel_scope
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            self._started.set()

    # -- one connection -----------------------------------------------------------------------------------
    async def _serve(self, tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, self._context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        index = self.connections
        self.connections += 1
        connection = _Connection(self, index, tls)
        state = connection.h2
        state.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams}
        )
        state.initiate_connection()
        self._open.append(connection)
        try:
            await connection.flush()
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        data = await tls.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    try:
                        events = state.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        await connection.flush()
                        break
                    for event in events:
                        self._handle(connection, nursery, event)
                    await connection.flush()
                    # (after a GOAWAY the client closes once its streams are done: closing here
                    # with its bytes unread would reset the connection under the last answers)
                nursery.cancel_scope.cancel()
        finally:
            self._open.remove(connection)
            for stream_id in list(connection.streams):
                connection.finished(stream_id)
            await trio.aclose_forcefully(tls)

    def _handle(self, connection: _Connection, nursery: trio.Nursery, event: h2.events.Event) -> None:
        state = connection.h2
        if isinstance(event, h2.events.RequestReceived):
            stream_id = event.stream_id or 0
            headers = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers or ()}
            request = H2Request(headers.get(":method", ""), headers.get(":path", ""), headers, connection.index, stream_id)
            connection.streams[stream_id] = _Stream(request)
            self.streams += 1
            self.streams_per_connection[connection.index] += 1
            connection.active += 1
            self.active += 1
            self.max_active = max(self.max_active, connection.active)
        elif isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id or 0
            stream = connection.streams.get(stream_id)
            data = event.data or b""
            if stream is not None:
                request = stream.request
                request.body_length += len(data)
                request.digest.update(data)
                if len(request.body) < 1 << 20:
                    request.body += data
            state.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = connection.streams.get(event.stream_id or 0)
            if stream is not None:
                self.requests.append(stream.request)
                nursery.start_soon(self._respond, connection, stream)
        elif isinstance(event, h2.events.StreamReset):
            self.client_resets += 1
            stream = connection.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.scope.cancel()
                connection.finished(event.stream_id or 0)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            connection.window.set()
            connection.window = trio.Event()

    # -- one response ---------------------------------------------------------------------------------------
    async def _respond(self, connection: _Connection, stream: _Stream) -> None:
        request = stream.request
        with stream.scope:
            try:
                await self._answer(connection, request)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
        connection.finished(request.stream_id)

    async def _answer(self, connection: _Connection, request: H2Request) -> None:
        state = connection.h2
        stream_id = request.stream_id
        options = request.headers
        if self.refuse_next > 0:
            self.refuse_next -= 1
            self.refused += 1
            connection.goaway(stream_id - 2)
            await connection.flush()
            return
        self.answering += 1
        if options.get("x-mock-goaway") == "after":
            connection.goaway(stream_id)  # (it leaves in one write with the answer's frames)
        reset = options.get("x-mock-reset")
        if reset:
            code = h2.errors.ErrorCodes.REFUSED_STREAM if reset == "refused" else h2.errors.ErrorCodes.INTERNAL_ERROR
            state.reset_stream(stream_id, code)
            connection.finished(stream_id)
            await connection.flush()
            return
        await trio.sleep(float(options.get("x-mock-delay", "0")))
        if options.get("x-mock-malformed"):
            state.send_headers(stream_id, [(b":status", b"200"), (b"X-Upper-Case", b"1")])
            await connection.flush()
            return
        path = request.path.split("?", 1)[0]
        if request.method == "POST" and path.endswith("/chat/completions"):
            await self._chat(connection, request)
        elif request.method == "POST" and path == "/echo":
            body = json.dumps({"length": request.body_length, "sha256": request.digest.hexdigest()}).encode()
            await self._send_whole(connection, stream_id, 200, body, "application/json")
        elif request.method == "GET" and path.endswith("/models"):
            body = json.dumps({"object": "list", "data": [{"id": "gpt-mock", "object": "model", "created": 0, "owned_by": "mock"}]})
            await self._send_whole(connection, stream_id, 200, body.encode(), "application/json")
        else:
            error = {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}}
            await self._send_whole(connection, stream_id, 404, json.dumps(error).encode(), "application/json")

    async def _send_whole(self, connection: _Connection, stream_id: int, status: int, body: bytes, kind: str) -> None:
        headers = [(b":status", str(status).encode()), (b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
        connection.h2.send_headers(stream_id, headers)
        await connection.send_data(stream_id, body, True)

    async def _chat(self, connection: _Connection, request: H2Request) -> None:
        state = connection.h2
        stream_id = request.stream_id
        options = request.headers
        body = request.json() or {}
        model = body.get("model", "gpt-mock")
        count = int(options.get("x-mock-events", "0"))
        pieces = [f"w{i}" + (" " if i < count - 1 else "") for i in range(count)] or ["Hello from mock h2"]
        trailers = options.get("x-mock-trailers")
        if not body.get("stream"):
            completion = _completion(body, model, pieces)
            payload = json.dumps(completion).encode()
            headers = [(b":status", b"200"), (b"content-type", b"application/json")]
            if not trailers:
                headers.append((b"content-length", str(len(payload)).encode()))
            state.send_headers(stream_id, headers)
            await connection.send_data(stream_id, payload, not trailers)
            if trailers:
                state.send_headers(stream_id, [(b"x-mock-trailer", b"done")], end_stream=True)
                connection.finished(stream_id)
                await connection.flush()
            return
        state.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")])
        await connection.flush()
        event_delay = float(options.get("x-mock-event-delay", "0"))
        for number, event in enumerate(_events(body, model, pieces)):
            if event_delay:
                await trio.sleep(event_delay)
            await connection.send_data(stream_id, event, False)
            if number == 0 and options.get("x-mock-stall"):
                await trio.sleep_forever()
        if trailers:
            state.send_headers(stream_id, [(b"x-mock-trailer", b"done")], end_stream=True)
            connection.finished(stream_id)
            await connection.flush()
        else:
            await connection.send_data(stream_id, b"", True)


def _completion(body: dict[str, Any], model: str, pieces: list[str]) -> dict[str, Any]:
    """The OpenAI chat completion: the same as the HTTP/1.1 mock provider's."""
    return _Handler._openai_completion(body, model, pieces)


def _events(body: dict[str, Any], model: str, pieces: list[str]) -> list[bytes]:
    """The OpenAI stream, event by event: the same as the HTTP/1.1 mock provider's."""
    return list(_openai_events(body, model, pieces))
