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


@pytest.fixture
def local_hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The package's registry (`hf_tts.registry`) on a free loopback port, with huggingface_hub and transformers
    pointed at it, a private HF cache and no saved token. huggingface_hub reads HF_ENDPOINT at import (done above),
    so its module constants are patched; the env vars are set too, for `hf-tts` subprocesses.
    Parametrized indirectly, its parameter is a function of the request returning the database URL (None: SQLite
    under the root)."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants, hf_api

    from hf_tts.registry import LocalHubServer

    database_for = getattr(request, "param", None)
    database = database_for(request) if database_for is not None else None
    server = LocalHubServer(tmp_path / "registry", database=database).serve_in_thread()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers caches an HfApi with the old endpoint
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def private_hash_cache(tmp_path_factory: pytest.TempPathFactory):
    """Hashes the tests compute are remembered in a folder of the test session, never in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TTS_CACHE", str(tmp_path_factory.mktemp("hf_tts-cache")))
        yield
