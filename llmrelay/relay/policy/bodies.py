"""Per-provider edits of a decoded JSON request body (sans-IO: dicts in, dicts changed in place).

Shapes handled:
- OpenAI chat completions (`messages`), legacy completions (`prompt`), Responses API (path ending in
  `/responses`: `input`, `instructions`), and any OpenAI-compatible service (`forward`);
- Anthropic messages (`system`, `messages`);
- Gemini `models/NAME:generateContent` / `:streamGenerateContent` (the model and streaming are in the
  path; `systemInstruction`, `contents`, `generationConfig`).
"""

from __future__ import annotations

import re
from typing import Any

_GEMINI_MODEL = re.compile(r"(?P<before>.*/models/)(?P<model>[^/:]+)(?P<after>(?::[^/]*)?)$")
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
SYSTEM_ROLES = ("system", "developer")
TEXT_TYPES = ("text", "input_text")


def is_responses(path: str) -> bool:
    """An OpenAI Responses API request (`POST .../responses`)."""
    return path.rstrip("/").endswith("/responses")


def streaming(provider: str, path: str, body: Any) -> bool:
    if provider == "gemini":
        return ":streamGenerateContent" in path
    return isinstance(body, dict) and body.get("stream") is True


def get_model(provider: str, path: str, body: Any) -> str | None:
    if provider == "gemini":
        match = _GEMINI_MODEL.match(path)
        return match.group("model") if match else None
    if isinstance(body, dict):
        model = body.get("model")
        return model if isinstance(model, str) else None
    return None


def set_gemini_model(path: str, model: str) -> str:
    match = _GEMINI_MODEL.match(path)
    if match is None:
        raise ValueError("this Gemini path names no model")
    return match.group("before") + model + match.group("after")


# -- max tokens ---------------------------------------------------------------------------------


def cap_tokens(provider: str, path: str, body: dict[str, Any], cap: int) -> bool:
    """Lower every output-token limit above `cap` to it; add one when the request sets none (a
    generation request only). Returns whether the body changed."""
    changed = False
    if provider == "gemini":
        config = body.get("generationConfig")
        if config is None and "generation_config" in body:
            config = body["generation_config"]
        if config is None and path.endswith(("GenerateContent", "generateContent")):
            config = body["generationConfig"] = {}
        if isinstance(config, dict):
            for name in ("maxOutputTokens", "max_output_tokens"):
                value = config.get(name)
                if isinstance(value, int) and value > cap:
                    config[name] = cap
                    changed = True
            if "maxOutputTokens" not in config and "max_output_tokens" not in config:
                config["maxOutputTokens"] = cap
                changed = True
        return changed
    present = False
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            present = True
            if value > cap:
                body[name] = cap
                changed = True
    if not present:
        field = _token_field(provider, path, body)
        if field is not None:
            body[field] = cap
            changed = True
    return changed


def _token_field(provider: str, path: str, body: dict[str, Any]) -> str | None:
    """The field a cap is added as when the request sets no limit (None: not a generation request)."""
    if provider == "anthropic":
        return "max_tokens" if "messages" in body else None
    if is_responses(path):
        return "max_output_tokens"
    if "messages" in body or "prompt" in body:
        return "max_tokens"
    return None


# -- system prompt -------------------------------------------------------------------------------


def set_system_prompt(provider: str, path: str, body: dict[str, Any], text: str, mode: str) -> bool:
    """Apply `system_prompt` in `mode` ("prepend", "replace", "if_absent"). Returns whether the body changed."""
    if provider == "anthropic":
        if "messages" not in body:
            return False
        body["system"] = _joined_system(body.get("system"), text, mode, {"type": "text", "text": text})
        return True
    if provider == "gemini":
        if "contents" not in body:
            return False
        key = "system_instruction" if "system_instruction" in body and "systemInstruction" not in body else "systemInstruction"
        current = body.get(key)
        if current and mode == "if_absent":
            return False
        parts: list[Any] = [{"text": text}]
        if mode == "prepend" and isinstance(current, dict) and isinstance(current.get("parts"), list):
            parts += current["parts"]
        body[key] = {"parts": parts}
        return True
    messages = body.get("messages")
    if isinstance(messages, list):
        present = [m for m in messages if isinstance(m, dict) and m.get("role") in SYSTEM_ROLES]
        if present and mode == "if_absent":
            return False
        if mode == "replace":
            messages[:] = [m for m in messages if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
        messages.insert(0, {"role": "system", "content": text})
        return True
    if is_responses(path):
        current = body.get("instructions")
        if current and mode == "if_absent":
            return False
        body["instructions"] = text + "\n\n" + current if mode == "prepend" and isinstance(current, str) and current else text
        return True
    return False


def _joined_system(current: Any, text: str, mode: str, block: dict[str, Any]) -> Any:
    """Anthropic's `system` (a string or a list of blocks) with `text` applied in `mode`."""
    if not current or mode == "replace":
        return text
    if mode == "if_absent":
        return current
    if isinstance(current, list):
        return [block, *current]
    return text + "\n\n" + str(current)


# -- the last user message (rewrite_with) ------------------------------------------------------


def _last_user(provider: str, path: str, body: dict[str, Any]) -> tuple[Any, Any] | None:
    """(container, key) such that container[key] is the content of the last user message."""
    if provider == "gemini":
        contents = body.get("contents")
        if isinstance(contents, list):
            for item in reversed(contents):
                if isinstance(item, dict) and item.get("role", "user") == "user" and isinstance(item.get("parts"), list):
                    return item, "parts"
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        for item in reversed(messages):
            if isinstance(item, dict) and item.get("role") == "user" and "content" in item:
                return item, "content"
        return None
    if provider == "openai" and is_responses(path):
        items = body.get("input")
        if isinstance(items, str):
            return body, "input"
        if isinstance(items, list):
            for item in reversed(items):
                if isinstance(item, dict) and item.get("role") == "user" and "content" in item:
                    return item, "content"
    return None


def _text_of(part: Any) -> str | None:
    if isinstance(part, dict) and isinstance(part.get("text"), str) and part.get("type", "text") in TEXT_TYPES:
        return str(part["text"])
    return None


def last_user_text(provider: str, path: str, body: dict[str, Any]) -> str | None:
    """The text of the last user message (its text parts joined), or None when it has none."""
    found = _last_user(provider, path, body)
    if found is None:
        return None
    content = found[0][found[1]]
    if isinstance(content, str):
        return content or None
    if isinstance(content, list):
        texts = [text for text in map(_text_of, content) if text is not None]
        return "\n".join(texts) if texts else None
    return None


def replace_last_user_text(provider: str, path: str, body: dict[str, Any], text: str) -> None:
    """Put `text` in place of the last user message's text (its other parts, images..., stay)."""
    found = _last_user(provider, path, body)
    if found is None:
        return
    container, key = found
    content = container[key]
    if isinstance(content, str):
        container[key] = text
        return
    out: list[Any] = []
    placed = False
    for part in content:
        if _text_of(part) is None:
            out.append(part)
        elif not placed:
            out.append({**part, "text": text})
            placed = True
    container[key] = out
