"""The registry under hostile or broken clients: bad paths, conflicting paths, wrongly typed JSON, bogus
Content-Length, idle and slow connections, huge commit lines, YAML bombs, a spoofed Host header, uploads cut off
midway, commits refused mid-body, concurrent pushes, internal errors; and `hf-tts hub serve` as a process."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from hf_tts.registry import LocalHubServer
from tests.test_registry_api import request


def ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def file_line(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"content": base64.b64encode(data).decode(), "path": path, "encoding": "base64"}}


def head_of(api: HfApi, repo_id: str) -> str:
    return api.model_info(repo_id).sha


def snapshot(server: LocalHubServer, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    store = server.store
    repo = store.get_repo("model", repo_id)
    tree = store.tree(store.resolve(repo, revision))
    return {path: store.blobs.path(entry.sha256).read_bytes() for path, entry in tree.files.items()}


def raw_exchange(server: LocalHubServer, data: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    host, port = server.server_address[:2]
    answers = b""
    with socket.create_connection((host, port), timeout=timeout) as client:
        sender = threading.Thread(target=lambda: _send_quietly(client, data))
        sender.start()
        try:
            while piece := client.recv(1 << 16):
                answers += piece
        except (ConnectionResetError, TimeoutError):
            pass
        sender.join()
    return answers


def _send_quietly(client: socket.socket, data: bytes) -> None:
    # The server may answer and close before reading everything: what some tests expect.
    with contextlib.suppress(OSError):
        client.sendall(data)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/models/org/safe/commit/main", ndjson({"key": "header", "value": {}}, file_line("../x", b"1"))),
        ("POST", "/api/models/org/safe/commit/main", ndjson(file_line("/etc/evil", b"1"))),
        ("POST", "/api/models/org/safe/commit/main", ndjson(file_line("a/../../x", b"1"))),
        ("POST", "/api/models/org/safe/commit/main", ndjson(file_line("x/.git/config", b"[core]"))),
        ("POST", "/api/models/org/safe/commit/main", ndjson(file_line(".git/hooks/post-checkout", b"#!/bin/sh"))),
        ("POST", "/api/models/org/safe/preupload/main", json.dumps({"files": [{"path": "../x"}]}).encode()),
        ("POST", "/api/models/%2e%2e/%2e%2e/commit/main", ndjson(file_line("x", b"1"))),
        ("POST", "/api/repos/create", json.dumps({"organization": "..", "name": "models"}).encode()),
        ("POST", "/api/repos/create", json.dumps({"organization": "org", "name": "a/../../b"}).encode()),
        ("POST", "/api/repos/create", json.dumps({"organization": "api", "name": "x"}).encode()),
        ("GET", "/org/safe/resolve/main/..%2F..%2Fregistry.db", None),
        ("GET", "/%2e%2e/models/resolve/main/x", None),
        ("POST", "/api/models/org/safe/branch/..%2Fx", json.dumps({}).encode()),
        ("POST", "/api/models/org/safe/tag/main", json.dumps({"tag": "refs/heads/main"}).encode()),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(local_hub, method, path, body):
    HfApi().create_repo("org/safe")
    before = sorted(str(path) for path in local_hub.store.root.parent.rglob("*") if "registry.db" not in path.name)
    head = head_of(HfApi(), "org/safe")
    response, data = request(local_hub, method, path, body=body)
    assert response.status == 400, data
    assert "invalid" in json.loads(data)["error"]
    after = sorted(str(path) for path in local_hub.store.root.parent.rglob("*") if "registry.db" not in path.name)
    assert after == before and head_of(HfApi(), "org/safe") == head


def test_a_path_cannot_be_a_file_and_a_folder(local_hub):
    api = HfApi()
    api.create_repo("org/shape")
    api.upload_file(path_or_fileobj=b"file", path_in_repo="a/b", repo_id="org/shape")
    head = head_of(api, "org/shape")
    for path in ("a", "a/b/c"):
        with pytest.raises(HfHubHTTPError) as conflict:
            api.upload_file(path_or_fileobj=b"x", path_in_repo=path, repo_id="org/shape")
        assert conflict.value.response.status_code == 409
    # Both in one commit is refused as well.
    with pytest.raises(HfHubHTTPError):
        api.create_commit(
            "org/shape", [CommitOperationAdd("x", b"1"), CommitOperationAdd("x/y", b"2")], commit_message="m"
        )
    assert head_of(api, "org/shape") == head and set(snapshot(local_hub, "org/shape")) == {"a/b"}


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/repos/create", {"name": 123, "organization": "org"}),
        ("POST", "/api/repos/create", {"name": "x", "organization": ["org"]}),
        ("POST", "/api/repos/create", {"name": "x", "organization": "org", "private": "yes"}),
        ("POST", "/api/repos/create", ["not", "an", "object"]),
        ("POST", "/api/models/org/typed/preupload/main", {"files": "x"}),
        ("POST", "/api/models/org/typed/preupload/main", {"files": [1, 2]}),
        ("POST", "/api/models/org/typed/preupload/main", {"files": [{"path": 5}]}),
        ("POST", "/api/models/org/typed/tag/main", {"tag": 5}),
        ("POST", "/api/models/org/typed/branch/dev", {"startingPoint": 1}),
        ("PUT", "/api/models/org/typed/settings", {"private": "no"}),
        ("POST", "/api/models/org/typed/super-squash/main", {"message": {"a": 1}}),
        ("POST", "/api/repos/move", {"fromRepo": "org/typed", "toRepo": None}),
        ("POST", "/api/validate-yaml", {"content": 42}),
        ("POST", "/api/models/org/typed/paths-info/main", {"paths": "README.md"}),
    ],
)
def test_wrongly_typed_json_is_a_400_never_a_500(local_hub, method, path, body):
    HfApi().create_repo("org/typed")
    headers = {"Content-Type": "application/json"}
    response, data = request(local_hub, method, path, body=json.dumps(body).encode(), headers=headers)
    assert response.status == 400, data
    assert response.getheader("X-Error-Message")


@pytest.mark.parametrize(
    "line",
    [
        {"key": "header", "value": ["list"]},
        {"key": "header", "value": {"summary": 5}},
        {"key": "header", "value": {"parentCommit": 12}},
        {"key": 7, "value": {}},
        {"key": "deletedFile", "value": {"path": None}},
        {"key": "file", "value": {"path": "a", "content": "YQ==", "encoding": "hex"}},
        {"key": "unknownOp", "value": {}},
        "just a string",
    ],
)
def test_wrongly_typed_commit_lines_are_a_400(local_hub, line):
    HfApi().create_repo("org/lines")
    response, data = request(local_hub, "POST", "/api/models/org/lines/commit/main", json.dumps(line).encode() + b"\n")
    assert response.status == 400, data


def test_a_negative_or_bogus_content_length_is_refused_without_buffering(local_hub):
    HfApi().create_repo("org/length")
    host, port = local_hub.server_address[:2]
    for length in ("-1", "-99999999", "12abc", "1, 2"):
        head = (
            f"POST /api/models/org/length/commit/main HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        started = time.monotonic()
        answer = raw_exchange(local_hub, head + b"A" * (4 << 20), timeout=30)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert time.monotonic() - started < 20
    assert HfApi().model_info("org/length").id == "org/length"


def test_request_headers_past_the_cap_are_refused_and_the_server_lives(local_hub):
    """llhttp would buffer one header of any length: past 64 KiB of headers the connection gets 400 and is closed,
    whether the headers come at once or dribble in; normal requests are served afterwards."""
    from hf_tts.registry.server import MAX_HEADER_BYTES

    huge = b"GET /api/models HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (4 * MAX_HEADER_BYTES)
    answer = raw_exchange(local_hub, huge, timeout=30)
    assert answer.startswith(b"HTTP/1.1 400") and b"Request headers are larger than" in answer, answer[:200]
    host, port = local_hub.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as client:
        client.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\n")
        answer, cut = b"", False
        try:
            for _ in range(2 * MAX_HEADER_BYTES // 1000):
                client.sendall(b"X-Many: " + b"b" * 990 + b"\r\n")
            while piece := client.recv(1 << 16):
                answer += piece
        except (BrokenPipeError, ConnectionResetError):
            cut = True  # the server closed while bytes it never read were in flight: TCP resets, the 400 is lost
    # Without the cap the server would wait for the rest, then close quietly at the 10 s header deadline.
    assert answer.startswith(b"HTTP/1.1 400") or cut, answer[:200]
    fine = b"GET /api/models HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n\r\n"
    assert raw_exchange(
        local_hub, fine + b"GET /api/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200")


def test_idle_and_slow_connections_are_bounded(tmp_path):
    with LocalHubServer(tmp_path / "reg", header_timeout=0.5, timeout_keep_alive=1, limit_concurrency=30) as server:
        host, port = server.server_address[:2]
        threads_before = threading.active_count()
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(60)]
        slow = socket.create_connection((host, port), timeout=10)
        slow.sendall(b"GET /api/models HTTP/1.1\r\n")  # headers never finished
        assert threading.active_count() <= threads_before + 2  # no thread per connection
        deadline = time.monotonic() + 10
        closed = 0
        for connection in [*idle, slow]:
            connection.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                closed += connection.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
            connection.close()
        assert closed == 61
        # Served normally afterwards.
        response, data = request(server, "GET", "/api/models")
        assert response.status == 200 and json.loads(data) == []


def test_a_huge_commit_line_is_refused_with_413_and_the_server_lives(local_hub):
    HfApi().create_repo("org/huge")
    summary = "x" * (3 << 20)  # a 3 MB commit summary (the folder server got OOM-killed by 200 MB)
    payload = ndjson({"key": "header", "value": {"summary": summary}}, file_line("a.txt", b"a"))
    response, data = request(local_hub, "POST", "/api/models/org/huge/commit/main", payload)
    assert response.status == 413 and b"longer than" in data
    path_line = ndjson({"key": "deletedFile", "value": {"path": "p" * (2 << 20)}})
    response, _ = request(local_hub, "POST", "/api/models/org/huge/commit/main", path_line)
    assert response.status == 413
    assert snapshot(local_hub, "org/huge") == {}
    assert HfApi().upload_file(path_or_fileobj=b"ok", path_in_repo="ok.txt", repo_id="org/huge").oid


def test_a_yaml_alias_bomb_in_a_readme_stays_small(local_hub):
    HfApi().create_repo("org/bomb")
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 9)]
    card = "---\n" + "\n".join(lines) + "\ntags: [bomb]\n---\n# card\n"
    # The client validates a README before committing; the registry refuses the bomb there...
    response, data = request(local_hub, "POST", "/api/validate-yaml", json.dumps({"content": card}).encode())
    assert response.status == 400 and ("alias" in data.decode().lower() or "anchor" in data.decode().lower())
    # ...and a raw commit that skips validation gets a card without metadata, not a 130 MB model_info.
    response, _ = request(
        local_hub, "POST", "/api/models/org/bomb/commit/main", ndjson(file_line("README.md", card.encode()))
    )
    assert response.status == 200
    started = time.monotonic()
    response, data = request(local_hub, "GET", "/api/models/org/bomb")
    assert response.status == 200 and len(data) < 4096 and time.monotonic() - started < 5
    assert json.loads(data)["cardData"] == {} and [model.id for model in HfApi().list_models(filter="bomb")] == []


def test_urls_come_from_the_public_url_never_the_host_header(tmp_path):
    with LocalHubServer(tmp_path / "reg", public_url="https://models.example.org/") as server:
        headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "Content-Type": "application/json"}
        body = json.dumps({"organization": "org", "name": "m"}).encode()
        response, data = request(server, "POST", "/api/repos/create", body, headers)
        assert json.loads(data)["url"] == "https://models.example.org/org/m"
        response, data = request(server, "POST", "/api/models/org/m/commit/main", ndjson(file_line("a", b"a")), headers)
        assert json.loads(data)["commitUrl"].startswith("https://models.example.org/org/m/commit/")
        response, _ = request(server, "GET", "/api/models/org/m/tree/main?limit=1", headers=headers)
        assert b"evil" not in data


def test_an_internal_error_is_logged_but_not_shown(local_hub, monkeypatch, caplog):
    HfApi().create_repo("org/boom")

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail /srv/path")

    monkeypatch.setattr(local_hub.store, "refs", broken)

    def logged() -> bool:
        return any(record.exc_info and "secret internal detail" in str(record.exc_info[1]) for record in caplog.records)

    with caplog.at_level(logging.ERROR):
        response, data = request(local_hub, "GET", "/api/models/org/boom/refs")
        deadline = time.monotonic() + 10
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.02)  # the server logs right after it has answered
    assert response.status == 500 and b"secret" not in data and b"/srv" not in data
    assert logged()


def test_the_old_tmp_and_dead_processes_uploads_are_cleaned_at_start(tmp_path):
    root = tmp_path / "reg"
    with LocalHubServer(root):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace("-", "_") or "host"
    stale = root / "tmp" / f"proc-{host}-{dead.pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "upload-1").write_bytes(b"partial")
    (root / "tmp" / "upload-from-the-folder-server").write_bytes(b"partial")
    with LocalHubServer(root) as server:
        assert sorted(path.name for path in (root / "tmp").iterdir()) == [server.store.tmp.name]


def test_a_chunked_commit_body_is_accepted(local_hub):
    HfApi().create_repo("org/chunked")
    payload = ndjson({"key": "header", "value": {"summary": "chunked"}}, file_line("w.txt", b"w" * 100_000))
    pieces = (payload[start : start + 1000] for start in range(0, len(payload), 1000))
    host, port = local_hub.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("POST", "/api/models/org/chunked/commit/main", body=pieces, encode_chunked=True)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 200
    assert head_of(HfApi(), "org/chunked") == answer["commitOid"]
    assert snapshot(local_hub, "org/chunked") == {"w.txt": b"w" * 100_000}


def test_a_stale_parent_commit_is_rejected(local_hub):
    api = HfApi()
    api.create_repo("org/stale")
    base = head_of(api, "org/stale")
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="org/stale", parent_commit=base)
    head = head_of(api, "org/stale")
    with pytest.raises(HfHubHTTPError) as raised:
        api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="org/stale", parent_commit=base)
    assert raised.value.response.status_code == 412 and "not the head" in raised.value.server_message
    assert head_of(api, "org/stale") == head and set(snapshot(local_hub, "org/stale")) == {"a.txt"}
    assert list(local_hub.store.tmp.iterdir()) == []


def concurrent_pushes(repo_id: str, parent_commit: str | None, count: int = 2) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def push(index: int) -> None:
        operations = [CommitOperationAdd(f"part{n}.txt", f"push {index} part {n} ".encode() * 20000) for n in range(3)]
        barrier.wait()
        try:
            results[index] = HfApi().create_commit(
                repo_id, operations, commit_message=f"push {index}", parent_commit=parent_commit
            )
        except HfHubHTTPError as error:
            results[index] = error

    threads = [threading.Thread(target=push, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.parametrize("with_parent", [False, True])
def test_concurrent_pushes_land_whole_or_are_cleanly_rejected(local_hub, with_parent):
    api = HfApi()
    api.create_repo("org/race")
    base = head_of(api, "org/race")
    results = concurrent_pushes("org/race", base if with_parent else None)
    landed = [result for result in results if not isinstance(result, Exception)]
    refused = [result for result in results if isinstance(result, Exception)]
    if with_parent:
        assert len(landed) == 1 and len(refused) == 1 and refused[0].response.status_code == 412
    else:
        assert len(landed) == 2
        history = [commit.commit_id for commit in api.list_repo_commits("org/race")]
        assert set(history[:2]) == {commit.oid for commit in landed} and history[2] == base
    files = snapshot(local_hub, "org/race")
    assert set(files) == {"part0.txt", "part1.txt", "part2.txt"}
    assert len({content.split(b" ")[1] for content in files.values()}) == 1  # one push's files, never a mix


def test_an_upload_cut_off_midway_leaves_the_previous_revision(local_hub):
    api = HfApi()
    api.create_repo("org/cut")
    before = api.upload_file(path_or_fileobj=b"stable", path_in_repo="weights.txt", repo_id="org/cut").oid
    blobs_before = sorted(path.name for path in local_hub.store.blobs.iter_blobs())
    payload = ndjson(
        {"key": "header", "value": {"summary": "doomed"}},
        file_line("config.json", b"{}"),
        file_line("weights.txt", b"x" * 3_000_000),
    )
    host, port = local_hub.server_address[:2]
    staging = local_hub.store.tmp
    with socket.create_connection((host, port)) as client:
        head = (
            "POST /api/models/org/cut/commit/main HTTP/1.1\r\n"
            f"Host: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        client.sendall(head.encode() + payload[: len(payload) // 2])
        deadline = time.monotonic() + 10
        while not any(staging.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(staging.iterdir())  # the server is streaming the weights into staging when the client dies
    deadline = time.monotonic() + 10
    while any(staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(staging.iterdir()) == []
    assert head_of(api, "org/cut") == before
    assert snapshot(local_hub, "org/cut") == {"weights.txt": b"stable"}
    assert sorted(path.name for path in local_hub.store.blobs.iter_blobs()) == blobs_before


def test_a_commit_refused_mid_body_does_not_leak_into_the_next_request(local_hub):
    HfApi().create_repo("org/keepalive")
    bad = {"key": "file", "value": {"content": "!!!!" + "A" * 3_000_000, "path": "w.txt", "encoding": "base64"}}
    payload = ndjson({"key": "header", "value": {"summary": "bad"}}, bad)
    requests = (
        "POST /api/models/org/keepalive/commit/main HTTP/1.1\r\n"
        f"Host: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    requests += b"GET /api/models/org/keepalive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers = raw_exchange(local_hub, requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"400", b"200"], answers[:600]
    assert b"not valid base64" in answers and b'"id":"org/keepalive"' in answers
    assert snapshot(local_hub, "org/keepalive") == {}


def test_hub_serve_command_starts_fast_without_torch_and_serves(tmp_path):
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(tmp_path / "reg"), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        startup = time.monotonic() - started
        assert url.startswith("http://127.0.0.1:")
        api = HfApi(endpoint=url)
        api.create_repo("team/served")
        assert api.model_info("team/served").id == "team/served"
        assert (tmp_path / "reg" / "registry.db").is_file()
        status = Path(f"/proc/{process.pid}/status")
        if status.is_file():  # Linux: the idle server stays small (no torch, no transformers)
            rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
            assert rss_kb < 100 * 1024, f"{rss_kb} kB"
        print(f"hub serve answered after {startup:.2f} s")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    # SIGTERM is a normal stop for a server: graceful shutdown, exit 0, no "no output was written" message
    assert process.returncode == 0, stderr
    assert stderr.strip().endswith("hf-tts hub: stopped") and "Traceback" not in stderr


def test_the_registry_does_not_import_torch():
    code = (
        "import sys, hf_tts.registry.app, hf_tts.registry.server; assert 'torch' not in sys.modules, 'torch'; "
        "assert 'transformers' not in sys.modules, 'transformers'; assert 'numpy' not in sys.modules, 'numpy'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_serve_refuses_bad_options_in_one_line(tmp_path, capsys):
    from hf_tts.cli import main as hf_tts_main

    (tmp_path / "file").write_text("x")
    assert hf_tts_main(["hub", "serve", "--root", str(tmp_path / "file")]) == 2
    assert hf_tts_main(["hub", "gc", "--root", str(tmp_path / "file")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    with pytest.raises(SystemExit) as port:
        hf_tts_main(["hub", "serve", "--root", str(tmp_path / "r"), "--port", "70000"])
    assert port.value.code == 2
    assert hf_tts_main(["hub", "serve", "--root", str(tmp_path / "r"), "--public-url", "ftp://x"]) == 2
    assert (
        hf_tts_main(["hub", "serve", "--root", str(tmp_path / "r"), "--database", "postgresql://nobody@127.0.0.1:1/x"])
        == 2
    )
    assert "cannot open the registry database" in capsys.readouterr().err
