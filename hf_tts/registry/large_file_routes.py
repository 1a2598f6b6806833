"""HTTP for large files: the Xet token endpoints, the CAS API (under `/cas`, the `casUrl` tokens name), the Git LFS
batch API, and the responses `resolve` gives for large files. Handlers translate HTTP to `XetCas` / `GitLfs` calls.

Upload bodies stream into staging files (written and hashed in worker threads, a few MiB at a time), so a 64 MiB
xorb or a 10 GB LFS object costs the server the same small amount of memory.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hf_tts.registry.app import (
    BlobResponse,
    Registry,
    _body_blocks,
    _json,
    _json_body,
    _kind,
    _parse_range,
    _readable_repo,
    _registry,
    _repo_id,
    _segment,
    _writable_repo,
)
from hf_tts.registry.blobs import BodyWriter
from hf_tts.registry.errors import RegistryError
from hf_tts.registry.lfs import check_oid, check_size
from hf_tts.registry.store import Entry
from hf_tts.registry.xet_format import MAX_XORB_BYTES, XetFormatError, XorbReader, hex_to_hash

_BLOCK_BYTES = 1 << 20  # per worker-thread write: small, so concurrent uploads keep little memory
MAX_SHARD_BYTES = 64 << 20
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"


@functools.cache
def _body_writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="hf-tts-registry-body")


async def receive_to_file(
    request: Request,
    path: Path,
    limit: int,
    consume: Callable[[bytes | memoryview], None] | None = None,
) -> int:
    """Stream the request body into `path` (fsynced); returns its size. Every block of about `_BLOCK_BYTES` is also
    handed to `consume` (a hash, a xorb verifier) and written in a worker thread while the event loop receives the
    next block, so receiving, hashing and writing overlap with at most two blocks held per upload; the file is written
    around the page cache where the file system allows it (`BodyWriter`). On any error the file is removed (once a
    write in flight has finished with it)."""
    writer = await anyio.to_thread.run_sync(BodyWriter, path)
    # A job in flight still uses the file when the request fails or is cancelled: it is shielded (a cancelled await
    # must not let the descriptor be closed under a running write) and the file is closed once it is done.
    pending: Future | None = None
    size = 0
    try:
        async for block in _body_blocks(request, _BLOCK_BYTES):
            size += sum(len(piece) for piece in block)
            if size > limit:
                raise RegistryError(413, f"request body is larger than {limit} bytes")
            if pending is not None:
                await asyncio.shield(asyncio.wrap_future(pending))
            pending = _body_writers().submit(writer.write, block, consume)
        if pending is not None:
            await asyncio.shield(asyncio.wrap_future(pending))
        return await anyio.to_thread.run_sync(writer.finish)
    except BaseException:

        def discard(finished: Future | None = None) -> None:
            if finished is not None and not finished.cancelled():
                finished.exception()  # retrieved: the error being raised already says what went wrong
            writer.close()
            path.unlink(missing_ok=True)

        if pending is not None:
            pending.add_done_callback(discard)  # at once when it is done, else in its thread when it finishes
        else:
            discard()
        raise


def _cas_bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


def _check_writes_allowed(registry: Registry) -> None:
    if registry.auth.policy.read_only:
        raise RegistryError(403, "this registry is read-only")


# --- Xet tokens ---------------------------------------------------------------------------------------------------------


async def _xet_token(request: Request, scope: str) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _kind(request), _repo_id(request)
    revision = _segment(request, "rev")

    def work() -> Response:
        if scope == "write":
            _, repo = _writable_repo(registry, request, repo_type, repo_id)
        else:
            _, repo = _readable_repo(registry, request, repo_type, repo_id)
        if revision != "None":  # huggingface_hub asks for a PR's token with the revision "None"
            registry.store.resolve(repo, revision)
        token, expires = registry.cas.issue_token(repo.id, scope)
        cas_url = registry.url() + "/cas"
        headers = {"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(expires)}
        return _json({"accessToken": token, "exp": expires, "casUrl": cas_url}, headers=headers)

    return await run_in_threadpool(work)


async def xet_read_token(request: Request) -> Response:
    return await _xet_token(request, "read")


async def xet_write_token(request: Request) -> Response:
    return await _xet_token(request, "write")


# --- CAS API ------------------------------------------------------------------------------------------------------------


async def cas_upload_xorb(request: Request) -> Response:
    registry = _registry(request)
    if request.path_params["prefix"] != "default":
        raise RegistryError(400, f"xorb prefix must be 'default', got {request.path_params['prefix']!r}")
    xorb_hex = request.path_params["hash"]
    registry.cas.check_token(_cas_bearer(request), "write")
    _check_writes_allowed(registry)
    staged = registry.store.tmp / f"xorb-{uuid.uuid4().hex}"
    try:
        reader = XorbReader(hex_to_hash(xorb_hex))  # verified while it streams in: a bad xorb stops at its first error
        await receive_to_file(request, staged, MAX_XORB_BYTES + (8 << 20), reader.feed)
        inserted = await anyio.to_thread.run_sync(registry.cas.put_xorb, staged, reader)
    except XetFormatError as error:
        raise RegistryError(400, str(error)) from error
    finally:
        staged.unlink(missing_ok=True)
    return _json({"was_inserted": inserted})


async def cas_upload_shard(request: Request) -> Response:
    registry = _registry(request)
    grant = registry.cas.check_token(_cas_bearer(request), "write")
    _check_writes_allowed(registry)
    staged = registry.store.tmp / f"shard-{uuid.uuid4().hex}"
    try:
        await receive_to_file(request, staged, MAX_SHARD_BYTES)
        await anyio.to_thread.run_sync(registry.cas.put_shard, staged, grant.repo_pk)
    finally:
        staged.unlink(missing_ok=True)
    return _json({"result": 1})


async def cas_dedupe(request: Request) -> Response:
    registry = _registry(request)
    if request.path_params["prefix"] != "default-merkledb":
        raise RegistryError(400, f"dedupe prefix must be 'default-merkledb', got {request.path_params['prefix']!r}")
    registry.cas.check_token(_cas_bearer(request), "read")
    answer = await run_in_threadpool(registry.cas.dedupe_answer, request.path_params["hash"])
    if answer is None:
        raise RegistryError(404, "chunk not known to this registry")
    return Response(answer, media_type="application/octet-stream")


async def cas_reconstruction(request: Request) -> Response:
    registry = _registry(request)
    grant = registry.cas.check_token(_cas_bearer(request), "read")
    file_hex = request.path_params["file_id"]

    def work() -> Response:
        item = registry.cas.file_in_repo(grant.repo_pk, file_hex)
        if item is None:
            raise RegistryError(404, f"Xet file {file_hex} is not in the repository this token is for")
        start, end = 0, item.size - 1
        header = request.headers.get("range")
        if header:
            byte_range = _parse_range(header, item.size)
            if byte_range is False:
                raise RegistryError(416, f"range {header!r} starts past the end of the file ({item.size} bytes)")
            if isinstance(byte_range, tuple):
                start, end = byte_range
        return _json(registry.cas.reconstruction(item, start, end, registry.url() + "/cas/xorb-data"))

    return await run_in_threadpool(work)


async def cas_xorb_data(request: Request) -> Response:
    """A byte range of a stored xorb, at a URL the reconstruction API signed for exactly that range."""
    registry = _registry(request)
    xorb_hex = request.path_params["hash"]
    params = request.query_params
    registry.cas.check_signed(params.get("exp"), params.get("sig"), xorb_hex, params.get("start"), params.get("end"))
    allowed_start, allowed_end = int(params["start"]), int(params["end"])
    header = request.headers.get("range")
    found = await run_in_threadpool(registry.cas.xorb, xorb_hex)
    if found is None:
        raise RegistryError(404, f"xorb {xorb_hex} not found")
    byte_range = _parse_range(header, found[1]) if header else None
    if not isinstance(byte_range, tuple) or byte_range[0] < allowed_start or byte_range[1] > allowed_end:
        raise RegistryError(403, f"send a Range header within bytes={allowed_start}-{allowed_end} (what was signed)")
    start, end = byte_range
    headers = {"Content-Range": f"bytes {start}-{end}/{found[1]}", "Accept-Ranges": "bytes"}
    return BlobResponse(str(registry.cas.xorb_path(xorb_hex)), start, end - start + 1, 206, headers, head=False)


# --- Git LFS ----------------------------------------------------------------------------------------------------------


def _lfs_repo_type(request: Request) -> str:
    return "dataset" if request.url.path.startswith("/datasets/") else "model"


def _lfs_repo_id(request: Request) -> str:
    return _repo_id(request)


async def lfs_batch(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _lfs_repo_type(request), _lfs_repo_id(request)
    body = await _json_body(request)

    def work() -> Response:
        if body.get("operation") == "upload":
            _, repo = _writable_repo(registry, request, repo_type, repo_id)
        else:
            _, repo = _readable_repo(registry, request, repo_type, repo_id)
        answer = registry.lfs.batch(repo, body, registry.url(repo) + ".git/info/lfs")
        return Response(_json(answer).body, media_type=LFS_MEDIA_TYPE)

    return await run_in_threadpool(work)


async def lfs_upload(request: Request) -> Response:
    """The basic transfer's PUT, at the URL `batch` signed for (repo, oid, size): hashed while written to disk."""
    registry = _registry(request)
    repo_type, repo_id = _lfs_repo_type(request), _lfs_repo_id(request)
    oid = check_oid(request.path_params["oid"])
    try:
        size = check_size(int(request.path_params["size"]))
    except ValueError as error:
        raise RegistryError(400, f"LFS size must be an integer: {error}") from error
    _check_writes_allowed(registry)
    repo = await run_in_threadpool(registry.store.get_repo, repo_type, repo_id)
    params = request.query_params
    registry.cas.check_signed(params.get("exp"), params.get("sig"), "lfs", repo.id, oid, size)
    staged = registry.lfs.staging_file()
    digest = hashlib.sha256()
    try:
        staged.size = await receive_to_file(request, staged.path, size, digest.update)
        await anyio.to_thread.run_sync(registry.lfs.accept, repo.id, oid, size, staged, digest.hexdigest())
    finally:
        staged.path.unlink(missing_ok=True)
    return Response(status_code=200)


async def lfs_download(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _lfs_repo_type(request), _lfs_repo_id(request)
    oid = check_oid(request.path_params["oid"])
    repo = await run_in_threadpool(registry.store.get_repo, repo_type, repo_id)
    params = request.query_params
    registry.cas.check_signed(params.get("exp"), params.get("sig"), "lfs-get", repo.id, oid)
    path = registry.store.blobs.path(oid)
    return BlobResponse(str(path), 0, path.stat().st_size, 200, {}, head=request.method == "HEAD")


async def lfs_verify(request: Request) -> Response:
    registry = _registry(request)
    repo_type, repo_id = _lfs_repo_type(request), _lfs_repo_id(request)
    body = await _json_body(request)

    def work() -> Response:
        _, repo = _writable_repo(registry, request, repo_type, repo_id)
        registry.lfs.verify(repo, body)
        return Response(b"{}", media_type=LFS_MEDIA_TYPE)

    return await run_in_threadpool(work)


# --- resolve for large files -------------------------------------------------------------------------------------------


def large_file_headers(registry: Registry, repo_type: str, repo_id: str, commit_oid: str, entry: Entry) -> dict:
    """What the Hub adds to a large file's HEAD/GET: its sha256 as ETag (and linked ETag/size) and, for Xet files,
    the Xet hash with the route that hands out a read token (huggingface_hub then downloads via reconstruction)."""
    headers = {"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
    if entry.xet_hash is not None:
        kind = "models" if repo_type == "model" else "datasets"
        refresh = f"{registry.url()}/api/{kind}/{repo_id}/xet-read-token/{commit_oid}"
        headers["X-Xet-Hash"] = entry.xet_hash
        headers["Link"] = f'<{refresh}>; rel="xet-auth"'
    return headers


def xet_file_response(
    registry: Registry, entry: Entry, start: int, length: int, status: int, headers: dict, head: bool
) -> Response:
    """A Xet file's bytes (or a range), rebuilt from its xorbs while they are sent."""
    item = registry.cas.file(entry.xet_hash or "")
    if item is None:
        raise RuntimeError(f"Xet file {entry.xet_hash} of a committed entry is not registered")
    headers = {**headers, "Content-Length": str(length)}
    if head or length == 0:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    pieces = iterate_in_threadpool(registry.cas.iter_bytes(item, start, length))
    return StreamingResponse(pieces, status_code=status, headers=headers, media_type="application/octet-stream")


_REPO = "/api/{kind}/{namespace}/{name}"
LARGE_FILE_ROUTES = [
    Route(_REPO + "/xet-read-token/{rev}", xet_read_token, methods=["GET"]),
    Route(_REPO + "/xet-write-token/{rev}", xet_write_token, methods=["GET"]),
    Route("/cas/v1/xorbs/{prefix}/{hash}", cas_upload_xorb, methods=["POST"]),
    Route("/cas/v1/shards", cas_upload_shard, methods=["POST"]),
    Route("/cas/v1/chunks/{prefix}/{hash}", cas_dedupe, methods=["GET"]),
    Route("/cas/v1/reconstructions/{file_id}", cas_reconstruction, methods=["GET"]),
    Route("/cas/xorb-data/{hash}", cas_xorb_data, methods=["GET"]),
    *[
        route
        for prefix in ("/datasets", "")
        for route in (
            Route(prefix + "/{namespace}/{name}.git/info/lfs/objects/batch", lfs_batch, methods=["POST"]),
            Route(prefix + "/{namespace}/{name}.git/info/lfs/objects/{oid}/{size}", lfs_upload, methods=["PUT"]),
            Route(prefix + "/{namespace}/{name}.git/info/lfs/objects/{oid}", lfs_download, methods=["GET", "HEAD"]),
            Route(prefix + "/{namespace}/{name}.git/info/lfs/verify", lfs_verify, methods=["POST"]),
        )
    ],
]

__all__ = ["LARGE_FILE_ROUTES", "large_file_headers", "receive_to_file", "xet_file_response"]
