"""`rewrite_with`: an endpoint of this relay rewrites the last user message before it is forwarded.

The request to the rewriting endpoint is made in-process, through that endpoint's own upstreams,
pools and provider key (no relay key, no listener hop): `prompt` as the system instruction, the
message's text as the user content, not streamed, one attempt. Its paths follow each provider's
convention for a `target_base` with or without the version prefix: `/v1/chat/completions` (OpenAI
and `forward`), `/v1/messages` (Anthropic), `/v1beta/models/MODEL:generateContent` (Gemini).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from llmrelay.config.schema import RewriteSection
from llmrelay.proto.messages import RequestHead
from llmrelay.relay.observer import UpstreamObserver
from llmrelay.upstream.errors import UpstreamError

if TYPE_CHECKING:
    from llmrelay.relay.runtime import EndpointRuntime

MAX_REPLY = 1024 * 1024  # bytes of a rewrite answer read at most
ANTHROPIC_MAX_TOKENS = 4096


class RewriteFailed(Exception):
    pass


def rewrite_request(provider: str, model: str, prompt: str, text: str) -> tuple[str, bytes]:
    """The path (relative to the endpoint) and JSON body asking `provider` to rewrite `text`."""
    payload: dict[str, Any]
    if provider == "anthropic":
        payload = {
            "model": model,
            "max_tokens": ANTHROPIC_MAX_TOKENS,
            "system": prompt,
            "messages": [{"role": "user", "content": text}],
        }
        return "/v1/messages", msgspec.json.encode(payload)
    if provider == "gemini":
        payload = {
            "systemInstruction": {"parts": [{"text": prompt}]},
            "contents": [{"role": "user", "parts": [{"text": text}]}],
        }
        return f"/v1beta/models/{quote(model, safe='')}:generateContent", msgspec.json.encode(payload)
    payload = {
        "model": model,
        "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": text}],
        "stream": False,
    }
    return "/v1/chat/completions", msgspec.json.encode(payload)


def reply_text(provider: str, body: bytes) -> str:
    """The text of a (non-streamed) answer; RewriteFailed when it has none."""
    try:
        reply = msgspec.json.decode(body)
        if provider == "anthropic":
            texts = [block["text"] for block in reply["content"] if block.get("type") == "text"]
        elif provider == "gemini":
            texts = [part["text"] for part in reply["candidates"][0]["content"]["parts"] if "text" in part]
        else:
            content = reply["choices"][0]["message"]["content"]
            texts = [content] if isinstance(content, str) else []
    except (msgspec.DecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise RewriteFailed("the rewrite answer is not a completion this relay can read") from None
    text = "".join(t for t in texts if isinstance(t, str))
    if not text.strip():
        raise RewriteFailed("the rewrite answer holds no text")
    return text


async def ask(
    section: RewriteSection,
    text: str,
    endpoints: Mapping[str, EndpointRuntime],
    observer: UpstreamObserver,
    client: RequestHead,
    request_id: str,
) -> str:
    """`text` rewritten by `section.endpoint` (the caller bounds it by `section.timeout`)."""
    from llmrelay.relay.attempts import Attempts  # (attempts imports the runtime, which builds policies)

    target = endpoints.get(section.endpoint)
    if target is None:
        raise RewriteFailed(f"no endpoint named {section.endpoint!r}")
    path, body = rewrite_request(target.provider, section.model, section.prompt, text)
    now = time.time()
    upstream = target.upstreams.choose(None, now)
    if upstream is None:
        raise RewriteFailed(f"no upstream of endpoint {section.endpoint!r} is usable now")
    key = upstream.pick_key(now) if upstream.injects_key else None
    head = RequestHead(
        method=b"POST",
        target=path.encode("ascii"),
        headers=[(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        http_version=b"1.1",
        scheme=client.scheme,
        client=client.client,
        body_length=len(body),
        has_body=True,
    )
    attempts = Attempts(target, observer, None, body, time.perf_counter())
    request = attempts.request(head, upstream, key, path, "", request_id)
    try:
        async with upstream.pool.stream(request) as response:
            parts: list[bytes] = []
            size = 0
            while True:
                chunk = await response.read_chunk()
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise RewriteFailed(f"the rewrite answer exceeds {MAX_REPLY} bytes")
                if response.complete:
                    break
            status = response.status
    except UpstreamError as exc:
        raise RewriteFailed(exc.message) from None
    if status != 200:
        raise RewriteFailed(f"endpoint {section.endpoint!r} answered {status}")
    return reply_text(target.provider, b"".join(parts))
