"""An example llmrelay processor: tags each request and refuses messages with blocked words.

Options (the processor table's `options`):
- `tag` (string, required): sent upstream as the `x-request-tag` header, and as OpenAI's `user`
  field when the body is an OpenAI chat request without one;
- `blocked_words` (list of strings): a last user message containing one (case-insensitive) is
  answered 400 instead of being forwarded.
"""

from __future__ import annotations

from typing import Any

from llmrelay.relay.policy import ProcessorRequest, Refused
from llmrelay.relay.policy.bodies import last_user_text


class TagAndBlock:
    needs_body = True  # (False would make it a header-only processor: the body is then never read)

    def __init__(self, options: dict[str, Any]) -> None:
        tag = options.get("tag")
        if not isinstance(tag, str) or not tag:
            raise ValueError("options.tag: a non-empty string is required")
        blocked = options.get("blocked_words", [])
        if not isinstance(blocked, list) or not all(isinstance(word, str) for word in blocked):
            raise ValueError("options.blocked_words: a list of strings")
        self.tag = tag
        self.blocked = [word.lower() for word in blocked]

    def process(self, request: ProcessorRequest) -> None:
        request.set_header("x-request-tag", self.tag)
        body = request.body
        if not isinstance(body, dict):
            return
        text = (last_user_text(request.provider, request.path, body) or "").lower()
        for word in self.blocked:
            if word in text:
                raise Refused(400, f"the message contains a blocked word ({word!r})")
        if request.provider == "openai" and "messages" in body and "user" not in body:
            body["user"] = self.tag
