"""Upstream connections: the connection interface and its HTTP/1.1 implementation (`connection`),
HTTP/2 connections and their streams (`h2connection`, scheduled by `h2pool`), the ways to make one
(`dial`: direct, TLS, HTTP proxy, SOCKS5 via `proxies`), and one pool per endpoint (`pool`, scheduled
by `slots`) behind one small interface of ours."""

from llmrelay.upstream.errors import UpstreamError
from llmrelay.upstream.pool import UpstreamExchange, UpstreamPool, UpstreamRequest, UpstreamResponse

__all__ = ["UpstreamError", "UpstreamExchange", "UpstreamPool", "UpstreamRequest", "UpstreamResponse"]
