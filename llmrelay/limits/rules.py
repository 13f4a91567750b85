"""Which counters a request falls under: every `[[limits.rules]]` whose match applies, in config
order, each with the counter of the request's value of the rule's `per`.

A rule matches on globs of the endpoint, model and upstream (fnmatch, case-sensitive), relay key
names and client networks; an empty list matches anything. A rule naming models does not match a
request that names no model unless one of its globs is "*"; a request whose body was too large to
read for its model (`MODEL_UNREAD`) matches every rule naming models (so that "gpt-4o*" is never
bypassed by padding the body past what the relay reads ahead).

Counter keys never hold a secret and never grow without bound: a header value is hashed, and any
client-supplied value (model, header, IP) longer than MAX_KEY is cut and suffixed with a hash of the
whole. The matchers are compiled once per config; a config without rules costs one length check.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from fnmatch import translate
from functools import lru_cache
import msgspec

from llmrelay.config.resolved import ResolvedRule
from llmrelay.limits.types import CounterId, Limits

MAX_KEY = 96  # characters of a client-supplied value kept in a counter key
MAX_IDS = 65536  # counters whose ids are kept made
NONE = "-"  # the key of a request without the value (no relay key, no such header)
MODEL_UNREAD = "\x00unread"  # the model of a body too large to read ahead (never a real name)
PERS = ("relay_key", "client_ip", "endpoint", "upstream", "model", "header")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RequestFacts(msgspec.Struct):
    """What the rules look at, gathered once per request. `relay_key` is the key's name (never its
    value); `upstream` is "" when not chosen yet; header names as received (matched case-blind)."""

    endpoint: str
    model: str | None = None
    relay_key: str | None = None
    client_ip: str = ""
    upstream: str = ""
    headers: list[tuple[bytes, bytes]] = []


Matcher = Callable[[str], object]


def _globs(globs: Sequence[str]) -> Matcher | None:
    """One compiled regex for a list of globs; None: anything matches."""
    if not globs or "*" in globs:
        return None
    return re.compile("|".join(translate(glob) for glob in globs)).match


def bounded(value: str) -> str:
    """`value` as a counter key: as it is when short, else cut and made unique by a hash."""
    if len(value) <= MAX_KEY:
        return value
    return value[: MAX_KEY - 17] + "~" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def hashed(value: bytes) -> str:
    """A header value as a counter key: a hash, the same in every worker and on every machine (the
    counters may live in Redis), so never the value itself (it may be a credential)."""
    return "h:" + hashlib.blake2b(value, digest_size=12, person=b"llmrelay-per-hdr").hexdigest()


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """The client address, an IPv4-mapped IPv6 address as its IPv4 form; None when unparsable."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CompiledRule:
    __slots__ = (
        "name", "version", "limits", "per", "header", "endpoints", "models", "models_need_one", "upstreams", "relay_keys",
        "networks", "matches_all",
    )  # fmt: skip

    def __init__(self, rule: ResolvedRule) -> None:
        if rule.per not in PERS:
            raise ValueError(f"limits rule {rule.name!r}: unknown per {rule.per!r}")
        self.name = rule.name
        self.version = rule.version
        self.limits = rule.limits
        self.per = rule.per
        self.header = rule.per_header.lower().encode("latin-1")
        self.endpoints = _globs(rule.endpoints)
        self.models = _globs(rule.models)
        self.models_need_one = bool(rule.models) and "*" not in rule.models
        self.upstreams = _globs(rule.upstreams)
        self.relay_keys = frozenset(rule.relay_keys) if rule.relay_keys else None
        self.networks: tuple[IPNetwork, ...] | None = (
            tuple(ipaddress.ip_network(cidr, strict=False) for cidr in rule.client_ips) if rule.client_ips else None
        )
        self.matches_all = (
            self.endpoints is None and not self.models_need_one and self.upstreams is None and self.relay_keys is None
            and self.networks is None
        )  # fmt: skip

    def matches(self, facts: RequestFacts) -> bool:
        if self.endpoints is not None and not self.endpoints(facts.endpoint):
            return False
        if self.models_need_one and facts.model is not MODEL_UNREAD:
            if facts.model is None or self.models is None or not self.models(facts.model):
                return False
        if self.upstreams is not None and not (facts.upstream and self.upstreams(facts.upstream)):
            return False
        if self.relay_keys is not None and facts.relay_key not in self.relay_keys:
            return False
        if self.networks is not None:
            address = parse_ip(facts.client_ip)
            if address is None or not any(address in network for network in self.networks):
                return False
        return True

    def key(self, facts: RequestFacts) -> str:
        per = self.per
        if per == "relay_key":
            return facts.relay_key or NONE
        if per == "client_ip":
            return bounded(facts.client_ip) if facts.client_ip else NONE
        if per == "endpoint":
            return facts.endpoint
        if per == "model":
            if facts.model is MODEL_UNREAD:
                return "unread"
            return bounded(facts.model) if facts.model else NONE
        if per == "upstream":
            return facts.upstream or NONE
        values = [value for name, value in facts.headers if name.lower() == self.header]
        return hashed(b", ".join(values)) if values else NONE


class RuleSet:
    """The rules of one config, compiled."""

    __slots__ = ("rules", "need_model", "_ids")

    def __init__(self, rules: Sequence[ResolvedRule]) -> None:
        self.rules = [CompiledRule(rule) for rule in rules]
        # some rule depends on the model: a body too large to be held whole is read ahead for it
        self.need_model = any(rule.models_need_one or rule.per == "model" for rule in self.rules)
        self._ids: dict[tuple[str, str], CounterId] = {}  # (rule, key) -> its counter, made once

    def __bool__(self) -> bool:
        return bool(self.rules)

    def counters(self, facts: RequestFacts) -> list[tuple[CounterId, Limits]]:
        """The counters of every rule that applies to the request, in config order."""
        if not self.rules:
            return []
        found: list[tuple[CounterId, Limits]] = []
        ids = self._ids
        for rule in self.rules:
            if rule.matches_all or rule.matches(facts):
                key = rule.key(facts)
                counter = ids.get((rule.name, key))
                if counter is None:
                    if len(ids) >= MAX_IDS:  # (keys come from clients: the cache stays bounded)
                        ids.clear()
                    counter = ids[(rule.name, key)] = CounterId(rule=rule.name, version=rule.version, key=key)
                found.append((counter, rule.limits))
        return found

    def versions(self) -> set[tuple[str, str]]:
        """(rule, version) of every rule: the counters a reload keeps."""
        return {(rule.name, rule.version) for rule in self.rules}


__all__ = ["MAX_KEY", "MODEL_UNREAD", "RequestFacts", "RuleSet", "bounded", "hashed", "parse_ip"]
