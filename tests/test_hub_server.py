"""The local registry (`hf_tts.hub.server`) against huggingface_hub's own client and raw HTTP: revisions, atomic
commits, concurrency, interrupted uploads, tokens, path validation, ranges."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hf_tts.hub.server import RegistryError, parse_commit_stream


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def _ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def _file_line(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"content": base64.b64encode(data).decode(), "path": path, "encoding": "base64"}}


def _head(api: HfApi, repo_id: str) -> str:
    return api.model_info(repo_id).sha


def _snapshot(server, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    _, files = server.store.snapshot(repo_id, revision)
    return {path: server.store.blob_path(meta["sha256"]).read_bytes() for path, meta in files.items()}


def test_each_commit_is_a_snapshot_and_old_revisions_stay_loadable(local_hub):
    api = HfApi()
    api.create_repo("org/weights")
    first = api.upload_file(path_or_fileobj=b"version one", path_in_repo="weights.bin", repo_id="org/weights")
    second = api.upload_file(path_or_fileobj=b"version two", path_in_repo="weights.bin", repo_id="org/weights")
    assert first.oid != second.oid and len(second.oid) == 40
    assert Path(hf_hub_download("org/weights", "weights.bin")).read_bytes() == b"version two"
    assert Path(hf_hub_download("org/weights", "weights.bin", revision=first.oid)).read_bytes() == b"version one"
    assert api.model_info("org/weights", revision=first.oid).sha == first.oid
    history = [commit.commit_id for commit in api.list_repo_commits("org/weights")]
    assert history[:2] == [second.oid, first.oid] and len(history) == 3  # + the initial empty commit
    # A missing file answers EntryNotFound with the commit it looked in.
    response, _ = _request(local_hub, "HEAD", "/org/weights/resolve/main/nope.bin")
    assert response.status == 404
    assert response.getheader("X-Error-Code") == "EntryNotFound"
    assert response.getheader("X-Repo-Commit") == second.oid
    response, _ = _request(local_hub, "GET", "/api/models/org/weights/revision/no-such-branch")
    assert response.status == 404 and response.getheader("X-Error-Code") == "RevisionNotFound"


def test_resolve_serves_etag_commit_and_byte_ranges(local_hub):
    api = HfApi()
    api.create_repo("org/ranges")
    data = bytes(range(256)) * 4
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="org/ranges")
    response, body = _request(local_hub, "HEAD", "/org/ranges/resolve/main/blob.bin")
    assert response.status == 200 and body == b""
    assert response.getheader("ETag") == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.getheader("X-Repo-Commit") == commit.oid
    assert response.getheader("Content-Length") == str(len(data))
    response, body = _request(local_hub, "GET", "/org/ranges/resolve/main/blob.bin", headers={"Range": "bytes=10-19"})
    assert response.status == 206 and body == data[10:20]
    assert response.getheader("Content-Range") == f"bytes 10-19/{len(data)}"
    response, body = _request(local_hub, "GET", "/org/ranges/resolve/main/blob.bin", headers={"Range": "bytes=-5"})
    assert response.status == 206 and body == data[-5:]
    response, _ = _request(local_hub, "GET", "/org/ranges/resolve/main/blob.bin", headers={"Range": "bytes=5000-"})
    assert response.status == 416 and response.getheader("Content-Range") == f"bytes */{len(data)}"


def test_a_chunked_commit_body_is_accepted(local_hub):
    HfApi().create_repo("org/chunked")
    payload = _ndjson({"key": "header", "value": {"summary": "chunked"}}, _file_line("w.bin", b"w" * 100_000))
    pieces = (payload[start : start + 1000] for start in range(0, len(payload), 1000))
    host, port = local_hub.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", "/api/models/org/chunked/commit/main", body=pieces, encode_chunked=True)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 200
    assert _head(HfApi(), "org/chunked") == answer["commitOid"]
    assert _snapshot(local_hub, "org/chunked") == {"w.bin": b"w" * 100_000}


def test_a_stale_parent_commit_is_rejected(local_hub):
    api = HfApi()
    api.create_repo("org/stale")
    base = _head(api, "org/stale")
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="org/stale", parent_commit=base)
    head = _head(api, "org/stale")
    with pytest.raises(HfHubHTTPError) as raised:
        api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="org/stale", parent_commit=base)
    assert raised.value.response.status_code == 412
    assert "not the head" in raised.value.server_message
    assert _head(api, "org/stale") == head
    assert set(_snapshot(local_hub, "org/stale")) == {"a.txt"}
    assert list((local_hub.store.tmp).iterdir()) == []


def _concurrent_pushes(repo_id: str, parent_commit: str | None) -> list:
    """Two pushes of three files each, released together; returns each one's CommitInfo or exception."""
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def push(index: int) -> None:
        operations = [CommitOperationAdd(f"part{n}.bin", f"push {index} part {n} ".encode() * 20000) for n in range(3)]
        barrier.wait()
        try:
            results[index] = HfApi().create_commit(
                repo_id, operations, commit_message=f"push {index}", parent_commit=parent_commit
            )
        except HfHubHTTPError as error:
            results[index] = error

    threads = [threading.Thread(target=push, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.parametrize("with_parent", [False, True])
def test_concurrent_pushes_land_whole_or_are_cleanly_rejected(local_hub, with_parent):
    api = HfApi()
    api.create_repo("org/race")
    base = _head(api, "org/race")
    results = _concurrent_pushes("org/race", base if with_parent else None)
    landed = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, Exception)]
    if with_parent:
        # Both were based on the same head: exactly one lands, the other gets a clean 412.
        assert len(landed) == 1 and len(refused) == 1
        assert refused[0].response.status_code == 412
    else:
        assert len(landed) == 2
        history = [commit.commit_id for commit in api.list_repo_commits("org/race")]
        assert set(history[:2]) == {commit.oid for commit in landed} and history[2] == base
    # The head holds one push's files, never a mix of both.
    files = _snapshot(local_hub, "org/race")
    assert set(files) == {"part0.bin", "part1.bin", "part2.bin"}
    owners = {content.split(b" ")[1] for content in files.values()}
    assert len(owners) == 1


def test_an_upload_cut_off_midway_leaves_the_previous_revision(local_hub):
    api = HfApi()
    api.create_repo("org/cut")
    before = api.upload_file(path_or_fileobj=b"stable", path_in_repo="weights.bin", repo_id="org/cut").oid
    blobs_before = sorted(path.name for path in local_hub.store.blobs.rglob("*") if path.is_file())
    payload = _ndjson(
        {"key": "header", "value": {"summary": "doomed"}},
        _file_line("config.json", b"{}"),
        _file_line("weights.bin", b"x" * 3_000_000),
    )
    host, port = local_hub.server_address[:2]
    with socket.create_connection((host, port)) as client:
        head = (
            "POST /api/models/org/cut/commit/main HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        client.sendall(head.encode() + payload[: len(payload) // 2])
        # The server is streaming the weights into its staging folder when the client dies.
        deadline = time.monotonic() + 10
        while not any(local_hub.store.tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(local_hub.store.tmp.iterdir())
    deadline = time.monotonic() + 10
    while any(local_hub.store.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(local_hub.store.tmp.iterdir()) == []  # the partial upload was removed
    assert _head(api, "org/cut") == before
    assert _snapshot(local_hub, "org/cut") == {"weights.bin": b"stable"}
    assert sorted(path.name for path in local_hub.store.blobs.rglob("*") if path.is_file()) == blobs_before


def test_a_commit_refused_mid_body_does_not_leak_into_the_next_request(local_hub):
    """A commit refused while its body is still arriving (bad base64 in a multi-MiB upload): the error answer comes
    back, and the rest of the body is dropped, not read as the next request on the same keep-alive connection."""
    HfApi().create_repo("org/keepalive")
    bad = {"key": "file", "value": {"content": "!!!!" + "A" * 3_000_000, "path": "w.bin", "encoding": "base64"}}
    payload = _ndjson({"key": "header", "value": {"summary": "bad"}}, bad)
    host, port = local_hub.server_address[:2]
    requests = (
        "POST /api/models/org/keepalive/commit/main HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    requests += f"GET /api/models/org/keepalive HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=30) as client:
        sender = threading.Thread(target=client.sendall, args=(requests,))
        sender.start()
        answers = b""
        while piece := client.recv(1 << 16):
            answers += piece
        sender.join()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"400", b"200"], answers[:600]
    assert b"not valid base64" in answers and b'"id": "org/keepalive"' in answers
    assert _snapshot(local_hub, "org/keepalive") == {}


def test_writes_need_the_token_when_one_is_set(local_hub):
    HfApi().create_repo("org/guarded")
    local_hub.token = "s3cret"
    with pytest.raises(HfHubHTTPError) as missing:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="guess").upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    assert wrong.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as create:
        HfApi().create_repo("org/other")
    assert create.value.response.status_code == 401
    assert set(_snapshot(local_hub, "org/guarded")) == set()
    commit = HfApi(token="s3cret").upload_file(path_or_fileobj=b"x", path_in_repo="x.bin", repo_id="org/guarded")
    # Reads of public repos stay open.
    assert HfApi().model_info("org/guarded").sha == commit.oid
    # Private repos are readable with the token only (and look missing without it, as on the Hub).
    HfApi(token="s3cret").create_repo("org/hidden", private=True)
    with pytest.raises(HfHubHTTPError) as hidden:
        HfApi().model_info("org/hidden")
    assert hidden.value.response.status_code == 404
    assert HfApi(token="s3cret").model_info("org/hidden").private is True
    local_hub.read_only = True
    with pytest.raises(HfHubHTTPError) as read_only:
        HfApi(token="s3cret").upload_file(path_or_fileobj=b"y", path_in_repo="y.bin", repo_id="org/guarded")
    assert read_only.value.response.status_code == 403 and "read-only" in read_only.value.server_message


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/models/org/safe/commit/main", _ndjson({"key": "header", "value": {}}, _file_line("../x", b"1"))),
        ("POST", "/api/models/org/safe/commit/main", _ndjson(_file_line("/etc/evil", b"1"))),
        ("POST", "/api/models/org/safe/commit/main", _ndjson(_file_line("a/../../x", b"1"))),
        ("POST", "/api/models/org/safe/preupload/main", json.dumps({"files": [{"path": "../x"}]}).encode()),
        ("POST", "/api/models/%2e%2e/%2e%2e/commit/main", _ndjson(_file_line("x", b"1"))),
        ("POST", "/api/repos/create", json.dumps({"organization": "..", "name": "models"}).encode()),
        ("POST", "/api/repos/create", json.dumps({"organization": "org", "name": "a/../../b"}).encode()),
        ("GET", "/org/safe/resolve/main/..%2F..%2Frepo.json", None),
        ("GET", "/%2e%2e/models/resolve/main/x", None),
    ],
)
def test_traversal_attempts_are_refused(local_hub, method, path, body):
    HfApi().create_repo("org/safe")
    before = sorted(str(path) for path in local_hub.store.root.parent.rglob("*"))
    response, data = _request(local_hub, method, path, body=body)
    assert response.status == 400, data
    assert "invalid" in json.loads(data)["error"]
    assert sorted(str(path) for path in local_hub.store.root.parent.rglob("*")) == before


def test_commit_parser_streams_content_across_any_chunking(tmp_path):
    payload = _ndjson(
        {"key": "header", "value": {"summary": 'a "content": "trap" in the message', "parentCommit": "a" * 40}},
        _file_line("a.bin", bytes(range(256)) * 50),
        _file_line("empty.txt", b""),
        {"key": "deletedFile", "value": {"path": "old.txt"}},
    )
    for size in (1, 7, 4096, len(payload)):
        chunks = (payload[start : start + size] for start in range(0, len(payload), size))
        request = parse_commit_stream(chunks, tmp_path)
        assert request.summary == 'a "content": "trap" in the message'
        assert request.parent_commit == "a" * 40
        assert request.additions["a.bin"].path.read_bytes() == bytes(range(256)) * 50
        assert request.additions["a.bin"].sha256 == hashlib.sha256(bytes(range(256)) * 50).hexdigest()
        assert request.additions["empty.txt"].size == 0
        assert request.deletions == [("old.txt", False)]
        request.discard()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RegistryError, match="not valid base64"):
        bad = {"key": "file", "value": {"content": "@@@@", "path": "a", "encoding": "base64"}}
        parse_commit_stream(iter([_ndjson(bad)]), tmp_path)
    with pytest.raises(RegistryError, match="LFS uploads are not supported"):
        parse_commit_stream(iter([_ndjson({"key": "lfsFile", "value": {"path": "a", "oid": "0" * 64}})]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_hub_serve_command_prints_its_url_and_serves(tmp_path):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(tmp_path / "reg"), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        api = HfApi(endpoint=url)
        api.create_repo("team/served")
        assert api.model_info("team/served").id == "team/served"
        assert (tmp_path / "reg" / "models" / "team" / "served" / "repo.json").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)
