"""The relay: routing, credentials, header rewriting, provider error shapes, and the request handler."""
