"""The registry: a Hub-compatible model and dataset registry (`hf-tts hub serve`).

- `store`   repos, git-like commits/trees and refs in SQL (SQLite under the root, or PostgreSQL); blobs on disk
- `app`     the Hub API as a Starlette app (one route table); `server` runs it under uvicorn with limits
- `auth`    users, organisations, hashed tokens and what each may do
- `commit_stream`  the streaming NDJSON commit parser; `legacy`  import of the older folder-based layout

Nothing here imports torch, transformers or numpy: the server starts in well under a second.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalHubServer", "RegistryError", "Store", "parse_commit_stream", "wait_until_ready"]


def __getattr__(name: str) -> Any:
    # Lazy, so `hf-tts hub token ...` does not import uvicorn/starlette.
    if name in ("LocalHubServer", "wait_until_ready"):
        from hf_tts.registry import server

        return getattr(server, name)
    if name == "Store":
        from hf_tts.registry.store import Store

        return Store
    if name == "RegistryError":
        from hf_tts.registry.errors import RegistryError

        return RegistryError
    if name == "parse_commit_stream":
        from hf_tts.registry.commit_stream import parse_commit_stream

        return parse_commit_stream
    raise AttributeError(f"module 'hf_tts.registry' has no attribute {name!r}")
