"""Shared test helpers: the upstream fixtures folder (skipped when absent unless HF_TTS_REQUIRE_FIXTURES=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hf_tts  # noqa: F401  (registers the Auto classes for every test)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures" / "upstream"


def upstream_fixture(name: str) -> Path:
    """Path of `../shared/fixtures/upstream/<name>`; skip when missing, or fail when HF_TTS_REQUIRE_FIXTURES=1."""
    path = UPSTREAM_FIXTURES / name
    if not path.exists():
        message = f"upstream fixture {path} is missing (expected ../shared/fixtures/upstream beside the project)"
        if os.environ.get("HF_TTS_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return upstream_fixture("")
