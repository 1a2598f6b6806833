"""The registry's Git LFS side, driven by huggingface_hub without Xet (`HF_HUB_DISABLE_XET`) and by hand for the bad
inputs: pushes and downloads are bit-exact, a re-push sends nothing, and a wrong body, an unsigned or cut-off upload,
an unknown or foreign `lfsFile` oid are each a specific 4xx that leaves nothing committed."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session, hf_raise_for_status

from hf_tts.cli import main as cli_main
from hf_tts.registry import LocalHubServer
from hf_tts.registry.blobs import BodyWriter
from tests.registry_utils import request

BIG_MB = int(os.environ.get("HF_TTS_TEST_LFS_MB", "120"))


@pytest.fixture
def no_xet(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def batch(server, repo_id: str, oid: str, size: int) -> dict:
    body = json.dumps({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}]})
    response, data = request(server, "POST", f"/{repo_id}.git/info/lfs/objects/batch", body.encode())
    assert response.status == 200, data
    return json.loads(data)["objects"][0]


def commit_lfs(api: HfApi, repo_id: str, path: str, oid: str, size: int) -> None:
    """A commit with one `lfsFile` line, as the client sends after an upload."""
    lines = [{"key": "header", "value": {"summary": "add"}}]
    lines.append({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}})
    answer = get_session().post(
        f"{api.endpoint}/api/models/{repo_id}/commit/main",
        content="\n".join(json.dumps(line) for line in lines).encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    hf_raise_for_status(answer)


def test_lfs_push_download_and_repush(local_hub, no_xet, tmp_path):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/lfs")
    folder = tmp_path / "model"
    folder.mkdir()
    data = os.urandom(BIG_MB << 20)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text('{"dim": 8}')
    # Small files: binary content (the preupload sample holds a NUL byte) is a large file, as on the Hub; text is not.
    (folder / "state.dat").write_bytes(b"\0\1" * 1000)
    (folder / "notes.txt").write_text("plain text\n" * 100)
    api.upload_folder(folder_path=str(folder), repo_id="team/lfs")
    digest = hashlib.sha256(data).hexdigest()
    (info,) = api.get_paths_info("team/lfs", ["model.safetensors"])
    assert info.lfs.sha256 == digest and info.lfs.size == len(data) and info.xet_hash is None
    small = {item.path: item for item in api.get_paths_info("team/lfs", ["state.dat", "notes.txt"])}
    assert small["state.dat"].lfs is not None and small["notes.txt"].lfs is None
    assert local_hub.store.blobs.path(digest).stat().st_size == len(data)

    path = hf_hub_download("team/lfs", "model.safetensors", cache_dir=str(tmp_path / "c1"))
    assert Path(path).read_bytes() == data
    snapshot = snapshot_download("team/lfs", cache_dir=str(tmp_path / "c2"))
    assert Path(snapshot, "model.safetensors").read_bytes() == data and Path(snapshot, "config.json").exists()

    # Re-push: nothing to upload (the batch API also answers "already here" for it), no new commit.
    head = api.model_info("team/lfs").sha
    blob_mtime = local_hub.store.blobs.path(digest).stat().st_mtime
    api.upload_folder(folder_path=str(folder), repo_id="team/lfs")
    assert api.model_info("team/lfs").sha == head
    assert local_hub.store.blobs.path(digest).stat().st_mtime == blob_mtime
    assert "actions" not in batch(local_hub, "team/lfs", digest, len(data))


def test_file_objects_go_through_lfs_even_with_xet(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/obj")
    data = os.urandom(3 << 20)
    api.upload_file(path_or_fileobj=io.BytesIO(data), path_in_repo="w.safetensors", repo_id="team/obj")
    (info,) = api.get_paths_info("team/obj", ["w.safetensors"])
    assert info.lfs.sha256 == hashlib.sha256(data).hexdigest() and info.xet_hash is None
    assert Path(hf_hub_download("team/obj", "w.safetensors", cache_dir=str(tmp_path / "c"))).read_bytes() == data


def test_bad_lfs_uploads_are_refused_and_commit_nothing(local_hub, no_xet):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/a")
    api.create_repo("team/b")
    head = api.model_info("team/a").sha
    data = os.urandom(100_000)
    oid = hashlib.sha256(data).hexdigest()
    answer = batch(local_hub, "team/a", oid, len(data))
    href = answer["actions"]["upload"]["href"].removeprefix(local_hub.url)

    # The body does not match the oid it was signed for.
    response, message = request(local_hub, "PUT", href, os.urandom(len(data)))
    assert response.status == 400 and b"does not match" in message
    # Unsigned, or signed for another object.
    response, _ = request(local_hub, "PUT", href.split("?")[0], data)
    assert response.status == 403
    response, _ = request(local_hub, "PUT", href.replace(oid, "0" * 64), data)
    assert response.status == 403
    # Cut off midway.
    host, port = local_hub.server_address[:2]
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"PUT {href} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data[:5000])
    time.sleep(0.5)
    assert not local_hub.store.blobs.path(oid).exists()
    # An lfsFile naming content never uploaded: refused, nothing committed.
    with pytest.raises(HfHubHTTPError) as refused:
        commit_lfs(api, "team/a", "w.bin", oid, len(data))
    assert refused.value.response.status_code == 400 and "never uploaded" in str(refused.value)
    assert api.model_info("team/a").sha == head

    response, _ = request(local_hub, "PUT", href, data)
    assert response.status == 200
    # Uploaded to team/a does not let team/b commit it (a sha256 alone is no proof of holding the bytes).
    with pytest.raises(HfHubHTTPError) as foreign:
        commit_lfs(api, "team/b", "w.bin", oid, len(data))
    assert foreign.value.response.status_code == 400
    with pytest.raises(HfHubHTTPError) as wrong_size:
        commit_lfs(api, "team/a", "w.bin", oid, len(data) + 1)
    assert wrong_size.value.response.status_code == 400 and "size" in str(wrong_size.value)
    assert api.model_info("team/a").sha == head

    # Uploaded but never committed: gc reclaims it (after the grace period); committed content stays.
    keep = os.urandom(50_000)
    api.create_commit("team/a", [CommitOperationAdd("keep.bin", keep)], commit_message="keep")
    assert cli_main(["hub", "gc", "--root", str(local_hub.store.root), "--grace-seconds", "0"]) == 0
    assert not local_hub.store.blobs.path(oid).exists()
    assert local_hub.store.blobs.path(hashlib.sha256(keep).hexdigest()).exists()
    response, body = request(local_hub, "GET", "/team/a/resolve/main/keep.bin")
    assert response.status == 200 and body == keep


def test_a_full_disk_is_a_507_that_stores_and_commits_nothing(local_hub, no_xet, monkeypatch, tmp_path, caplog):
    """The disk fills up in the middle of an upload: huggingface_hub gets a 507 saying what to do (it does not retry
    it), the registry logs one line instead of a traceback, no staging file or blob is left, nothing is committed;
    once space is back the same push lands."""
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/full")
    head = api.model_info("team/full").sha
    data = os.urandom(3 << 20)
    (tmp_path / "w.safetensors").write_bytes(data)
    write = BodyWriter.write
    blocks = []

    def fill_up(self, pieces, consume=None):  # noqa: ANN001, ANN202
        blocks.append(len(pieces))
        if len(blocks) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, pieces, consume)

    monkeypatch.setattr(BodyWriter, "write", fill_up)
    with pytest.raises(RuntimeError, match="Error while uploading") as failed:  # huggingface_hub's wrapper
        api.upload_file(
            path_or_fileobj=str(tmp_path / "w.safetensors"), path_in_repo="w.safetensors", repo_id="team/full"
        )
    full = failed.value.__cause__
    assert isinstance(full, HfHubHTTPError) and full.response.status_code == 507 and "storage is full" in str(full)
    assert len(blocks) == 2  # refused at once, not retried
    assert "storage is full" in caplog.text and "Traceback" not in caplog.text
    assert api.model_info("team/full").sha == head
    assert list(local_hub.store.blobs.staging.iterdir()) == []
    assert not local_hub.store.blobs.path(hashlib.sha256(data).hexdigest()).exists()

    # Any other disk error is not disguised as a full disk: a 500 that shows no internals.
    def fail(self, pieces, consume=None):  # noqa: ANN001, ANN202
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(BodyWriter, "write", fail)
    oid = hashlib.sha256(data).hexdigest()
    href = batch(local_hub, "team/full", oid, len(data))["actions"]["upload"]["href"].removeprefix(local_hub.url)
    response, message = request(local_hub, "PUT", href, data)
    assert response.status == 500 and b"storage" not in message and b"Input/output" not in message
    assert list(local_hub.store.blobs.staging.iterdir()) == []

    monkeypatch.setattr(BodyWriter, "write", write)
    api.upload_file(path_or_fileobj=str(tmp_path / "w.safetensors"), path_in_repo="w.safetensors", repo_id="team/full")
    assert Path(hf_hub_download("team/full", "w.safetensors", cache_dir=str(tmp_path / "c"))).read_bytes() == data


def test_a_stalled_upload_gets_408_and_a_slow_steady_one_lands(tmp_path, no_xet):
    """The body timeout counts from the last piece received: a client that stops is cut off (408, staging emptied),
    one that keeps sending small pieces more slowly than the timeout's worth of data is not."""
    data = os.urandom(3 << 20)  # several 1 MiB blocks, so the writer pipeline is in flight when the body stalls
    oid = hashlib.sha256(data).hexdigest()
    with LocalHubServer(tmp_path / "reg", body_timeout=0.5) as server:
        HfApi(endpoint=server.url).create_repo("team/slow")
        href = batch(server, "team/slow", oid, len(data))["actions"]["upload"]["href"].removeprefix(server.url)
        head = f"PUT {href} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(head + data[: (2 << 20) + 1000])
            started = time.monotonic()
            answer = sock.recv(1 << 16)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled for more than 0.5 s" in answer, answer[:300]
        assert 0.4 < waited < 10
        deadline = time.monotonic() + 10
        while any(server.store.tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(server.store.tmp.iterdir()) == [] and not server.store.blobs.path(oid).exists()

        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(head)
            pieces = [
                data[: len(data) - 7000],
                *(data[len(data) - 7000 + i : len(data) - 6000 + i] for i in range(0, 7000, 1000)),
            ]
            for piece in pieces:  # 2.1 s in all, never 0.5 s without a piece
                sock.sendall(piece)
                time.sleep(0.3)
            answer = sock.recv(1 << 16)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert server.store.blobs.path(oid).read_bytes() == data
