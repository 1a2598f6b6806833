"""The registry's Xet CAS, driven by the default huggingface_hub client (hf_xet installed) and by hand-built xorbs
and shards for the bad inputs: pushes and downloads are bit-exact, a re-push sends nothing, chunks are shared
across repos, and every bad upload is a specific 4xx that leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import struct
import time
from pathlib import Path

import lz4.frame
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, snapshot_download
from hypothesis import given
from hypothesis import strategies as st

from hf_tts.cli import main as cli_main
from hf_tts.registry import xet_format as xf
from tests.fuzz import FUZZ
from tests.registry_utils import request

BIG_MB = int(os.environ.get("HF_TTS_TEST_XET_MB", "160"))


def xet_token(server, repo_id: str, scope: str) -> str:
    response, data = request(server, "GET", f"/api/models/{repo_id}/xet-{scope}-token/main")
    assert response.status == 200, data
    answer = json.loads(data)
    assert answer["casUrl"] == server.url + "/cas" and answer["exp"] > time.time()
    assert response.getheader("X-Xet-Access-Token") == answer["accessToken"]
    return answer["accessToken"]


def build_xorb(chunks: list[bytes], schemes: list[int] | None = None) -> tuple[str, bytes]:
    """A serialized xorb (no footer) and its hash, chunks stored uncompressed, LZ4 or byte-grouped LZ4."""
    body = bytearray()
    for number, chunk in enumerate(chunks):
        scheme = (schemes or [number % 3 for _ in chunks])[number]
        if scheme == 2:
            grouped = b"".join(chunk[group::4] for group in range(4))
            payload = lz4.frame.compress(grouped)
        elif scheme == 1:
            payload = lz4.frame.compress(chunk)
        else:
            payload = chunk
        body += struct.pack("<B", 0) + len(payload).to_bytes(3, "little") + bytes([scheme])
        body += len(chunk).to_bytes(3, "little") + payload
    nodes = [(xf.chunk_hash(chunk), len(chunk)) for chunk in chunks]
    return xf.hash_to_hex(xf.merkle_root(nodes)), bytes(body)


def build_shard(files: list[tuple[list[bytes], list[tuple[str, int, int, list[bytes]]]]]) -> bytes:
    """An upload shard: for each file (its chunks, its terms as (xorb hex, start, end, chunks of the term))."""
    body = bytearray(struct.pack("<32sQQ", xf.SHARD_TAG, 2, 0))
    for chunks, terms in files:
        nodes = [(xf.chunk_hash(chunk), len(chunk)) for chunk in chunks]
        flags = xf.FLAG_VERIFICATION | xf.FLAG_METADATA_EXT
        body += struct.pack("<32sII8x", xf.file_hash(nodes), flags, len(terms))
        for xorb_hex, start, end, term_chunks in terms:
            size = sum(len(chunk) for chunk in term_chunks)
            body += struct.pack("<32sIIII", xf.hex_to_hash(xorb_hex), 0, size, start, end)
        for _, _, _, term_chunks in terms:
            body += xf.verification_hash([xf.chunk_hash(chunk) for chunk in term_chunks]) + bytes(16)
        body += sha256_field(b"".join(chunks)) + bytes(16)
    body += xf.BOOKEND + xf.BOOKEND
    return bytes(body)


def sha256_field(data: bytes) -> bytes:
    """The shard's sha256 field: the digest as a Xet hash string, read back as raw words."""
    return xf.hex_to_hash(hashlib.sha256(data).hexdigest())


def stored_xorbs(server) -> dict[str, int]:
    root = Path(server.store.root) / "xorbs"
    return {path.name: path.stat().st_size for path in root.glob("*/*")}


# --- formats ----------------------------------------------------------------------------------------------------------


def read_xorb(body: bytes, expected: bytes, cuts: list[int] | None = None) -> xf.XorbIndex:
    """Feed a xorb to `XorbReader` split at `cuts` (as an upload's pieces arrive), then finish it."""
    reader = xf.XorbReader(expected)
    edges = [0, *sorted(cut % (len(body) + 1) for cut in cuts or []), len(body)]
    for start, end in zip(edges, edges[1:]):
        reader.feed(body[start:end])
    return reader.finish()


def with_footer(body: bytes) -> bytes:
    """`body` plus an info footer (its content is not checked; its length field must point back at it)."""
    footer = xf._XORB_FOOTER_IDENT + bytes(41)
    return body + footer + struct.pack("<I", len(footer))


FORMAT_CHUNKS = [bytes(range(256)) * 40, b"\x01\x02\x03" * 7001, os.urandom(9000), os.urandom(7000)]
FORMAT_XORB = build_xorb(FORMAT_CHUNKS, schemes=[1, 2, 0, 0])


@pytest.mark.parametrize("read_block", [xf.READ_BLOCK, 1, 20000])
def test_xorb_and_hash_formats_round_trip(tmp_path, monkeypatch, read_block):
    # read_block: stored chunks are decoded from blocks of at most this many bytes (at least one chunk each).
    monkeypatch.setattr(xf, "READ_BLOCK", read_block)
    chunks = FORMAT_CHUNKS
    xorb_hex, body = FORMAT_XORB
    path = tmp_path / "x"
    path.write_bytes(body)
    index = read_xorb(body, xf.hex_to_hash(xorb_hex))
    assert index.sizes == tuple(len(chunk) for chunk in chunks)
    assert index.data_end == len(body)
    assert xf.XorbIndex.from_bytes(index.to_bytes()) == index
    with open(path, "rb") as stream:
        assert [bytes(chunk) for chunk in xf.iter_chunks(stream, index, 0, 4)] == chunks
        assert [bytes(chunk) for chunk in xf.iter_chunks(stream, index, 1, 3)] == chunks[1:3]
    assert xf.hex_to_hash(xf.hash_to_hex(b"\x00\x01" * 16)) == b"\x00\x01" * 16
    assert xf.hash_to_hex(bytes(range(32)))[:16] == "0706050403020100"  # words are little-endian u64s
    flipped = body[:-1] + bytes([body[-1] ^ 1])  # one flipped bit in the last (raw) chunk
    with pytest.raises(xf.XetFormatError, match="xorb hash mismatch"):
        read_xorb(flipped, xf.hex_to_hash(xorb_hex))


@FUZZ
@given(st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_a_xorb_reads_the_same_however_its_bytes_are_split(cuts, footer):
    """The upload's pieces may cut a xorb anywhere (inside a chunk header, a payload, the footer): same index."""
    xorb_hex, body = FORMAT_XORB
    whole = read_xorb(body, xf.hex_to_hash(xorb_hex))
    index = read_xorb(with_footer(body) if footer else body, xf.hex_to_hash(xorb_hex), cuts)
    assert index == whole  # data_end stops before a footer


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body: body[:-1], "ends inside a chunk"),
        (lambda body: body[:5], "ends inside a chunk"),
        (lambda body: with_footer(body)[:-1], "neither a chunk nor its footer"),
        (lambda body: body + b"XETBLOB" + struct.pack("<I", 99), "neither a chunk nor its footer"),
        (lambda body: body + b"\x01" + bytes(7), "chunk header version 1"),
        (lambda body: b"", "holds no chunks"),
    ],
)
def test_malformed_xorbs_are_refused_with_what_is_wrong(mangle, message):
    xorb_hex, body = FORMAT_XORB
    with pytest.raises(xf.XetFormatError, match=message):
        read_xorb(mangle(body), xf.hex_to_hash(xorb_hex), [3, 700])


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0), max_size=4))
def test_random_bytes_are_refused_as_xorbs_and_shards(data, cuts):
    with pytest.raises(xf.XetFormatError):
        read_xorb(data, bytes(32), cuts)
    with pytest.raises(xf.XetFormatError):
        xf.parse_shard(io.BytesIO(data))


# --- the real client ------------------------------------------------------------------------------------------------


def test_xet_push_download_repush_and_cross_repo_dedupe(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/big")
    folder = tmp_path / "model"
    folder.mkdir()
    data = os.urandom(BIG_MB << 20)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text('{"dim": 8}')
    api.upload_folder(folder_path=str(folder), repo_id="team/big")
    first = stored_xorbs(local_hub)
    assert sum(first.values()) >= len(data)  # random bytes: xorbs hold all of it

    (info,) = api.get_paths_info("team/big", ["model.safetensors"])
    assert info.lfs.sha256 == hashlib.sha256(data).hexdigest() and info.xet_hash and info.size == len(data)
    head = get_hf_file_metadata(f"{local_hub.url}/team/big/resolve/main/model.safetensors")
    assert head.etag == info.lfs.sha256 and head.xet_file_data.file_hash == info.xet_hash

    path = hf_hub_download("team/big", "model.safetensors", cache_dir=str(tmp_path / "c1"))
    assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(data).digest()
    snapshot = snapshot_download("team/big", cache_dir=str(tmp_path / "c2"))
    assert Path(snapshot, "model.safetensors").read_bytes() == data
    response, body = request(
        local_hub, "GET", "/team/big/resolve/main/model.safetensors", headers={"Range": "bytes=5000000-5999999"}
    )
    assert response.status == 206 and body == data[5000000:6000000]

    # Re-push: the client sees the sha256 oid, uploads nothing and makes no commit.
    head_before = api.model_info("team/big").sha
    api.upload_folder(folder_path=str(folder), repo_id="team/big")
    assert api.model_info("team/big").sha == head_before and stored_xorbs(local_hub) == first

    # A "fine-tune" in another repo: 1 MiB changed in the middle; only the chunks around it are new.
    tuned = bytearray(data)
    tuned[len(data) // 2 : len(data) // 2 + (1 << 20)] = os.urandom(1 << 20)
    (folder / "model.safetensors").write_bytes(tuned)
    api.create_repo("other/tuned")
    api.upload_file(
        path_or_fileobj=str(folder / "model.safetensors"), path_in_repo="model.safetensors", repo_id="other/tuned"
    )
    added = sum(stored_xorbs(local_hub).values()) - sum(first.values())
    assert 0 < added < 4 << 20, added
    path = hf_hub_download("other/tuned", "model.safetensors", cache_dir=str(tmp_path / "c3"))
    assert Path(path).read_bytes() == bytes(tuned)


def test_from_pretrained_through_xet(local_hub, tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = BertModel(config)
    model.push_to_hub("team/tiny-bert")
    files = HfApi(endpoint=local_hub.url).get_paths_info("team/tiny-bert", ["model.safetensors"])
    assert files[0].xet_hash is not None
    loaded = BertModel.from_pretrained("team/tiny-bert", cache_dir=str(tmp_path / "c"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


# --- bad input -------------------------------------------------------------------------------------------------------


def test_bad_xet_uploads_are_refused_and_leave_nothing(local_hub):
    api = HfApi(endpoint=local_hub.url)
    api.create_repo("team/a")
    api.create_repo("team/b")
    write = xet_token(local_hub, "team/a", "write")
    read = xet_token(local_hub, "team/a", "read")
    chunks = [os.urandom(20000), os.urandom(30000)]
    xorb_hex, body = build_xorb(chunks)
    auth = {"Authorization": f"Bearer {write}"}

    # A xorb whose bytes do not hash to its name.
    wrong = xf.hash_to_hex(os.urandom(32))
    response, data = request(local_hub, "POST", f"/cas/v1/xorbs/default/{wrong}", body, auth)
    assert response.status == 400 and b"xorb hash mismatch" in data
    # Read tokens never write; forged and expired tokens are refused.
    response, _ = request(
        local_hub, "POST", f"/cas/v1/xorbs/default/{xorb_hex}", body, {"Authorization": f"Bearer {read}"}
    )
    assert response.status == 403
    response, _ = request(
        local_hub, "POST", f"/cas/v1/xorbs/default/{xorb_hex}", body, {"Authorization": f"Bearer {write}x"}
    )
    assert response.status == 401
    registry = local_hub.app.app.state.registry
    registry.cas.token_ttl = -1
    expired = xet_token_raw(local_hub, "team/a")
    registry.cas.token_ttl = 900
    response, data = request(
        local_hub, "POST", f"/cas/v1/xorbs/default/{xorb_hex}", body, {"Authorization": f"Bearer {expired}"}
    )
    assert response.status == 401 and b"expired" in data
    # An upload cut off mid-body.
    host, port = local_hub.server_address[:2]
    with socket.create_connection((host, port)) as sock:
        head = f"POST /cas/v1/xorbs/default/{xorb_hex} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {write}\r\n"
        sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
    time.sleep(0.5)
    assert stored_xorbs(local_hub) == {}
    assert not [p for p in Path(local_hub.store.tmp).iterdir() if p.name.startswith("xorb-")]

    # A shard naming a xorb that was never uploaded.
    shard = build_shard([(chunks, [(xorb_hex, 0, 2, chunks)])])
    response, data = request(local_hub, "POST", "/cas/v1/shards", shard, auth)
    assert response.status == 400 and b"never uploaded" in data

    response, data = request(local_hub, "POST", f"/cas/v1/xorbs/default/{xorb_hex}", body, auth)
    assert response.status == 200 and json.loads(data) == {"was_inserted": True}
    # A verification hash that does not match the xorb's chunks.
    tampered = bytearray(shard)
    verification_at = 48 + 48 + 48
    tampered[verification_at] ^= 1
    response, data = request(local_hub, "POST", "/cas/v1/shards", bytes(tampered), auth)
    assert response.status == 400 and b"verification hash mismatch" in data
    # A sha256 that is not the file's.
    response, data = request(local_hub, "POST", "/cas/v1/shards", _with_sha256(shard, b"other"), auth)
    assert response.status == 400 and b"sha256" in data
    with local_hub.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM repo_objects").scalar() == 0

    response, data = request(local_hub, "POST", "/cas/v1/shards", shard, auth)
    assert response.status == 200, data
    file_hex = xf.hash_to_hex(xf.file_hash([(xf.chunk_hash(c), len(c)) for c in chunks]))
    # The same file again (a re-push) is checked against the sha256 verified the first time, without rebuilding its
    # bytes; a different sha256 for it is still refused.
    rebuilt = registry.cas.file_sha256
    registry.cas.file_sha256 = None  # a call would fail
    try:
        response, data = request(local_hub, "POST", "/cas/v1/shards", shard, auth)
        assert response.status == 200, data
        response, data = request(local_hub, "POST", "/cas/v1/shards", _with_sha256(shard, b"other"), auth)
        assert response.status == 400 and b"sha256" in data
    finally:
        registry.cas.file_sha256 = rebuilt
    # Reconstruction: only with a token of the repo the file was uploaded to.
    token_b = xet_token(local_hub, "team/b", "read")
    response, _ = request(
        local_hub, "GET", f"/cas/v1/reconstructions/{file_hex}", None, {"Authorization": f"Bearer {token_b}"}
    )
    assert response.status == 404
    response, data = request(
        local_hub,
        "GET",
        f"/cas/v1/reconstructions/{file_hex}",
        None,
        {"Authorization": f"Bearer {read}", "Range": "bytes=25000-"},
    )
    answer = json.loads(data)
    assert answer["offset_into_first_range"] == 5000 and answer["terms"][0]["range"] == {"start": 1, "end": 2}
    fetch = answer["fetch_info"][xorb_hex][0]
    url = fetch["url"].removeprefix(local_hub.url)
    response, _ = request(local_hub, "GET", url)  # no Range header: refused
    assert response.status == 403
    byte_range = f"bytes={fetch['url_range']['start']}-{fetch['url_range']['end']}"
    response, data = request(local_hub, "GET", url, None, {"Range": byte_range})
    assert response.status == 206 and len(data) == fetch["url_range"]["end"] - fetch["url_range"]["start"] + 1

    # Global dedupe: the first chunk of the xorb is found; the answer hides raw chunk hashes behind a key.
    first_chunk = xf.hash_to_hex(xf.chunk_hash(chunks[0]))
    response, data = request(
        local_hub, "GET", f"/cas/v1/chunks/default-merkledb/{first_chunk}", None, {"Authorization": f"Bearer {read}"}
    )
    assert response.status == 200
    key = data[-200:][72:104]
    assert xf.hmac_hash(xf.chunk_hash(chunks[0]), key) in data and xf.chunk_hash(chunks[0]) not in data
    response, _ = request(
        local_hub,
        "GET",
        f"/cas/v1/chunks/default-merkledb/{xf.hash_to_hex(bytes(32))}",
        None,
        {"Authorization": f"Bearer {read}"},
    )
    assert response.status == 404

    # Registered but never committed: gc reclaims the registration, the file and the xorb.
    assert cli_main(["hub", "gc", "--root", str(local_hub.store.root), "--grace-seconds", "0"]) == 0
    assert stored_xorbs(local_hub) == {}


def xet_token_raw(server, repo_id: str) -> str:
    response, data = request(server, "GET", f"/api/models/{repo_id}/xet-write-token/main")
    return json.loads(data)["accessToken"]


def _with_sha256(shard: bytes, content: bytes) -> bytes:
    """Replace the single file's sha256 extension (the 48 bytes before the two bookends)."""
    end = len(shard) - 2 * len(xf.BOOKEND)
    return shard[: end - 48] + sha256_field(content) + bytes(16) + shard[end:]


def test_a_xorb_malformed_past_its_first_blocks_is_refused_and_leaves_nothing(local_hub):
    """The verifier runs in the writer thread while later blocks still arrive: a broken chunk header 3 MiB in is a
    400 naming it, the staging file goes, and the connection still serves the next request."""
    HfApi(endpoint=local_hub.url).create_repo("team/late")
    write = xet_token(local_hub, "team/late", "write")
    chunks = [os.urandom(60000) for _ in range(60)]  # ~3.4 MiB, raw chunks
    xorb_hex, body = build_xorb(chunks, schemes=[0] * len(chunks))
    broken = bytearray(body)
    broken[(8 + 60000) * 55] = 7  # the version byte of chunk 55's header
    connection = http.client.HTTPConnection(*local_hub.server_address[:2], timeout=30)
    connection.request("POST", f"/cas/v1/xorbs/default/{xorb_hex}", bytes(broken), {"Authorization": f"Bearer {write}"})
    response = connection.getresponse()
    assert response.status == 400 and b"chunk header version 7" in response.read()
    assert stored_xorbs(local_hub) == {}
    deadline = time.monotonic() + 10
    while [
        p for p in Path(local_hub.store.tmp).iterdir() if p.name.startswith("xorb-")
    ] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in Path(local_hub.store.tmp).iterdir() if p.name.startswith("xorb-")]
    connection.request("POST", f"/cas/v1/xorbs/default/{xorb_hex}", body, {"Authorization": f"Bearer {write}"})
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"was_inserted": True}
