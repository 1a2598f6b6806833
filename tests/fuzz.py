"""Shared hypothesis settings for the property-based tests: bounded so the whole suite stays well within CI's
time. `HF_TTS_FUZZ_EXAMPLES` raises or lowers the example count (e.g. 2000 for a long local run)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ = settings(
    max_examples=int(os.environ.get("HF_TTS_FUZZ_EXAMPLES", "60")),
    deadline=None,  # CI machines are noisy; time is bounded by the example count and the inputs' sizes
    derandomize=True,  # reproducible in CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)
