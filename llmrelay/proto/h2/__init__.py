"""HTTP/2, sans-IO: the server side of a connection (`connection`: frames `frames`, stream state
`streams`, HPACK `hpack_codec`), the checks and translation of request and response heads
(`request`), and the abuse budgets read off the raw frames (`guard`). The trio glue is
`llmrelay.server.h2`; the upstream (client) side runs on h2 (`llmrelay.upstream.h2connection`)."""
