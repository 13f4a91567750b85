"""llmrelay benchmarks: a fast mock provider, targets (direct, llmrelay, nginx), wrk and SSE clients.

Run from the repository root: `python -m bench` (same as `python bench/run.py`), `python bench/fast_mock.py
--selftest`, `python bench/profiling.py`. See bench/README.md.
"""
