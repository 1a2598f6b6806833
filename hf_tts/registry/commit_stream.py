"""The NDJSON body of `POST /api/{type}s/{repo}/commit/{rev}`, parsed as a stream.

huggingface_hub sends one JSON object per line: a `header` (summary, description, parentCommit), then one line per
operation (`file` with base64 `content`, `deletedFile`, `deletedFolder`, `lfsFile`). A `file` line holds the whole
file, so every `"content": "<base64>"` value is decoded straight into a staging file while it arrives; only the
small rest of each line is kept in memory, and that rest is capped (`max_line_bytes`: a 200 MB summary must not
take the server down). Operations keep their order: an add and a delete of one path in one commit are applied as
sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hf_tts.registry.errors import RegistryError, looks_like_commit_id, validate_repo_path

_CONTENT_KEY = re.compile(rb'"content"\s*:\s*"')
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_LINE_BYTES = 1 << 20  # a commit line without its file content: paths, messages
_HASH_CHUNK = 1 << 20


@dataclass
class StagedFile:
    """A file body received into the staging folder, with the hashes the registry needs: sha256 (the blob's name
    on disk) and the git blob sha1 (what the Hub reports as ETag / tree oid for regular files)."""

    path: Path
    sha256: str = ""
    sha1: str = ""
    size: int = 0


@dataclass
class Operation:
    kind: str  # "add" | "delete"
    path: str
    staged: StagedFile | None = None
    is_folder: bool = False
    lfs_oid: str | None = None  # an `lfsFile` line: the sha256 of content uploaded beforehand
    lfs_size: int | None = None
    entry: Any = None  # the store's Entry for an lfsFile, once resolved against the repo's uploads


@dataclass
class CommitRequest:
    summary: str = ""
    description: str = ""
    parent_commit: str | None = None
    operations: list[Operation] = field(default_factory=list)
    staged: list[StagedFile] = field(default_factory=list)

    def discard(self) -> None:
        """Remove the staging files that were not moved into the blob store."""
        for staged in self.staged:
            staged.path.unlink(missing_ok=True)


def git_blob_sha1(path: Path, size: int) -> str:
    """git's object id of a file: sha1 over `blob <size>\\0` + content (what `hf cache verify` recomputes)."""
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as stream:
        while piece := stream.read(_HASH_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


class _Base64ToFile:
    """Decodes base64 text arriving in pieces into a file, hashing as it goes."""

    def __init__(self, staging_dir: Path, budget: list[int]):
        self.staged = StagedFile(staging_dir / f"upload-{uuid.uuid4().hex}")
        self._stream: BinaryIO = open(self.staged.path, "wb")  # noqa: SIM115  (closed in finish/abort)
        self._digest = hashlib.sha256()
        self._pending = b""
        self._budget = budget  # bytes of file content this request may still write (shared by its files)

    def feed(self, text: bytes) -> None:
        data = self._pending + text
        usable = len(data) // 4 * 4
        self._pending = data[usable:]
        if usable:
            self._write(data[:usable])

    def _write(self, text: bytes) -> None:
        try:
            decoded = base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise RegistryError(400, f"file content is not valid base64: {error}") from error
        self._budget[0] -= len(decoded)
        if self._budget[0] < 0:
            raise RegistryError(413, "commit is larger than this registry accepts (--max-upload-bytes)")
        self._digest.update(decoded)
        self.staged.size += len(decoded)
        self._stream.write(decoded)

    def finish(self) -> StagedFile:
        if self._pending:
            raise RegistryError(400, "file content is not valid base64: truncated")
        # On disk before the commit that references it becomes visible.
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        self.staged.sha256 = self._digest.hexdigest()
        self.staged.sha1 = git_blob_sha1(self.staged.path, self.staged.size)
        return self.staged

    def abort(self) -> None:
        self._stream.close()
        self.staged.path.unlink(missing_ok=True)


def parse_commit_stream(
    chunks: Iterator[bytes],
    staging_dir: Path,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_upload_bytes: int = 1 << 40,
) -> CommitRequest:
    """Read a commit's NDJSON body from `chunks`. File contents go to staging files under `staging_dir`; on any
    error every staging file of this request is removed before the error propagates."""
    request = CommitRequest()
    line = bytearray()
    line_files: list[StagedFile] = []
    pending = b""
    decoder: _Base64ToFile | None = None
    budget = [max_upload_bytes]

    def finish_line() -> None:
        text = bytes(line).strip()
        line.clear()
        files = list(line_files)
        line_files.clear()
        if not text:
            return
        try:
            item = json.loads(text)
        except ValueError as error:
            raise RegistryError(400, f"malformed commit line: {error}") from error
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("key"), str)
            or not isinstance(item.get("value"), dict)
        ):
            raise RegistryError(400, 'malformed commit line: expected {"key": str, "value": {...}}')
        _apply_line(request, item["key"], item["value"], files)

    try:
        for chunk in chunks:
            pending += chunk
            while pending:
                if decoder is not None:
                    end = pending.find(b'"')
                    if b"\\" in (pending if end == -1 else pending[:end]):
                        raise RegistryError(400, "file content must be plain base64 (no JSON escapes)")
                    if end == -1:
                        decoder.feed(pending)
                        pending = b""
                        break
                    decoder.feed(pending[:end])
                    staged = decoder.finish()
                    decoder = None
                    request.staged.append(staged)
                    line_files.append(staged)
                    line.extend(b'"')
                    pending = pending[end + 1 :]
                    continue
                match = _CONTENT_KEY.search(pending)
                newline = pending.find(b"\n")
                if newline != -1 and (match is None or newline < match.start()):
                    line.extend(pending[:newline])
                    pending = pending[newline + 1 :]
                    _check_line(line, max_line_bytes)
                    finish_line()
                elif match is not None:
                    line.extend(pending[: match.start()] + b'"content": "')
                    pending = pending[match.end() :]
                    _check_line(line, max_line_bytes)
                    decoder = _Base64ToFile(staging_dir, budget)
                else:
                    # Keep a tail that may be the start of `"content": "` split across chunks.
                    keep = min(len(pending), 32)
                    line.extend(pending[: len(pending) - keep])
                    pending = pending[len(pending) - keep :]
                    _check_line(line, max_line_bytes)
                    break
        if decoder is not None:
            raise RegistryError(400, "commit body ended inside a file's content")
        line.extend(pending)
        _check_line(line, max_line_bytes)
        finish_line()
    except BaseException:
        if decoder is not None:
            decoder.abort()
        request.discard()
        raise
    return request


def _check_line(line: bytearray, max_line_bytes: int) -> None:
    if len(line) > max_line_bytes:
        raise RegistryError(413, f"a commit line (without file content) is longer than {max_line_bytes} bytes")


def _string(value: dict, key: str, default: str | None = None) -> str:
    item = value.get(key, default)
    if not isinstance(item, str):
        raise RegistryError(400, f"commit line field {key!r} must be a string, got {type(item).__name__}")
    return item


def _apply_line(request: CommitRequest, key: str, value: dict, files: list[StagedFile]) -> None:
    if key != "file" and files:
        raise RegistryError(400, f"commit line {key!r} carries a 'content' value; only 'file' lines do")
    if key == "header":
        request.summary = _string(value, "summary", "")
        request.description = _string(value, "description", "") if value.get("description") is not None else ""
        parent = value.get("parentCommit")
        if parent is not None and not (isinstance(parent, str) and looks_like_commit_id(parent)):
            raise RegistryError(400, f"parentCommit {parent!r} is not a commit id")
        request.parent_commit = parent
    elif key == "file":
        path = validate_repo_path(_string(value, "path"))
        if value.get("encoding", "base64") != "base64" or len(files) != 1:
            raise RegistryError(400, f"file {path!r}: expected one base64 'content' value")
        request.operations.append(Operation("add", path, files[0]))
    elif key in ("deletedFile", "deletedFolder"):
        path = _string(value, "path")
        is_folder = key == "deletedFolder"
        request.operations.append(
            Operation("delete", validate_repo_path(path.rstrip("/") if is_folder else path), None, is_folder)
        )
    elif key == "lfsFile":
        path = validate_repo_path(_string(value, "path"))
        oid = value.get("oid")
        if value.get("algo", "sha256") != "sha256" or not (isinstance(oid, str) and _SHA256.fullmatch(oid)):
            raise RegistryError(400, f"lfsFile {path!r}: 'oid' must be a sha256 (64 lowercase hex digits), got {oid!r}")
        size = value.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise RegistryError(400, f"lfsFile {path!r}: 'size' must be a non-negative integer, got {size!r}")
        request.operations.append(Operation("add", path, lfs_oid=oid, lfs_size=size))
    else:
        raise RegistryError(400, f"unsupported commit operation {key!r}")
