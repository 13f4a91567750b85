"""Hypothesis profiles for the protocol fuzz suite under `fuzz/`.

The fuzz tests are sans-IO properties of the relay's parsers and encoders (request-head guard, routing,
control frames, config loading, relay-key handling). Two profiles are registered: `ci` (the default,
200 examples per test, no per-example deadline so a slow CI machine never flakes) and `dev` (the same
with 2000 examples, for a longer local run). Pick one with `HYPOTHESIS_PROFILE=dev`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
