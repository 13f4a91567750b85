"""HTTP/2, sans-IO: the server side of a connection (`connection`), the checks and translation of
request and response heads (`request`), and the abuse budgets read off the raw frames (`guard`).
h2 keeps the protocol's state (framing, HPACK, flow control); the trio glue is `llmrelay.server.h2`."""
