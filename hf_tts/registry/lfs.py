"""Git LFS (batch API, basic transfer, verify) for clients without Xet (`HF_HUB_DISABLE_XET=1`, file objects),
without HTTP.

`batch` answers each object: already uploaded to this repo -> no action (the client skips it); otherwise an upload
action whose URL is signed for (repo, oid, size) and a verify action. The body of the upload is hashed while it is
written to a staging file (constant memory); only an exact sha256 and size match makes it a blob and lets the repo
commit it. A blob held for another repo is not enough: the client proves it has the bytes by sending them, so a
sha256 alone never grants access to another repo's content.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from hf_tts.registry.commit_stream import StagedFile
from hf_tts.registry.errors import RegistryError
from hf_tts.registry.store import Repo, Store
from hf_tts.registry.xet import XetCas

_OID = re.compile(r"^[0-9a-f]{64}$")
MAX_BATCH_OBJECTS = 1000


def check_oid(oid: object) -> str:
    if not isinstance(oid, str) or not _OID.fullmatch(oid):
        raise RegistryError(400, f"LFS oid must be a sha256 (64 lowercase hex digits), got {oid!r}")
    return oid


def check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(400, f"LFS size must be a non-negative integer, got {size!r}")
    return size


class GitLfs:
    def __init__(self, store: Store, cas: XetCas, max_object_bytes: int):
        self.store = store
        self.cas = cas  # for URL signing
        self.max_object_bytes = max_object_bytes

    def batch(self, repo: Repo, body: dict[str, Any], lfs_url: str) -> dict:
        """The answer to `POST {repo}.git/info/lfs/objects/batch` (operation "upload" or "download")."""
        operation = body.get("operation")
        if operation not in ("upload", "download"):
            raise RegistryError(400, f"LFS batch operation must be 'upload' or 'download', got {operation!r}")
        objects = body.get("objects")
        if not isinstance(objects, list) or len(objects) > MAX_BATCH_OBJECTS:
            raise RegistryError(400, f"LFS batch 'objects' must be a list of at most {MAX_BATCH_OBJECTS} items")
        answers = []
        for item in objects:
            if not isinstance(item, dict):
                raise RegistryError(400, "each LFS batch object must be {'oid': ..., 'size': ...}")
            oid, size = check_oid(item.get("oid")), check_size(item.get("size"))
            found = self.store.large_file(repo.id, oid)
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if found is not None and found[0] != size:
                answer["error"] = {"code": 422, "message": f"object {oid} has {found[0]} bytes here, not {size}"}
            elif operation == "upload" and found is None:
                if size > self.max_object_bytes:
                    answer["error"] = {"code": 413, "message": f"object of {size} bytes is over this registry's limit"}
                else:
                    query = self.cas.signed_query("lfs", repo.id, oid, size)
                    answer["actions"] = {
                        "upload": {"href": f"{lfs_url}/objects/{oid}/{size}?{query}", "expires_in": 3600},
                        "verify": {"href": f"{lfs_url}/verify", "expires_in": 3600},
                    }
            elif operation == "download":
                if found is None or found[1] is not None or not self.store.blobs.path(oid).exists():
                    answer["error"] = {"code": 404, "message": f"object {oid} is not stored as an LFS blob here"}
                else:
                    query = self.cas.signed_query("lfs-get", repo.id, oid)
                    answer["actions"] = {"download": {"href": f"{lfs_url}/objects/{oid}?{query}", "expires_in": 3600}}
            answers.append(answer)
        return {"transfer": "basic", "objects": answers, "hash_algo": "sha256"}

    def staging_file(self) -> StagedFile:
        return StagedFile(self.store.tmp / f"lfs-{uuid.uuid4().hex}")

    def accept(self, repo_pk: int, oid: str, size: int, staged: StagedFile, digest: str) -> None:
        """Keep a received body (already fsynced, `digest` its sha256) as the blob `oid` of this repo."""
        if staged.size != size or digest != oid:
            raise RegistryError(
                400,
                f"LFS upload does not match its object: received {staged.size} bytes with sha256 {digest}, "
                f"expected {size} bytes with sha256 {oid}",
            )
        staged.sha256 = oid
        self.store.blobs.put(staged)
        with self.store.write() as conn:
            self.store.link_large_file(conn, repo_pk, oid, size, None)
        self.store.blobs.ensure(staged)

    def verify(self, repo: Repo, body: dict[str, Any]) -> None:
        oid, size = check_oid(body.get("oid")), check_size(body.get("size"))
        found = self.store.large_file(repo.id, oid)
        if found is None or found[0] != size:
            raise RegistryError(404, f"LFS object {oid} ({size} bytes) was not uploaded to {repo.repo_id}")


__all__ = ["GitLfs", "check_oid", "check_size"]
