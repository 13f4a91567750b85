"""Inbound HTTP: the protocol-independent exchange interface, request-head checks, and adapters."""
