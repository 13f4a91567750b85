"""An endpoint's `[[processors]]` compiled into steps (sans-IO except `rewrite_with`, run by `endpoint`).

Each processor table becomes one step per kind of key it holds, in this fixed order: the streaming
gate (`allow_streaming`, `allow_non_streaming`), the request header edits (`set_headers`,
`remove_headers`), the model (`default_model`, then `model_map`, then `allowed_models` on the
result), `max_tokens_cap`, `system_prompt`, `rewrite_with`, `plugin`. Tables apply in their order
in the file. The response header edits of every table are folded into one net edit.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from llmrelay.config.schema import ProcessorSection, RewriteSection
from llmrelay.proto.messages import Headers
from llmrelay.relay.policy import bodies
from llmrelay.relay.policy.plugins import PluginError, Processor, load_plugin, needs_body
from llmrelay.relay.policy.request import (
    PROTECTED_REQUEST,
    PROTECTED_RESPONSE,
    ProcessorRequest,
    Refused,
    header_name_problem,
    header_value_problem,
)


class Step:
    needs_body = True  # whether the decoded JSON body must be read first (per provider)

    def apply(self, request: ProcessorRequest) -> None:
        raise NotImplementedError


class StreamGate(Step):
    def __init__(self, provider: str, allow_streaming: bool, allow_non_streaming: bool) -> None:
        self.needs_body = provider != "gemini"  # (Gemini streams on its own path)
        self.allow_streaming = allow_streaming
        self.allow_non_streaming = allow_non_streaming

    def apply(self, request: ProcessorRequest) -> None:
        if request.body is None and request.provider != "gemini":
            return  # (no generation request: nothing is streamed or not)
        if request.streaming:
            if not self.allow_streaming:
                raise Refused(400, "streaming is not allowed on this endpoint")
        elif not self.allow_non_streaming:
            raise Refused(400, "only streaming requests are allowed on this endpoint (set \"stream\": true)")


class HeaderEdit(Step):
    needs_body = False

    def __init__(self, set_headers: dict[str, str], remove_headers: list[str]) -> None:
        self.removed = frozenset(name.lower().encode("latin-1") for name in (*remove_headers, *set_headers))
        self.added: Headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in set_headers.items()]

    def apply(self, request: ProcessorRequest) -> None:
        removed = self.removed
        request.raw_headers[:] = [field for field in request.raw_headers if field[0] not in removed]
        request.raw_headers.extend(self.added)


class ModelPolicy(Step):
    def __init__(
        self, provider: str, default_model: str | None, model_map: dict[str, str], allowed: list[str] | None
    ) -> None:
        self.needs_body = provider != "gemini"  # (Gemini names the model in the path)
        self.default_model = default_model
        self.model_map = model_map
        self.allowed = re.compile("|".join(fnmatch.translate(glob) for glob in allowed)) if allowed is not None else None

    def apply(self, request: ProcessorRequest) -> None:
        gemini = request.provider == "gemini"
        if not gemini and not isinstance(request.body, dict):
            if self.allowed is not None and request.opaque_body:
                raise Refused(403, "the model of this request cannot be checked (its body is not a JSON object)")
            return
        model = request.model
        if model is None and self.default_model is not None and not gemini:
            request.model = model = self.default_model
        if model is not None and model in self.model_map:
            request.model = model = self.model_map[model]
        if self.allowed is not None:
            if model is None:
                if not gemini:
                    raise Refused(403, "this endpoint requires a model from its allowed list")
            elif not self.allowed.fullmatch(model):
                raise Refused(403, f"model {model!r} is not allowed on this endpoint")


class TokenCap(Step):
    def __init__(self, cap: int) -> None:
        self.cap = cap

    def apply(self, request: ProcessorRequest) -> None:
        if isinstance(request.body, dict) and bodies.cap_tokens(request.provider, request.path, request.body, self.cap):
            request.changed = True


class SystemPrompt(Step):
    def __init__(self, text: str, mode: str) -> None:
        self.text = text
        self.mode = mode

    def apply(self, request: ProcessorRequest) -> None:
        body = request.body
        if isinstance(body, dict) and bodies.set_system_prompt(request.provider, request.path, body, self.text, self.mode):
            request.changed = True


class RewriteStep(Step):
    """`rewrite_with`: asynchronous (it asks another endpoint); run by `endpoint`, not by `apply`."""

    def __init__(self, section: RewriteSection) -> None:
        self.section = section


class PluginStep(Step):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.processor: Processor = load_plugin(name, options)
        self.needs_body = needs_body(self.processor)

    def apply(self, request: ProcessorRequest) -> None:
        self.processor.process(request)
        if self.needs_body and request.body is not None:
            request.changed = True  # (a plugin's edits cannot be seen: the body is encoded again)


def compile_steps(section: ProcessorSection, provider: str) -> list[Step]:
    provider = "openai" if provider == "forward" else provider
    steps: list[Step] = []
    if section.allow_streaming is not None or section.allow_non_streaming is not None:
        steps.append(StreamGate(provider, section.allow_streaming is not False, section.allow_non_streaming is not False))
    if section.set_headers or section.remove_headers:
        steps.append(HeaderEdit(section.set_headers, section.remove_headers))
    if section.default_model is not None or section.model_map or section.allowed_models is not None:
        steps.append(ModelPolicy(provider, section.default_model, section.model_map, section.allowed_models))
    if section.max_tokens_cap is not None:
        steps.append(TokenCap(section.max_tokens_cap))
    if section.system_prompt is not None:
        steps.append(SystemPrompt(section.system_prompt, section.mode))
    if section.rewrite_with is not None:
        steps.append(RewriteStep(section.rewrite_with))
    if section.plugin is not None:
        steps.append(PluginStep(section.plugin, section.options))
    return steps


def response_edit(sections: list[ProcessorSection]) -> tuple[frozenset[bytes], Headers]:
    """The net effect of every table's `set_response_headers` / `remove_response_headers`, in order:
    the names removed from the response head, and the fields added to it."""
    final: dict[bytes, bytes | None] = {}
    for section in sections:
        for name in section.remove_response_headers:
            final[name.lower().encode("latin-1")] = None
        for name, value in section.set_response_headers.items():
            final[name.lower().encode("latin-1")] = value.encode("latin-1")
    added = [(name, value) for name, value in final.items() if value is not None]
    return frozenset(final), added


def section_problem(section: ProcessorSection) -> str | None:
    """Why a processor table cannot be used (checked when the config is loaded), or None."""
    if not _has_request_keys(section) and not section.set_response_headers and not section.remove_response_headers:
        return "a processor must hold at least one processor key"
    if section.options and section.plugin is None:
        return "options are for a plugin (no plugin is named)"
    if section.allow_streaming is False and section.allow_non_streaming is False:
        return "allow_streaming and allow_non_streaming cannot both be false"
    for key, names, values, protected in (
        ("set_headers", list(section.set_headers), list(section.set_headers.values()), PROTECTED_REQUEST),
        ("remove_headers", section.remove_headers, [], PROTECTED_REQUEST),
        ("set_response_headers", list(section.set_response_headers), list(section.set_response_headers.values()), PROTECTED_RESPONSE),
        ("remove_response_headers", section.remove_response_headers, [], PROTECTED_RESPONSE),
    ):
        for name in names:
            problem = header_name_problem(name, protected)
            if problem is not None:
                return f"{key}: {problem}"
        for value in values:
            problem = header_value_problem(value)
            if problem is not None:
                return f"{key}: {problem}"
    if section.plugin is not None:
        try:
            load_plugin(section.plugin, section.options)
        except PluginError as exc:
            return str(exc)
    return None


def _has_request_keys(section: ProcessorSection) -> bool:
    """Whether the table holds some request processor key."""
    return bool(
        section.allow_streaming is not None
        or section.allow_non_streaming is not None
        or section.set_headers
        or section.remove_headers
        or section.default_model is not None
        or section.model_map
        or section.allowed_models is not None
        or section.max_tokens_cap is not None
        or section.system_prompt is not None
        or section.rewrite_with is not None
        or section.plugin is not None
    )
