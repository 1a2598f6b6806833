"""A local Hub-compatible model registry: the part of the Hub's HTTP API that huggingface_hub 2.x and transformers 5
use to push and load models, served from a folder.

`hf-tts hub serve --root DIR` runs it; clients point `HF_ENDPOINT` at it. Everything is uploaded in "regular" mode
(base64 inside the NDJSON commit, no LFS/Xet), which huggingface_hub supports for any file size.

Storage under `root`:
    blobs/<sha256[:2]>/<sha256>        file bodies, content addressed (shared by every repo and revision)
    models/<namespace>/<name>/
        repo.json                      {"id", "private", "createdAt"}
        commits/<oid>.json             one immutable snapshot: parent, message, date, {path: {sha256, size}}
        refs.json                      {branch: oid}; replaced atomically, so a commit is visible whole or not at all
    tmp/                               uploads being received (cleared at start)

Commit bodies are parsed as a stream: each file's base64 content is decoded straight into a staging file, so memory
stays bounded whatever the upload size. A commit is applied under the repo's lock: it is refused if `parentCommit`
is not the branch head, then the snapshot is written and the branch ref swapped in with one `os.replace`. A client that
disconnects mid-upload leaves nothing behind. Only the standard library is used, so the server starts without
importing torch or transformers. One server process per root (locks are in-process).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

_SEGMENT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_OID = re.compile(r"^[0-9a-f]{40}$")
_CONTENT_KEY = re.compile(rb'"content"\s*:\s*"')
_CHUNK = 1 << 20
_MAX_JSON_BODY = 16 << 20  # create / preupload / validate-yaml bodies are small JSON documents
_MAX_COMMIT_LINE = 1 << 20  # an NDJSON line without its file content
_MAX_DRAIN = 64 << 20  # request bytes read and dropped before answering an error, so the client sees the answer


class RegistryError(Exception):
    """An answer other than 2xx: HTTP status, message, and the `X-Error-Code` huggingface_hub maps to its errors."""

    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code


def validate_repo_id(repo_id: str) -> str:
    """`namespace/name`, each 1-96 characters of letters, digits, `.`, `_`, `-` (no `..`/`--`, no leading dot)."""
    parts = repo_id.split("/")
    if (
        len(parts) != 2
        or not all(_SEGMENT.fullmatch(part) for part in parts)
        or any(".." in part or "--" in part for part in parts)
    ):
        raise RegistryError(
            400, f"invalid repo id {repo_id!r}: use 'namespace/name' with letters, digits, '.', '_' and '-'"
        )
    return repo_id


def validate_repo_path(path: str) -> str:
    """A relative path inside a repo: no absolute paths, no `.`/`..`/empty segments, no backslashes, no `.git`."""
    segments = path.split("/")
    if (
        not path
        or len(path) > 1000
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(segment in ("", ".", "..") for segment in segments)
        or segments[0] == ".git"
    ):
        raise RegistryError(400, f"invalid path in repo {path!r}: paths are relative, without '.', '..' or '//'")
    return path


def validate_branch(branch: str) -> str:
    if not _BRANCH.fullmatch(branch) or ".." in branch or branch.endswith("/") or "//" in branch:
        raise RegistryError(400, f"invalid branch name {branch!r}")
    return branch


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_json_atomic(path: Path, data: Any) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


@dataclass
class StagedFile:
    """A file body received into the staging folder, with its sha256 and size."""

    path: Path
    sha256: str = ""
    size: int = 0


@dataclass
class CommitRequest:
    summary: str = ""
    description: str = ""
    parent_commit: str | None = None
    additions: dict[str, StagedFile] = field(default_factory=dict)
    deletions: list[tuple[str, bool]] = field(default_factory=list)  # (path, is_folder)
    staged: list[StagedFile] = field(default_factory=list)

    def discard(self) -> None:
        for staged in self.staged:
            staged.path.unlink(missing_ok=True)


class _Base64ToFile:
    """Decodes base64 text arriving in pieces into a file, hashing as it goes."""

    def __init__(self, staging_dir: Path):
        self.staged = StagedFile(staging_dir / f"upload-{uuid.uuid4().hex}")
        self._stream: BinaryIO = open(self.staged.path, "wb")  # noqa: SIM115  (closed in finish/abort)
        self._digest = hashlib.sha256()
        self._pending = b""

    def feed(self, text: bytes) -> None:
        data = self._pending + text
        usable = len(data) // 4 * 4
        self._pending = data[usable:]
        self._write(data[:usable])

    def _write(self, text: bytes) -> None:
        try:
            decoded = base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise RegistryError(400, f"file content is not valid base64: {error}") from error
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
        return self.staged

    def abort(self) -> None:
        self._stream.close()
        self.staged.path.unlink(missing_ok=True)


def parse_commit_stream(chunks: Iterator[bytes], staging_dir: Path) -> CommitRequest:
    """Read a commit's NDJSON body. Every `"content": "<base64>"` value is streamed into a staging file instead of
    being kept in the line, so only the small rest of each line is held in memory."""
    request = CommitRequest()
    line = bytearray()
    line_files: list[StagedFile] = []
    pending = b""
    decoder: _Base64ToFile | None = None

    def finish_line() -> None:
        text = bytes(line).strip()
        line.clear()
        files = list(line_files)
        line_files.clear()
        if not text:
            return
        try:
            item = json.loads(text)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as error:
            raise RegistryError(400, f"malformed commit line: {error}") from error
        _apply_commit_line(request, key, value, files)

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
                    finish_line()
                elif match is not None:
                    line.extend(pending[: match.start()] + b'"content": "')
                    pending = pending[match.end() :]
                    decoder = _Base64ToFile(staging_dir)
                else:
                    # Keep a tail that may be the start of `"content": "` split across chunks.
                    keep = min(len(pending), 32)
                    line.extend(pending[: len(pending) - keep])
                    pending = pending[len(pending) - keep :]
                    break
                if len(line) > _MAX_COMMIT_LINE:
                    raise RegistryError(413, "commit line too long")
        if decoder is not None:
            raise RegistryError(400, "commit body ended inside a file's content")
        line.extend(pending)
        finish_line()
    except BaseException:
        if decoder is not None:
            decoder.abort()
        request.discard()
        raise
    return request


def _apply_commit_line(request: CommitRequest, key: str, value: dict, files: list[StagedFile]) -> None:
    if key == "header":
        request.summary = str(value.get("summary") or "")
        request.description = str(value.get("description") or "")
        parent = value.get("parentCommit")
        if parent is not None and not _OID.fullmatch(str(parent)):
            raise RegistryError(400, f"parentCommit {parent!r} is not a commit id")
        request.parent_commit = parent
    elif key == "file":
        path = validate_repo_path(str(value.get("path", "")))
        if value.get("encoding", "base64") != "base64" or len(files) != 1:
            raise RegistryError(400, f"file {path!r}: expected one base64 'content' value")
        request.additions[path] = files[0]
    elif key in ("deletedFile", "deletedFolder"):
        path = str(value.get("path", "")).rstrip("/") if key == "deletedFolder" else str(value.get("path", ""))
        request.deletions.append((validate_repo_path(path), key == "deletedFolder"))
    elif key == "lfsFile":
        raise RegistryError(400, "LFS uploads are not supported: this registry answers 'regular' to every preupload")
    else:
        raise RegistryError(400, f"unsupported commit operation {key!r}")


class RegistryStore:
    """The repos, commits and blobs under one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.blobs = self.root / "blobs"
        self.models = self.root / "models"
        self.tmp = self.root / "tmp"
        for folder in (self.blobs, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        # Uploads interrupted by a previous stop are garbage.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def lock(self, repo_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(repo_id, threading.Lock())

    def repo_dir(self, repo_id: str) -> Path:
        return self.models / validate_repo_id(repo_id)

    def repo(self, repo_id: str) -> dict:
        path = self.repo_dir(repo_id) / "repo.json"
        if not path.is_file():
            raise RegistryError(404, f"repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def refs(self, repo_id: str) -> dict[str, str]:
        return json.loads((self.repo_dir(repo_id) / "refs.json").read_text())

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def create_repo(self, repo_id: str, private: bool) -> bool:
        """Create an empty repo with an initial commit on `main`; False if it already exists."""
        target = self.repo_dir(repo_id)
        if (target / "repo.json").is_file():
            return False
        staging = Path(tempfile.mkdtemp(prefix="repo-", dir=self.tmp))
        try:
            (staging / "commits").mkdir()
            _write_json_atomic(staging / "repo.json", {"id": repo_id, "private": private, "createdAt": _now()})
            oid = self._write_commit(staging, parent=None, files={}, summary="initial commit", description="")
            _write_json_atomic(staging / "refs.json", {"main": oid})
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, target)
            except OSError:
                return False  # created concurrently
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    @staticmethod
    def _write_commit(repo_dir: Path, *, parent: str | None, files: dict, summary: str, description: str) -> str:
        record = {"parent": parent, "files": files, "summary": summary, "description": description, "date": _now()}
        salt = uuid.uuid4().hex  # two identical commits made in the same millisecond still get distinct ids
        oid = hashlib.sha1(json.dumps({**record, "salt": salt}, sort_keys=True).encode()).hexdigest()
        _write_json_atomic(repo_dir / "commits" / f"{oid}.json", {"oid": oid, **record})
        return oid

    def resolve(self, repo_id: str, revision: str) -> str:
        """Branch name or commit id -> commit id."""
        self.repo(repo_id)
        refs = self.refs(repo_id)
        if revision in refs:
            return refs[revision]
        if _OID.fullmatch(revision) and (self.repo_dir(repo_id) / "commits" / f"{revision}.json").is_file():
            return revision
        raise RegistryError(404, f"revision {revision!r} not found in {repo_id}", "RevisionNotFound")

    def commit_record(self, repo_id: str, oid: str) -> dict:
        return json.loads((self.repo_dir(repo_id) / "commits" / f"{oid}.json").read_text())

    def snapshot(self, repo_id: str, revision: str) -> tuple[str, dict[str, dict]]:
        oid = self.resolve(repo_id, revision)
        return oid, self.commit_record(repo_id, oid)["files"]

    def history(self, repo_id: str, revision: str) -> list[dict]:
        oid: str | None = self.resolve(repo_id, revision)
        records = []
        while oid is not None:
            record = self.commit_record(repo_id, oid)
            records.append(record)
            oid = record["parent"]
        return records

    def create_branch(self, repo_id: str, branch: str, starting_point: str | None) -> None:
        validate_branch(branch)
        with self.lock(repo_id):
            refs = self.refs(repo_id)
            if branch in refs:
                raise RegistryError(409, f"branch {branch!r} already exists in {repo_id}")
            refs[branch] = self.resolve(repo_id, starting_point or "main")
            _write_json_atomic(self.repo_dir(repo_id) / "refs.json", refs)

    def commit(self, repo_id: str, branch: str, request: CommitRequest) -> str:
        """Apply a parsed commit to `branch`; returns the new commit id."""
        repo_dir = self.repo_dir(repo_id)
        with self.lock(repo_id):
            refs = self.refs(repo_id)
            if branch not in refs:
                raise RegistryError(404, f"branch {branch!r} not found in {repo_id}", "RevisionNotFound")
            head = refs[branch]
            if request.parent_commit is not None and request.parent_commit != head:
                raise RegistryError(
                    412,
                    f"parentCommit {request.parent_commit} is not the head of {branch} ({head}): the repo changed "
                    "since; refresh and retry",
                )
            files = dict(self.commit_record(repo_id, head)["files"])
            for path, is_folder in request.deletions:
                doomed = [name for name in files if name == path or (is_folder and name.startswith(path + "/"))]
                if not doomed:
                    raise RegistryError(404, f"cannot delete {path!r}: no such file in {branch}", "EntryNotFound")
                for name in doomed:
                    del files[name]
            for path, staged in request.additions.items():
                target = self.blob_path(staged.sha256)
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    staged.path.unlink()
                else:
                    os.replace(staged.path, target)
                files[path] = {"sha256": staged.sha256, "size": staged.size}
            oid = self._write_commit(
                repo_dir, parent=head, files=files, summary=request.summary, description=request.description
            )
            refs[branch] = oid
            _write_json_atomic(repo_dir / "refs.json", refs)
        return oid


def _card_metadata(readme: Path) -> dict:
    """The YAML front matter of a README (for model info's cardData/tags), or {} when there is none."""
    import yaml

    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalHubServer

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's signature)
        if self.server.log_requests:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._body: Iterator[bytes] | None = None
        self._body_complete = False
        try:
            self._route(method)
        except RegistryError as error:
            self._drain_body()
            headers = {"X-Error-Message": error.message}
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
            self._send_json(error.status, {"error": error.message}, headers=headers, head=method == "HEAD")
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as error:  # a bug or a disk error: answer 500 rather than drop the connection
            self.log_error("internal error on %s %s: %r", method, self.path, error)
            self.close_connection = True
            self._send_json(500, {"error": f"internal registry error: {error!r}"}, head=method == "HEAD")

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            # Header values must be latin-1 single lines.
            self.send_header(key, value.encode("latin-1", "replace").decode("latin-1").replace("\n", " "))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body in pieces (Content-Length or chunked); ConnectionError if the client goes away early.
        One reader per request: a second call continues where the first stopped."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _read_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise ConnectionError("client closed the connection mid-request")
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError as error:
                    self.close_connection = True
                    raise RegistryError(400, f"malformed chunk size {size_line[:20]!r}") from error
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    self._body_complete = True
                    return
                yield from self._read_exactly(size)
                self.rfile.readline(1024)
        yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))
        self._body_complete = True

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size:
            piece = self.rfile.read(min(size, _CHUNK))
            if not piece:
                raise ConnectionError("client closed the connection mid-request")
            size -= len(piece)
            yield piece

    def _drain_body(self) -> None:
        """Read and drop the unread rest of the request body (none read yet, or a commit refused mid-body) so the
        error answer reaches the client and the rest is never taken for the next request; close the connection
        instead when more than `_MAX_DRAIN` bytes are left."""
        if self._body is None and int(self.headers.get("Content-Length") or 0) > _MAX_DRAIN:
            self.close_connection = True
            return
        drained = 0
        try:
            for piece in self._body_chunks():
                drained += len(piece)
                if drained > _MAX_DRAIN:
                    break
        except (ConnectionError, RegistryError, ValueError):
            pass
        if not self._body_complete:
            self.close_connection = True

    def _json_body(self) -> Any:
        data = bytearray()
        for piece in self._body_chunks():
            data.extend(piece)
            if len(data) > _MAX_JSON_BODY:
                self.close_connection = True
                raise RegistryError(413, "request body too large")
        try:
            return json.loads(data or b"{}")
        except ValueError as error:
            raise RegistryError(400, f"request body is not JSON: {error}") from error

    # --- access control ---------------------------------------------------------------------------------------------

    def _bearer_token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    def _require_write(self) -> None:
        if self.server.read_only:
            raise RegistryError(403, "this registry is read-only")
        expected = self.server.token
        if expected is None:
            return
        given = self._bearer_token()
        if given is None:
            raise RegistryError(401, "writes to this registry need a token: pass token=... or set HF_TOKEN")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise RegistryError(403, "the token is not valid for writes to this registry")

    def _require_read(self, repo_id: str) -> None:
        repo = self.server.store.repo(repo_id)
        expected = self.server.token
        if repo.get("private") and expected is not None:
            given = self._bearer_token() or ""
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise RegistryError(404, f"repository {repo_id} not found", "RepoNotFound")

    # --- routes -----------------------------------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        segments = [unquote(segment) for segment in split.path.split("/")[1:]]
        query = parse_qs(split.query)
        if segments[:1] == ["api"]:
            api = segments[1:]
            if method == "POST" and api == ["repos", "create"]:
                return self._create_repo()
            if method == "POST" and api == ["validate-yaml"]:
                return self._validate_yaml()
            if len(api) >= 3 and api[0] in ("datasets", "spaces"):
                raise RegistryError(404, f"this registry stores model repos only, not {api[0]}", "RepoNotFound")
            if len(api) >= 3 and api[0] == "models":
                repo_id = validate_repo_id(f"{api[1]}/{api[2]}")
                return self._repo_api(method, repo_id, api[3:], query)
        elif len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = validate_repo_id(f"{segments[0]}/{segments[1]}")
            return self._resolve(repo_id, segments[3], "/".join(segments[4:]), head=method == "HEAD")
        raise RegistryError(404, f"no route for {method} {split.path}")

    def _repo_api(self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        store = self.server.store
        if method == "GET" and not rest:
            return self._model_info(repo_id, "main")
        if method == "GET" and len(rest) == 2 and rest[0] == "revision":
            return self._model_info(repo_id, rest[1])
        if method == "GET" and rest == ["refs"]:
            self._require_read(repo_id)
            refs = store.refs(repo_id)
            branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in refs.items()]
            return self._send_json(200, {"branches": branches, "tags": [], "converts": []})
        if method == "GET" and len(rest) == 2 and rest[0] == "commits":
            self._require_read(repo_id)
            commits = [
                {
                    "id": record["oid"],
                    "title": record["summary"],
                    "message": record["description"],
                    "date": record["date"],
                    "authors": [],
                }
                for record in store.history(repo_id, rest[1])
            ]
            return self._send_json(200, commits)
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            self._require_read(repo_id)
            prefix = "/".join(rest[2:])
            return self._tree(repo_id, rest[1], prefix, recursive=query.get("recursive", ["false"])[0] == "true")
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            self._require_write()
            store.resolve(repo_id, rest[1])
            files = self._json_body().get("files")
            if not isinstance(files, list):
                raise RegistryError(400, "preupload body needs a 'files' list")
            answer = [
                {"path": validate_repo_path(str(item.get("path", ""))), "uploadMode": "regular", "shouldIgnore": False}
                for item in files
            ]
            return self._send_json(200, {"files": answer})
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._commit(repo_id, rest[1], query)
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            self._require_write()
            starting_point = self._json_body().get("startingPoint")
            store.create_branch(repo_id, rest[1], starting_point)
            return self._send_json(200, {})
        raise RegistryError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.url

    def _create_repo(self) -> None:
        self._require_write()
        body = self._json_body()
        if body.get("type") not in (None, "model"):
            raise RegistryError(400, f"this registry stores model repos only, not {body.get('type')!r}")
        namespace, name = body.get("organization"), body.get("name")
        if not namespace:
            raise RegistryError(400, f"repo id {name!r} has no namespace: use 'namespace/name'")
        repo_id = validate_repo_id(f"{namespace}/{name}")
        private = bool(body.get("private")) or body.get("visibility") == "private"
        url = f"{self._base_url()}/{repo_id}"
        if not self.server.store.create_repo(repo_id, private):
            # huggingface_hub's create_repo(exist_ok=True) reads "url" from the 409 answer too.
            return self._send_json(409, {"error": f"repository {repo_id} already exists", "url": url})
        return self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        import yaml

        content = str(self._json_body().get("content", ""))
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        errors = []
        if match:
            try:
                data = yaml.safe_load(match.group(1))
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "the YAML front matter must be a mapping"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML front matter: {error}"})
        if errors:
            return self._send_json(400, {"errors": errors, "warnings": [], "error": errors[0]["message"]})
        return self._send_json(200, {"errors": [], "warnings": []})

    def _model_info(self, repo_id: str, revision: str) -> None:
        store = self.server.store
        self._require_read(repo_id)
        repo = store.repo(repo_id)
        oid, files = store.snapshot(repo_id, revision)
        record = store.commit_record(repo_id, oid)
        card = _card_metadata(store.blob_path(files["README.md"]["sha256"])) if "README.md" in files else {}
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": oid,
            "private": bool(repo.get("private")),
            "disabled": False,
            "gated": False,
            "createdAt": repo.get("createdAt"),
            "lastModified": record["date"],
            "tags": list(card.get("tags") or []),
            "siblings": [{"rfilename": path, "size": meta["size"]} for path, meta in sorted(files.items())],
        }
        if card:
            info["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if key in card:
                    info[key] = card[key]
        return self._send_json(200, info)

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool) -> None:
        _, files = self.server.store.snapshot(repo_id, revision)
        if prefix:
            validate_repo_path(prefix)
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, meta in sorted(files.items()):
            if not path.startswith(base):
                continue
            relative = path[len(base) :].split("/")
            if len(relative) == 1 or recursive:
                entries[path] = {"type": "file", "path": path, "size": meta["size"], "oid": meta["sha256"]}
            for depth in range(1, len(relative) if recursive else min(len(relative), 2)):
                folder = base + "/".join(relative[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": ""})
        if prefix and not entries:
            raise RegistryError(404, f"{prefix!r} not found at {revision}", "EntryNotFound")
        return self._send_json(200, list(entries.values()))

    def _commit(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        self._require_write()
        store = self.server.store
        store.repo(repo_id)
        if query.get("create_pr", ["0"])[0] not in ("0", "false", ""):
            raise RegistryError(400, "pull requests are not supported by this registry; push to a branch instead")
        branch = validate_branch(revision)
        request = parse_commit_stream(self._body_chunks(), store.tmp)
        try:
            oid = store.commit(repo_id, branch, request)
        finally:
            request.discard()  # staged files left over (unchanged blobs, or the whole upload on a refusal)
        return self._send_json(
            200, {"commitUrl": f"{self._base_url()}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
        )

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        store = self.server.store
        self._require_read(repo_id)
        validate_repo_path(path)
        oid, files = store.snapshot(repo_id, revision)
        meta = files.get(path)
        if meta is None:
            self._send_json(
                404,
                {"error": f"{path} not found at {revision}"},
                headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid},
                head=head,
            )
            return
        blob = store.blob_path(meta["sha256"])
        size = meta["size"]
        start, end = 0, size - 1
        status = HTTPStatus.OK
        range_header = self.headers.get("Range")
        if range_header:
            byte_range = _parse_range(range_header, size)
            if byte_range is None:
                self._send_json(416, {"error": "range not satisfiable"}, headers={"Content-Range": f"bytes */{size}"})
                return
            start, end = byte_range
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{meta["sha256"]}"')
        self.send_header("X-Repo-Commit", oid)
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(blob, "rb") as stream:
            stream.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                piece = stream.read(min(remaining, _CHUNK))
                if not piece:
                    break
                self.wfile.write(piece)
                remaining -= len(piece)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range -> inclusive (start, end); None when not satisfiable. Multiple ranges are not supported
    and get the first one only (allowed: a server may answer a subset)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*(,.*)?", header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):
        suffix = int(match.group(2))
        if suffix == 0 or size == 0:
            return None
        return max(size - suffix, 0), size - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class LocalHubServer(ThreadingHTTPServer):
    """The registry server. `serve_in_thread()` for tests and scripts, `serve_forever()` for the CLI."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        root: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        read_only: bool = False,
        log_requests: bool = False,
    ):
        self.store = RegistryStore(root)
        self.token = token or None
        self.read_only = read_only
        self.log_requests = log_requests
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_in_thread(self) -> LocalHubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="hf-tts-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalHubServer:
        return self.serve_in_thread()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Block until a registry at `url` answers (for callers that start it as a subprocess)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/models/health/check", timeout=2)
        except urllib.error.HTTPError:
            return  # any HTTP answer (here 404) means it is serving
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


__all__ = [
    "LocalHubServer",
    "RegistryError",
    "RegistryStore",
    "parse_commit_stream",
    "validate_repo_id",
    "validate_repo_path",
    "wait_until_ready",
]
