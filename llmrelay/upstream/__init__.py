"""Upstream connections: one pool per endpoint, behind one small interface of ours."""

from llmrelay.upstream.errors import UpstreamError
from llmrelay.upstream.pool import UpstreamPool, UpstreamRequest, UpstreamResponse

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamRequest", "UpstreamResponse"]
