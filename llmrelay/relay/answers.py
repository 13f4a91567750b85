"""The answers the relay makes itself: its errors in the provider's shape, JSON documents, a whole
response of any kind, an honest cut of a response that already started, and a small request body
read whole. Each one records what it sent in the access record."""

from __future__ import annotations

import time

import msgspec

from llmrelay.proto.errors import ClientDisconnected
from llmrelay.proto.messages import Headers, ResponsePhase
from llmrelay.relay import accesslog
from llmrelay.relay.providers import error_response, sse_error_event
from llmrelay.relay.streams import ActiveResponse
from llmrelay.server.exchange import Exchange


async def cut_response(exchange: Exchange, provider: str, active: ActiveResponse, message: str) -> None:
    """End a response that already started, honestly: an SSE error event when the stream is at
    an event boundary, then an unclean close so no client takes it for complete."""
    if active.sse and active.at_event_boundary and exchange.phase is ResponsePhase.STREAMING:
        try:
            await exchange.send_body(sse_error_event(provider, message))
        except ClientDisconnected:
            pass
    await exchange.abort()

async def read_whole_body(exchange: Exchange, record: accesslog.AccessRecord) -> bytes:
    """A small body of known length, read whole before the upstream request is sent."""
    parts = []
    while True:
        chunk = await exchange.receive_body()
        if chunk:
            parts.append(chunk)
        if exchange.body_complete:
            body = b"".join(parts)
            record.bytes_in += len(body)
            return body
        if not chunk:
            raise ClientDisconnected("request body ended early")

async def send_error(
    exchange: Exchange,
    provider: str,
    status: int,
    message: str,
    record: accesslog.AccessRecord,
    extra_headers: Headers = [],
) -> None:
    headers, body = error_response(provider, status, message)
    await send_whole(exchange, status, headers + extra_headers, body, record)

async def send_json(
    exchange: Exchange,
    status: int,
    payload: object,
    record: accesslog.AccessRecord,
    extra_headers: Headers = [],
) -> None:
    body = msgspec.json.encode(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers
    await send_whole(exchange, status, headers, body, record)

async def send_whole(
    exchange: Exchange, status: int, headers: Headers, body: bytes, record: accesslog.AccessRecord
) -> None:
    if exchange.head.has_body and not exchange.body_complete:
        exchange.close_when_done()  # the unread body would otherwise have to be drained first
    record.status = status
    record.first_byte = time.perf_counter()
    await exchange.send_head(status, headers)
    if exchange.head.method != b"HEAD":
        record.bytes_out += len(body)
        await exchange.end(body)
    else:
        await exchange.end()

