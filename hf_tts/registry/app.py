"""The registry's HTTP side: the part of the Hub API that huggingface_hub, its `hf` CLI, transformers and datasets
use, as a Starlette app. `ROUTES` is the whole surface; each handler translates HTTP into calls on `Store` / `Auth`
(which know nothing of HTTP) and back.

Paths are matched on the raw (still percent-encoded) request path: huggingface_hub quotes revisions with
`safe=""`, so `refs%2Fpr%2F1` or `feature%2Fx` is one segment, and decoding before matching would split it.
Database work runs in worker threads; file bodies stream from disk and into staging files, never whole in memory.
Answers never echo the Host header: every URL is built from the configured public URL.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fnmatch
import gzip
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hf_tts.registry import web
from hf_tts.registry.auth import AccessPolicy, Auth, Principal
from hf_tts.registry.cards import card_tags, front_matter
from hf_tts.registry.commit_stream import MAX_LINE_BYTES, parse_commit_stream
from hf_tts.registry.errors import RegistryError, validate_repo_id, validate_repo_path, validate_repo_type
from hf_tts.registry.store import LRU, Commit, Entry, Repo, Store, Tree, is_large_file, lfs_pointer

logger = logging.getLogger("hf_tts.registry")

_KINDS = {"models": "model", "datasets": "dataset"}
_TREE_PAGE = 1000
_TREE_PAGE_EXPANDED = 50
_COMMITS_PAGE = 100
_LIST_PAGE = 1000
_INLINE_BODY = 256 << 10  # bodies up to this size are read in one piece; larger ones stream in `_STREAM_CHUNK`s
_STREAM_CHUNK = 1 << 20
_GZIP_ABOVE = 16 << 10  # model_info answers larger than this are also served gzipped


@dataclass
class AppSettings:
    public_url: str
    max_upload_bytes: int = 64 << 30
    max_line_bytes: int = MAX_LINE_BYTES
    max_json_bytes: int = 8 << 20
    body_timeout: float = 60.0  # seconds a request body may stall between two pieces
    xet_token_ttl: float = 900.0  # seconds a Xet CAS token lives (clients refresh it)


class Registry:
    """What the handlers share: the store, the access rules, the settings and the caches of immutable answers."""

    def __init__(self, store: Store, policy: AccessPolicy, settings: AppSettings):
        self.store = store
        self.auth = Auth(store, policy)
        self.settings = settings
        self.cards = LRU(256)  # commit id -> README metadata at that commit
        self.infos = LRU(64)  # (commit, repo state, blobs) -> the model_info / dataset_info answer
        self.folder_oids = LRU(4096)  # (commit id, folder) -> tree oid
        from hf_tts.registry.lfs import GitLfs
        from hf_tts.registry.xet import XetCas

        self.cas = XetCas(store, settings.xet_token_ttl)
        self.lfs = GitLfs(store, self.cas, settings.max_upload_bytes)

    def url(self, repo: Repo | None = None, *parts: str) -> str:
        base = self.settings.public_url.rstrip("/")
        if repo is None:
            return base
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return "/".join([f"{base}/{prefix}{repo.repo_id}", *parts]) if parts else f"{base}/{prefix}{repo.repo_id}"

    def card(self, commit: Commit) -> dict:
        cached = self.cards.get(commit.id)
        if cached is None:
            entry = self.store.entry(commit, "README.md")
            cached = self.store.entry_card(entry)
            self.cards.put(commit.id, cached)
        return cached

    def folder_oid(self, commit: Commit, tree: Tree, folder: str) -> str:
        """A stable id for a folder's content (the Hub gives git tree ids; clients only compare them)."""
        key = (commit.id, folder)
        cached = self.folder_oids.get(key)
        if cached is None:
            digest = hashlib.sha1()
            for path in tree.under(folder):
                digest.update(f"{path}\0{tree.files[path].sha1}\n".encode())
            cached = digest.hexdigest()
            self.folder_oids.put(key, cached)
        return cached


# --- plumbing ---------------------------------------------------------------------------------------------------------


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _segment(request: Request, name: str) -> str:
    return unquote(request.path_params[name])


def _kind(request: Request) -> str:
    kind = _KINDS.get(request.path_params.get("kind", "models"))
    if kind is None:
        raise RegistryError(404, f"no {request.path_params['kind']} here: this registry serves models and datasets")
    return kind


def _repo_id(request: Request) -> str:
    return validate_repo_id(f"{_segment(request, 'namespace')}/{_segment(request, 'name')}")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


def _header_value(value: str) -> str:
    """Header values are one latin-1 line."""
    return value.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")[:1000]


def _json(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        json.dumps(data, default=str).encode(), status_code=status, headers=headers, media_type="application/json"
    )


def _query_bool(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RegistryError(413, f"request body is larger than {limit} bytes")
    data = bytearray()
    async for piece in _body_pieces(request):
        data.extend(piece)
        if len(data) > limit:
            raise RegistryError(413, f"request body is larger than {limit} bytes")
    return bytes(data)


async def _body_blocks(request: Request, block_bytes: int) -> AsyncIterator[list[bytes]]:
    """The request body as lists of pieces holding at least `block_bytes` (the last may hold fewer); a client that
    stalls longer than the body timeout between two pieces gets 408.

    One cancel scope per block, its deadline pushed forward at most once a second as pieces arrive: a scope per
    64 KiB piece cost about 15% of the event loop's time on a multi-GB upload. The scope never spans a `yield`."""
    stream = request.stream().__aiter__()
    timeout = _registry(request).settings.body_timeout
    clock = asyncio.get_running_loop().time  # the clock anyio's deadlines use on asyncio
    finished = False
    while not finished:
        pieces: list[bytes] = []
        size = 0
        refreshed = clock()
        # The deadline is a second past `timeout` after the last refresh, so no body is cut before it stalled
        # `timeout` seconds.
        with anyio.CancelScope(deadline=refreshed + timeout + 1) as scope:
            while size < block_bytes:
                try:
                    piece = await stream.__anext__()
                except StopAsyncIteration:
                    finished = True
                    break
                except ClientDisconnect as error:
                    # Not a server error: the upload is dropped (its staging files are removed) and nobody reads the
                    # answer.
                    raise RegistryError(400, "the client went away before sending the whole request") from error
                if piece:
                    pieces.append(piece)
                    size += len(piece)
                now = clock()
                if now - refreshed >= 1.0:
                    scope.deadline = now + timeout + 1
                    refreshed = now
        if scope.cancelled_caught:
            raise RegistryError(408, f"the request body stalled for more than {timeout:g} s")
        if pieces:
            yield pieces


async def _body_pieces(request: Request) -> AsyncIterator[bytes]:
    """The request body piece by piece, as it arrives (see `_body_blocks`)."""
    async for block in _body_blocks(request, 1):
        for piece in block:
            yield piece


async def _json_body(request: Request) -> dict:
    raw = await _read_body(request, _registry(request).settings.max_json_bytes)
    try:
        data = json.loads(raw or b"{}")
    except ValueError as error:
        raise RegistryError(400, f"request body is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise RegistryError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _field(body: dict, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
    """A typed field of a JSON body: wrongly typed JSON is the client's error (400), never a 500."""
    if key not in body or body[key] is None:
        if required:
            raise RegistryError(400, f"request body needs {key!r}")
        return default
    value = body[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(item.__name__ for item in kind)
        raise RegistryError(400, f"{key!r} must be {names}, got {type(value).__name__}")
    return value


def _principal(registry: Registry, request: Request) -> Principal:
    return registry.auth.authenticate(_bearer(request))


def _readable_repo(registry: Registry, request: Request, repo_type: str, repo_id: str) -> tuple[Principal, Repo]:
    principal, repo, _ = _readable_revision(registry, request, repo_type, repo_id, None)
    return principal, repo


def _readable_revision(
    registry: Registry, request: Request, repo_type: str, repo_id: str, revision: str | None
) -> tuple[Principal, Repo, Commit | None]:
    """Who asks, the repo (if they may read it) and the revision's commit, in one read transaction."""
    with registry.store.read() as conn:
        principal = registry.auth.authenticate(_bearer(request), conn)
        registry.auth.check_any_read(principal)
        if revision is None:
            repo, target = registry.store.get_repo(repo_type, repo_id, conn), None
        else:
            repo, target = registry.store.get_repo_at(repo_type, repo_id, revision, conn)
        registry.auth.check_read(principal, repo)
        commit = registry.store.resolve(repo, revision, conn, target) if revision is not None else None
    return principal, repo, commit


def _writable_repo(registry: Registry, request: Request, repo_type: str, repo_id: str) -> tuple[Principal, Repo]:
    principal, repo = _readable_repo(registry, request, repo_type, repo_id)
    registry.auth.check_write(principal, repo.namespace)
    return principal, repo


def _link_next(request: Request, registry: Registry, **params: Any) -> dict[str, str]:
    """A `Link: <...>; rel="next"` header (GitHub style, what huggingface_hub's paginate follows)."""
    pairs = [(key, value) for key, value in request.query_params.multi_items() if key not in params]
    pairs += [(key, str(value)) for key, value in params.items()]
    path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    return {"Link": f'<{registry.url()}{path}?{urlencode(pairs)}>; rel="next"'}


def _commit_json(commit: Commit) -> dict:
    return {
        "id": commit.oid,
        "title": commit.summary,
        "message": commit.description,
        "date": commit.created_at,
        "authors": [{"user": commit.author, "avatar": ""}],
    }


# --- accounts and repos -------------------------------------------------------------------------------------------------


async def whoami(request: Request) -> Response:
    registry = _registry(request)

    def work() -> dict:
        return registry.auth.whoami(_principal(registry, request))

    return _json(await run_in_threadpool(work))


async def validate_yaml(request: Request) -> Response:
    body = await _json_body(request)
    content = _field(body, "content", str, "")
    from hf_tts.errors import InputError
    from hf_tts.file_utils import load_yaml

    block = front_matter(content)
    errors = []
    if block is not None:
        try:
            data = load_yaml(block, "README.md metadata")
            if data is not None and not isinstance(data, dict):
                errors.append({"message": "the README metadata must be a YAML mapping"})
        except InputError as error:
            errors.append({"message": str(error)})
    if errors:
        return _json({"errors": errors, "warnings": [], "error": errors[0]["message"]}, 400)
    return _json({"errors": [], "warnings": []})


async def create_repo(request: Request) -> Response:
    registry = _registry(request)
    body = await _json_body(request)
    repo_type = validate_repo_type(_field(body, "type", str, "model"))
    name = _field(body, "name", str, required=True)
    namespace = _field(body, "organization", str)
    private = bool(_field(body, "private", bool, False)) or _field(body, "visibility", str) == "private"

    def work() -> Response:
        principal = _principal(registry, request)
        owner = namespace or (principal.name if not principal.anonymous else None)
        if not owner:
            raise RegistryError(400, f"repo id {name!r} has no namespace: use 'namespace/name'")
        repo_id = validate_repo_id(f"{owner}/{name}")
        registry.auth.check_write(principal, owner)
        if private:
            registry.auth.check_private_allowed(principal)
        repo, created = registry.store.create_repo(
            repo_type, repo_id, private=private, author=principal.name or "local"
        )
        url = registry.url(repo)
        if not created:
            # huggingface_hub's create_repo(exist_ok=True) reads "url" from the 409 answer too.
            return _json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    return await run_in_threadpool(work)


async def delete_repo(request: Request) -> Response:
    registry = _registry(request)
    body = await _json_body(request)
    repo_type = validate_repo_type(_field(body, "type", str, "model"))
    name = _field(body, "name", str, required=True)
    namespace = _field(body, "organization", str)

    def work() -> Response:
        principal = _principal(registry, request)
        owner = namespace or principal.name or ""
        _, repo = _writable_repo(registry, request, repo_type, f"{owner}/{name}")
        registry.store.delete_repo(repo)
        return _json({})

    return await run_in_threadpool(work)


async def move_repo(request: Request) -> Response:
    registry = _registry(request)
    body = await _json_body(request)
    source = validate_repo_id(_field(body, "fromRepo", str, required=True))
    target = validate_repo_id(_field(body, "toRepo", str, required=True))
    repo_type = validate_repo_type(_field(body, "type", str, "model"))

    def work() -> Response:
        principal, repo = _writable_repo(registry, request, repo_type, source)
        registry.auth.check_write(principal, target.split("/")[0])
        registry.store.move_repo(repo, target)
        return _json({"url": registry.url(registry.store.get_repo(repo_type, target))})

    return await run_in_threadpool(work)


async def update_settings(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    body = await _json_body(request)
    private = _field(body, "private", bool)
    visibility = _field(body, "visibility", str)
    gated = body.get("gated")
    if visibility is not None:
        if visibility not in ("public", "private"):
            raise RegistryError(400, f"visibility must be 'public' or 'private', got {visibility!r}")
        private = visibility == "private"
    if gated not in (None, False):
        raise RegistryError(400, "gated repos are not supported by this registry: use a private repo and tokens")

    def work() -> Response:
        principal, repo = _writable_repo(registry, request, repo_type, repo_id)
        if private is not None:
            if private:
                registry.auth.check_private_allowed(principal)
            registry.store.set_private(repo, private)
        return _json({"private": private if private is not None else repo.private})

    return await run_in_threadpool(work)


def _listing_item(registry: Registry, repo: Repo, full: bool, with_card: bool) -> dict:
    item: dict[str, Any] = {
        "_id": str(repo.id),
        "id": repo.repo_id,
        "author": repo.namespace,
        "private": repo.private,
        "createdAt": repo.created_at,
        "lastModified": repo.last_modified,
        "downloads": 0,
        "likes": 0,
        "tags": card_tags(repo.card),
        "gated": False,
        "disabled": False,
    }
    if repo.repo_type == "model":
        item["modelId"] = repo.repo_id
        for key in ("library_name", "pipeline_tag"):
            if isinstance(repo.card.get(key), str):
                item[key] = repo.card[key]
    if with_card or full:
        item["cardData"] = repo.card
    if full:
        head = registry.store.resolve(repo, "main")
        item["sha"] = head.oid
        item["siblings"] = [{"rfilename": path} for path in registry.store.tree(head).paths]
    return item


async def list_repos(request: Request) -> Response:
    """`list_models` / `list_datasets`: author, search, filter (tags, library, pipeline tag), sort, direction,
    limit and pagination (`Link`)."""
    registry = _registry(request)
    repo_type = _kind(request)
    params = request.query_params
    filters = params.getlist("filter") + params.getlist("tags")
    pipeline_tag = params.get("pipeline_tag")
    library = params.getlist("library")
    sort = params.get("sort", "lastModified")
    direction = params.get("direction", "-1")
    try:
        limit = min(int(params.get("limit", _LIST_PAGE)), _LIST_PAGE)
        offset = int(params.get("cursor", params.get("offset", "0")))
    except ValueError as error:
        raise RegistryError(400, f"limit and cursor must be integers: {error}") from error
    if limit < 1 or offset < 0:
        raise RegistryError(400, "limit must be positive and cursor not negative")
    sort_keys: dict[str, Callable[[Repo], Any]] = {
        "lastModified": lambda repo: repo.last_modified,
        "createdAt": lambda repo: repo.created_at,
        "id": lambda repo: repo.repo_id.lower(),
        "downloads": lambda repo: (0, repo.last_modified),
        "likes": lambda repo: (0, repo.last_modified),
        "trendingScore": lambda repo: (0, repo.last_modified),
    }
    if sort not in sort_keys:
        raise RegistryError(400, f"sort must be one of {', '.join(sort_keys)}, got {sort!r}")

    def work() -> Response:
        principal = _principal(registry, request)
        registry.auth.check_any_read(principal)
        repos = registry.store.list_repos(repo_type, namespace=params.get("author"), search=params.get("search"))
        visible = []
        for repo in repos:
            if repo.private and (principal.anonymous or not principal.may_use(repo.namespace, "read")):
                continue
            tags = set(card_tags(repo.card))
            if any(value not in tags for value in filters):
                continue
            if pipeline_tag and repo.card.get("pipeline_tag") != pipeline_tag:
                continue
            if library and repo.card.get("library_name") not in library:
                continue
            visible.append(repo)
        visible.sort(key=sort_keys[sort], reverse=direction != "1")
        page = visible[offset : offset + limit]
        full = _query_bool(request, "full")
        with_card = _query_bool(request, "cardData")
        items = [_listing_item(registry, repo, full, with_card) for repo in page]
        headers = _link_next(request, registry, cursor=offset + limit) if offset + limit < len(visible) else None
        return _json(items, headers=headers)

    return await run_in_threadpool(work)


async def list_user_repos(request: Request) -> Response:
    """`hf repos list` (`list_user_repos`): the repos of the caller's namespace or of an organisation, with storage."""
    registry = _registry(request)
    namespace = unquote(request.path_params["namespace"]) if "namespace" in request.path_params else None

    def work() -> Response:
        principal = _principal(registry, request)
        registry.auth.check_any_read(principal)
        if namespace is None and not principal.anonymous:
            namespaces = {principal.name, *principal.orgs}
        elif namespace is not None:
            namespaces = {namespace}
        else:
            namespaces = None  # open mode: every repo is the local user's
        repos = [
            repo
            for repo in registry.store.list_repos(None)
            if (namespaces is None or repo.namespace in namespaces)
            and not (repo.private and (principal.anonymous or not principal.may_use(repo.namespace, "read")))
        ]
        sizes = {repo.id: registry.store.used_storage(repo) for repo in repos}
        total = sum(sizes.values()) or 1
        items = [
            {
                "id": repo.repo_id,
                "type": repo.repo_type,
                "updatedAt": repo.last_modified,
                "visibility": "private" if repo.private else "public",
                "storage": sizes[repo.id],
                "storagePercent": 100.0 * sizes[repo.id] / total,
            }
            for repo in repos
        ]
        return _json(items)

    return await run_in_threadpool(work)


# --- repo content --------------------------------------------------------------------------------------------------------


async def repo_info(request: Request) -> Response:
    """`model_info` / `dataset_info` (also how transformers resolves a revision to a commit). A commit never
    changes, so its whole answer is built once and kept: a 20,000-file repo answers as fast as the bytes travel.
    Siblings carry size and blob id only with `?blobs=true` (`files_metadata=True`), as on the Hub."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev") if "rev" in request.path_params else "main"
    blobs = _query_bool(request, "blobs")

    def work() -> Response:
        _, repo, commit = _readable_revision(registry, request, repo_type, repo_id, revision)
        assert commit is not None
        key = (commit.id, repo.id, repo.repo_id, repo.private, repo.created_at, blobs)
        bodies = registry.infos.get(key)
        if bodies is None:
            body = _repo_info_body(registry, repo, commit, blobs)
            # A big repo's answer is also kept gzipped (huggingface_hub's client accepts gzip): 20,000 siblings
            # shrink about tenfold, so they cost the network and the client little more than a small repo's.
            bodies = (body, gzip.compress(body, 6, mtime=0) if len(body) > _GZIP_ABOVE else None)
            registry.infos.put(key, bodies)
        if bodies[1] is not None and "gzip" in request.headers.get("accept-encoding", ""):
            headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
            return Response(bodies[1], media_type="application/json", headers=headers)
        return Response(bodies[0], media_type="application/json", headers={"Vary": "Accept-Encoding"})

    return await run_in_threadpool(work)


def _repo_info_body(registry: Registry, repo: Repo, commit: Commit, blobs: bool) -> bytes:
    card = registry.card(commit)
    info: dict[str, Any] = {
        "_id": str(repo.id),
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": commit.oid,
        "lastModified": commit.created_at,
        "createdAt": repo.created_at,
        "private": repo.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": card_tags(card),
        "cardData": card,
    }
    if repo.repo_type == "model":
        info["modelId"] = repo.repo_id
        for key in ("library_name", "pipeline_tag"):
            if isinstance(card.get(key), str):
                info[key] = card[key]
    tree = registry.store.tree(commit)
    if blobs:
        siblings = [
            {"rfilename": path, "size": tree.files[path].size, "blobId": tree.files[path].sha1} for path in tree.paths
        ]
        for sibling in siblings:
            entry = tree.files[sibling["rfilename"]]
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": _pointer_size(entry)}
    else:
        siblings = [{"rfilename": path} for path in tree.paths]
    info["siblings"] = siblings
    return json.dumps(info, default=str, separators=(",", ":")).encode()


async def list_refs(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)

    def work() -> Response:
        _, repo = _readable_repo(registry, request, repo_type, repo_id)
        refs = registry.store.refs(repo)
        return _json(
            {
                "branches": [
                    {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in refs.branches
                ],
                "tags": [{"name": name, "ref": f"refs/tags/{name}", "targetCommit": oid} for name, oid in refs.tags],
                "converts": [],
                "pullRequests": [
                    {"name": f"refs/pr/{name}", "ref": f"refs/pr/{name}", "targetCommit": oid}
                    for name, oid in sorted(refs.pulls, key=lambda item: int(item[0]))
                ],
            }
        )

    return await run_in_threadpool(work)


async def list_commits(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")
    try:
        page = int(request.query_params.get("p", "0"))
        limit = min(int(request.query_params.get("limit", _COMMITS_PAGE)), _COMMITS_PAGE)
    except ValueError as error:
        raise RegistryError(400, f"p and limit must be integers: {error}") from error
    if page < 0 or limit < 1:
        raise RegistryError(400, "p must not be negative and limit must be positive")

    def work() -> Response:
        _, repo = _readable_repo(registry, request, repo_type, repo_id)
        history = registry.store.history(repo, registry.store.resolve(repo, revision))
        chunk = history[page * limit : (page + 1) * limit]
        headers = _link_next(request, registry, p=page + 1) if (page + 1) * limit < len(history) else None
        return _json([_commit_json(commit) for commit in chunk], headers=headers)

    return await run_in_threadpool(work)


def _last_commit(registry: Registry, commit_id: int) -> dict:
    commit = registry.store.commit_by_id(commit_id)
    return {"id": commit.oid, "title": commit.summary, "date": commit.created_at}


def _file_item(registry: Registry, path: str, entry: Entry, expand: bool) -> dict:
    item: dict[str, Any] = {"type": "file", "oid": entry.sha1, "size": entry.size, "path": path}
    if entry.lfs:  # as the Hub lists large files: the pointer's git id as oid, the content in `lfs`
        item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": _pointer_size(entry)}
        if entry.xet_hash is not None:
            item["xetHash"] = entry.xet_hash
    if expand:
        item["lastCommit"] = _last_commit(registry, entry.changed_in)
        item["securityFileStatus"] = {"status": "unscanned", "avScan": None, "pickleImportScan": None}
    return item


def _pointer_size(entry: Entry) -> int:
    return len(lfs_pointer(entry.sha256, entry.size))


def _folder_item(registry: Registry, commit: Commit, tree: Tree, path: str, expand: bool) -> dict:
    item: dict[str, Any] = {
        "type": "directory",
        "oid": registry.folder_oid(commit, tree, path),
        "size": 0,
        "path": path,
    }
    if expand:
        latest = max(tree.files[child].changed_in for child in tree.under(path))
        item["lastCommit"] = _last_commit(registry, latest)
    return item


async def list_tree(request: Request) -> Response:
    """`list_repo_tree`: one folder (or, with recursive, everything below it), 1000 entries a page (50 with
    `expand`, which adds each entry's last commit), pages linked with `Link`."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")
    folder = unquote(request.path_params.get("path", "")).strip("/")
    if folder:
        validate_repo_path(folder)
    recursive = _query_bool(request, "recursive")
    expand = _query_bool(request, "expand")
    try:
        cursor = int(request.query_params.get("cursor", "0"))
    except ValueError as error:
        raise RegistryError(400, f"cursor must be an integer: {error}") from error

    def work() -> Response:
        _, repo, commit = _readable_revision(registry, request, repo_type, repo_id, revision)
        tree = registry.store.tree(commit)
        paths = tree.under(folder)
        if folder and not paths:
            raise RegistryError(
                404, f"folder {folder!r} not found at {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid}
            )
        base = f"{folder}/" if folder else ""
        names: list[tuple[str, bool]] = []  # (path, is_file), in tree order: a folder before its content
        seen_folders: set[str] = set()
        for path in paths:
            parts = path[len(base) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                sub = base + "/".join(parts[:depth])
                if sub not in seen_folders:
                    seen_folders.add(sub)
                    names.append((sub, False))
            if len(parts) == 1 or recursive:
                names.append((path, True))
        size = _TREE_PAGE_EXPANDED if expand else _TREE_PAGE
        page = names[cursor : cursor + size]
        items = [
            _file_item(registry, path, tree.files[path], expand)
            if is_file
            else _folder_item(registry, commit, tree, path, expand)
            for path, is_file in page
        ]
        headers = _link_next(request, registry, cursor=cursor + size) if cursor + size < len(names) else None
        return _json(items, headers=headers)

    return await run_in_threadpool(work)


async def paths_info(request: Request) -> Response:
    """`get_paths_info` (form-encoded `paths=...&expand=...`, as huggingface_hub sends it; JSON works too)."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")
    raw = await _read_body(request, registry.settings.max_json_bytes)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(raw or b"{}")
        except ValueError as error:
            raise RegistryError(400, f"request body is not JSON: {error}") from error
        if not isinstance(body, dict):
            raise RegistryError(400, "request body must be a JSON object")
        paths = _field(body, "paths", list, [])
        expand = bool(body.get("expand"))
    else:
        form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        paths = form.get("paths", [])
        expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
    if len(paths) > 10000 or not all(isinstance(path, str) for path in paths):
        raise RegistryError(400, "paths must be a list of at most 10000 strings")

    def work() -> Response:
        _, repo, commit = _readable_revision(registry, request, repo_type, repo_id, revision)
        tree = registry.store.tree(commit)
        items = []
        for path in paths:
            path = path.strip("/")
            if not path:
                continue
            validate_repo_path(path)
            if path in tree.files:
                items.append(_file_item(registry, path, tree.files[path], expand))
            elif tree.under(path):
                items.append(_folder_item(registry, commit, tree, path, expand))
        return _json(items)

    return await run_in_threadpool(work)


def _gitignore_matcher(text: str) -> Callable[[str], bool]:
    """A `.gitignore` (the common subset: globs, `**`, leading `/`, trailing `/`, `!` negation)."""
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:] if negate else line
        folder_only = line.endswith("/")
        line = line.strip("/") if folder_only else line
        anchored = "/" in line.lstrip("/") or line.startswith("/")
        pattern = fnmatch.translate(line.lstrip("/")).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        rules.append((re.compile(pattern), negate, folder_only, anchored))

    def ignored(path: str) -> bool:
        parts = path.split("/")
        result = False
        for regex, negate, folder_only, anchored in rules:
            candidates = ["/".join(parts[:depth]) for depth in range(1, len(parts) + (0 if folder_only else 1))]
            if not anchored:
                candidates += [part for part in (parts[:-1] if folder_only else parts)]
            if any(regex.fullmatch(candidate) for candidate in candidates):
                result = not negate
        return result

    return ignored


def _preupload_sample(value: object) -> bytes:
    """The first bytes of a file as a preupload entry sends them (base64, 512 bytes from huggingface_hub); a missing
    or undecodable sample says nothing about the content."""
    if not isinstance(value, str) or len(value) > 4096:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


async def preupload(request: Request) -> Response:
    """Each file's upload mode: "lfs" for large files (`is_large_file`: size, format or binary sample), uploaded
    through Xet or LFS before the commit, "regular" for the rest (inline in the commit). `oid` is the sha256 (large)
    or git blob sha1 (regular) of the file now at that path, so the client skips unchanged files; `shouldIgnore`
    follows the `.gitignore` the client sends."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")
    body = await _json_body(request)
    files = _field(body, "files", list, required=True)
    gitignore = _field(body, "gitIgnore", str)
    if not all(isinstance(item, dict) for item in files):
        raise RegistryError(400, "'files' must be a list of objects")

    def work() -> Response:
        _, repo = _writable_repo(registry, request, repo_type, repo_id)
        commit = registry.store.resolve(repo, revision)
        ignored = _gitignore_matcher(gitignore) if gitignore else (lambda path: False)
        answer = []
        for item in files:
            path = validate_repo_path(_field(item, "path", str, required=True))
            entry = registry.store.entry(commit, path)
            size = item.get("size")
            sample = _preupload_sample(item.get("sample"))
            mode = "lfs" if is_large_file(path, size if isinstance(size, int) else 0, sample) else "regular"
            # The client skips unchanged files by comparing this oid: sha256 for large files, git sha1 otherwise.
            oid = (entry.sha256 if mode == "lfs" else entry.sha1) if entry else None
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": ignored(path), "oid": oid})
        return _json({"files": answer, "commitOid": commit.oid})

    return await run_in_threadpool(work)


async def commit(request: Request) -> Response:
    """The NDJSON commit: parsed while it arrives (file contents straight into staging files, in a worker thread),
    then applied in one transaction."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")
    create_pr = _query_bool(request, "create_pr")
    principal, repo = await run_in_threadpool(_writable_repo, registry, request, repo_type, repo_id)
    pieces = _body_pieces(request).__aiter__()

    async def next_piece() -> bytes | None:
        try:
            return await pieces.__anext__()
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        while (piece := anyio.from_thread.run(next_piece)) is not None:
            yield piece

    def work() -> tuple[Commit, int | None]:
        request_data = parse_commit_stream(
            chunks(),
            registry.store.tmp,
            max_line_bytes=registry.settings.max_line_bytes,
            max_upload_bytes=registry.settings.max_upload_bytes,
        )
        try:
            return registry.store.commit(
                repo, revision, request_data, author=principal.name or "local", create_pr=create_pr
            )
        finally:
            request_data.discard()

    new_head, pr_num = await anyio.to_thread.run_sync(work)
    pr_url = registry.url(repo, "discussions", str(pr_num)) if pr_num is not None else None
    return _json(
        {"commitUrl": registry.url(repo, "commit", new_head.oid), "commitOid": new_head.oid, "pullRequestUrl": pr_url}
    )


async def branch(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    name = _segment(request, "rev")
    body = await _json_body(request) if request.method == "POST" else {}
    starting_point = _field(body, "startingPoint", str, "main")

    def work() -> Response:
        _, repo = _writable_repo(registry, request, repo_type, repo_id)
        if request.method == "DELETE":
            registry.store.delete_ref(repo, "branch", name)
        else:
            registry.store.create_ref(repo, "branch", name, starting_point)
        return _json({})

    return await run_in_threadpool(work)


async def tag(request: Request) -> Response:
    """POST .../tag/{revision} {"tag", "message"} creates a tag on revision; DELETE .../tag/{tag} removes it."""
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    segment = _segment(request, "rev")
    body = await _json_body(request) if request.method == "POST" else {}

    def work() -> Response:
        _, repo = _writable_repo(registry, request, repo_type, repo_id)
        if request.method == "DELETE":
            registry.store.delete_ref(repo, "tag", segment)
        else:
            registry.store.create_ref(
                repo, "tag", _field(body, "tag", str, required=True), segment, _field(body, "message", str, "")
            )
        return _json({})

    return await run_in_threadpool(work)


async def super_squash(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    branch_name = _segment(request, "rev")
    body = await _json_body(request)
    message = _field(body, "message", str, f"Super-squash branch '{branch_name}'")

    def work() -> Response:
        principal, repo = _writable_repo(registry, request, repo_type, repo_id)
        squashed = registry.store.super_squash(repo, branch_name, message, author=principal.name or "local")
        return _json({"commitId": squashed.oid})

    return await run_in_threadpool(work)


async def merge_pull(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    try:
        number = int(request.path_params["num"])
    except ValueError as error:
        raise RegistryError(400, f"pull request number must be an integer: {error}") from error
    body = await _json_body(request)
    comment = _field(body, "comment", str)

    def work() -> Response:
        principal, repo = _writable_repo(registry, request, repo_type, repo_id)
        merged = registry.store.merge_pull(repo, number, author=principal.name or "local", message=comment)
        return _json({"commitOid": merged.oid, "commitUrl": registry.url(repo, "commit", merged.oid)})

    return await run_in_threadpool(work)


async def pull_page(request: Request) -> Response:
    """What a `pullRequestUrl` points to: the PR as JSON (number, status, refs, target branch)."""
    registry = _registry(request)
    repo_type = "dataset" if request.url.path.startswith("/datasets/") else "model"
    repo_id = _repo_id(request)
    try:
        number = int(request.path_params["num"])
    except ValueError as error:
        raise RegistryError(400, f"pull request number must be an integer: {error}") from error

    def work() -> Response:
        _, repo = _readable_repo(registry, request, repo_type, repo_id)
        pull = registry.store.pull(repo, number)
        head = registry.store.resolve(repo, f"refs/pr/{number}")
        return _json(
            {
                "num": number,
                "isPullRequest": True,
                "title": pull["title"],
                "status": pull["status"],
                "author": pull["author"],
                "createdAt": pull["created_at"],
                "targetBranch": pull["target_branch"],
                "gitReference": f"refs/pr/{number}",
                "headCommit": head.oid,
                "url": registry.url(repo, "discussions", str(number)),
            }
        )

    return await run_in_threadpool(work)


async def commit_page(request: Request) -> Response:
    """What a `commitUrl` points to: the commit as JSON, with the paths it changed."""
    registry = _registry(request)
    repo_type = "dataset" if request.url.path.startswith("/datasets/") else "model"
    repo_id = _repo_id(request)
    oid = _segment(request, "oid")

    def work() -> Response:
        _, repo = _readable_repo(registry, request, repo_type, repo_id)
        target = registry.store.resolve(repo, oid)
        tree = registry.store.tree(target)
        before = registry.store.tree(registry.store.commit_by_id(target.parent_id)).files if target.parent_id else {}
        changed = sorted(path for path in set(tree.files) | set(before) if tree.files.get(path) != before.get(path))
        parent = registry.store.commit_by_id(target.parent_id).oid if target.parent_id else None
        return _json({**_commit_json(target), "parents": [parent] if parent else [], "changedPaths": changed[:1000]})

    return await run_in_threadpool(work)


# --- downloads -----------------------------------------------------------------------------------------------------------


def _parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """RFC 9110 for one `bytes=` range: (start, end) inclusive; False when unsatisfiable (416); None when the header
    is invalid or asks for several ranges, which a server may ignore (200 with the whole body)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):
        suffix = int(match.group(2))
        if suffix == 0:
            return False
        return (max(size - suffix, 0), size - 1) if size else False
    start = int(match.group(1))
    if match.group(2) and int(match.group(2)) < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        return False
    end = int(match.group(2)) if match.group(2) else size - 1
    return start, min(end, size - 1)


class BlobResponse(Response):
    """A blob (or a byte range of it) from disk: small ones in one read, large ones in 1 MiB pieces read in a worker
    thread, so neither the event loop nor memory depends on the file size."""

    def __init__(self, path: str, start: int, length: int, status_code: int, headers: dict[str, str], head: bool):
        super().__init__(None, status_code=status_code, headers=headers, media_type="application/octet-stream")
        self.headers["content-length"] = str(length)
        self.path, self.start, self.length, self.head = path, start, length, head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.head or self.length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        if self.length <= _INLINE_BODY:
            with open(self.path, "rb") as stream:
                stream.seek(self.start)
                await send({"type": "http.response.body", "body": stream.read(self.length)})
            return
        stream = await anyio.to_thread.run_sync(open, self.path, "rb")
        try:
            await anyio.to_thread.run_sync(stream.seek, self.start)
            remaining = self.length
            while remaining > 0:
                piece = await anyio.to_thread.run_sync(stream.read, min(remaining, _STREAM_CHUNK))
                if not piece:
                    raise RuntimeError(f"blob {self.path} is shorter than recorded")
                remaining -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": remaining > 0})
        finally:
            stream.close()


async def resolve(request: Request) -> Response:
    """HEAD/GET of a file at a revision: `ETag` is the git blob sha1 (as the Hub does for regular files),
    `X-Repo-Commit` the resolved commit; `If-None-Match` -> 304; one byte range per RFC 9110."""
    registry = _registry(request)
    repo_type = "dataset" if request.url.path.startswith("/datasets/") else "model"
    repo_id = _repo_id(request)
    revision = _segment(request, "rev")
    path = unquote(request.path_params["path"])

    def work() -> tuple[Commit, Entry | None]:
        validate_repo_path(path)
        _, repo, found = _readable_revision(registry, request, repo_type, repo_id, revision)
        return found, registry.store.entry(found, path)

    target, entry = await run_in_threadpool(work)
    if entry is None:
        raise RegistryError(404, f"{path} not found at {revision}", "EntryNotFound", {"X-Repo-Commit": target.oid})
    etag = f'"{entry.sha256 if entry.lfs else entry.sha1}"'
    headers = {"ETag": etag, "X-Repo-Commit": target.oid, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if entry.lfs:
        headers.update(large_file_headers(registry, repo_type, repo_id, target.oid, entry))
    if revision == target.oid:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"  # a commit's content never changes
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and (
        if_none_match.strip() == "*" or etag in [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    start, length, status = 0, entry.size, 200
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        byte_range = _parse_range(range_header, entry.size)
        if byte_range is False:
            headers["Content-Range"] = f"bytes */{entry.size}"
            raise RegistryError(416, f"range {range_header!r} is outside the file ({entry.size} bytes)", None, headers)
        if isinstance(byte_range, tuple):
            start, end = byte_range
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    if entry.xet_hash is not None:
        return xet_file_response(registry, entry, start, length, status, headers, head=request.method == "HEAD")
    blob = str(registry.store.blobs.path(entry.sha256))
    return BlobResponse(blob, start, length, status, headers, head=request.method == "HEAD")


# --- errors --------------------------------------------------------------------------------------------------------------


async def registry_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RegistryError)
    headers = {key: _header_value(value) for key, value in error.headers.items()}
    headers["X-Error-Message"] = _header_value(error.message)
    if error.error_code:
        headers["X-Error-Code"] = error.error_code
    return _json({"error": error.message}, error.status, headers)


async def not_found(request: Request, error: Exception) -> Response:
    status = getattr(error, "status_code", 404)
    message = (
        f"no route for {request.method} {request.url.path}" if status == 404 else str(getattr(error, "detail", ""))
    )
    return _json({"error": message}, status, {"X-Error-Message": _header_value(message)})


_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT}


async def storage_error(request: Request, error: Exception) -> Response:
    """A full disk (or quota) while a body is written: 507 with what to do, one log line. The upload's staging file
    is already gone and nothing was committed. Any other OS error is a bug: it goes on to `internal_error`."""
    if not isinstance(error, OSError) or error.errno not in _STORAGE_FULL:
        raise error
    logger.warning("%s %s: the registry's storage is full (%s)", request.method, request.url.path, error.strerror)
    message = (
        f"the registry's storage is full ({error.strerror}); nothing was stored or committed. Free space on the "
        "registry's disk (`hf-tts hub gc` reclaims uploads no commit uses) and push again"
    )
    return _json({"error": message}, 507, {"X-Error-Message": _header_value(message)})


async def internal_error(request: Request, error: Exception) -> Response:
    # The traceback goes to the log (uvicorn's error logger, kept even with --quiet); the client learns nothing of
    # the internals.
    return _json({"error": "internal registry error (see the registry's log)"}, 500)


from hf_tts.registry.large_file_routes import (  # noqa: E402  (its handlers use the helpers above)
    LARGE_FILE_ROUTES,
    large_file_headers,
    xet_file_response,
)

_REPO = "/api/{kind}/{namespace}/{name}"
ROUTES = [
    *LARGE_FILE_ROUTES,
    Route("/api/whoami-v2", whoami, methods=["GET"]),
    Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
    Route("/api/repos/create", create_repo, methods=["POST"]),
    Route("/api/repos/delete", delete_repo, methods=["DELETE"]),
    Route("/api/repos/move", move_repo, methods=["POST"]),
    Route("/api/settings/repositories", list_user_repos, methods=["GET"]),
    Route("/api/organizations/{namespace}/settings/repositories", list_user_repos, methods=["GET"]),
    Route("/api/{kind}", list_repos, methods=["GET"]),
    Route(_REPO, repo_info, methods=["GET"]),
    Route(_REPO + "/revision/{rev}", repo_info, methods=["GET"]),
    Route(_REPO + "/refs", list_refs, methods=["GET"]),
    Route(_REPO + "/commits/{rev}", list_commits, methods=["GET"]),
    Route(_REPO + "/tree/{rev}", list_tree, methods=["GET"]),
    Route(_REPO + "/tree/{rev}/{path:path}", list_tree, methods=["GET"]),
    Route(_REPO + "/paths-info/{rev}", paths_info, methods=["POST"]),
    Route(_REPO + "/preupload/{rev}", preupload, methods=["POST"]),
    Route(_REPO + "/commit/{rev}", commit, methods=["POST"]),
    Route(_REPO + "/branch/{rev}", branch, methods=["POST", "DELETE"]),
    Route(_REPO + "/tag/{rev}", tag, methods=["POST", "DELETE"]),
    Route(_REPO + "/settings", update_settings, methods=["PUT"]),
    Route(_REPO + "/super-squash/{rev}", super_squash, methods=["POST"]),
    Route(_REPO + "/discussions/{num}/merge", merge_pull, methods=["POST"]),
    Route("/datasets/{namespace}/{name}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
    Route("/datasets/{namespace}/{name}/commit/{oid}", commit_page, methods=["GET"]),
    Route("/datasets/{namespace}/{name}/discussions/{num}", pull_page, methods=["GET"]),
    *web.ROUTES,  # pages: after every /api and /datasets route; `/{repo}/commit/{sha}` answers browsers with HTML
    Route("/{namespace}/{name}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
    Route("/{namespace}/{name}/commit/{oid}", commit_page, methods=["GET"]),
    Route("/{namespace}/{name}/discussions/{num}", pull_page, methods=["GET"]),
]


class _RawPathApp:
    """Routes match the raw path, so an encoded `/` (`%2F`) inside a revision stays inside its segment."""

    def __init__(self, app: Starlette):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("raw_path"):
            scope = dict(scope)
            scope["path"] = scope["raw_path"].decode("latin-1").split("?", 1)[0]
        await self.app(scope, receive, send)


def create_app(store: Store, policy: AccessPolicy, settings: AppSettings) -> Callable:
    """The ASGI app of a registry over `store`."""
    from starlette.exceptions import HTTPException

    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            RegistryError: registry_error,
            HTTPException: not_found,
            OSError: storage_error,
            Exception: internal_error,
        },
    )
    app.state.registry = Registry(store, policy, settings)
    app.add_middleware(web.SecurityHeaders)  # CSP (no script anywhere) and nosniff on every answer
    return _RawPathApp(app)


__all__ = ["AppSettings", "ROUTES", "Registry", "create_app"]
