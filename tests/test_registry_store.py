"""The registry's storage without HTTP: layered trees (rows per commit), the streaming commit parser, gc, and the
import of a root written by the folder-based registry."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from hf_tts.registry import schema as db
from hf_tts.registry.blobs import BodyWriter, read_ranges_around_cache
from hf_tts.registry.commit_stream import CommitRequest, Operation, StagedFile, parse_commit_stream
from hf_tts.registry.errors import RegistryError
from hf_tts.registry.store import Store
from tests.fuzz import FUZZ
from tests.test_registry_hardening import file_line, ndjson


def staged(store: Store, data: bytes) -> StagedFile:
    path = store.tmp / f"upload-{hashlib.sha256(data).hexdigest()[:16]}-{time.monotonic_ns()}"
    path.write_bytes(data)
    return StagedFile(
        path,
        hashlib.sha256(data).hexdigest(),
        hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        len(data),
    )


def commit_files(store: Store, repo, files: dict[str, bytes | None] | list, branch: str = "main"):
    """One commit of (path, data) operations in order; data None deletes the path."""
    items = files.items() if isinstance(files, dict) else files
    operations = [
        Operation("add", path, staged(store, data)) if data is not None else Operation("delete", path)
        for path, data in items
    ]
    request = CommitRequest(summary="c", operations=operations, staged=[op.staged for op in operations if op.staged])
    try:
        return store.commit(repo, branch, request, author="t")[0]
    finally:
        request.discard()


def entry_rows(store: Store, commit_id: int) -> int:
    with store.read() as conn:
        return conn.execute(
            select(func.count()).select_from(db.entries).where(db.entries.c.commit_id == commit_id)
        ).scalar()


def test_a_one_file_commit_writes_one_row_even_in_a_big_repo(tmp_path):
    store = Store(tmp_path / "reg")
    repo, _ = store.create_repo("model", "org/big", private=False, author="t")
    first = commit_files(store, repo, {f"f/{index:05d}.txt": str(index).encode() for index in range(3000)})
    assert entry_rows(store, first.id) == 3000  # the first layer on an empty snapshot is itself small enough
    heads = [commit_files(store, repo, {"f/00007.txt": f"v{step}".encode()}) for step in range(db.MAX_CHAIN + 3)]
    rows = [entry_rows(store, commit.id) for commit in heads]
    # One row per one-file commit; a full snapshot only when the layer chain is full, so at most every MAX_CHAIN.
    assert rows.count(3000) == 1 and all(count == 1 for count in rows if count != 3000)
    assert max(len(commit.chain) for commit in heads) <= db.MAX_CHAIN
    # Reads see the same tree, through fresh caches too (another process).
    other = Store(tmp_path / "reg")
    head = other.resolve(other.get_repo("model", "org/big"), "main")
    assert other.entry(head, "f/00007.txt").size == len(f"v{db.MAX_CHAIN + 2}")
    assert len(other.tree(head).files) == 3000
    assert (
        other.tree(other.commit_by_id(heads[5].id)).files["f/00007.txt"].sha1 == hashlib.sha1(b"blob 2\0v5").hexdigest()
    )
    other.close()
    store.close()


paths = st.sampled_from(["a", "b", "d/x", "d/y", "d/e/z", "f.txt"])
operations = st.lists(
    st.lists(st.tuples(paths, st.one_of(st.none(), st.binary(max_size=8))), min_size=1, max_size=4),
    min_size=1,
    max_size=12,
)


@FUZZ
@given(history=operations)
def test_layered_trees_match_a_plain_dict(tmp_path_factory, history):
    """Whatever sequence of commits: every revision's tree (from the layers, and per-path lookups) equals the
    dict a naive implementation would hold; refused commits change nothing."""
    store = Store(tmp_path_factory.mktemp("reg"))
    repo, _ = store.create_repo("model", "org/prop", private=False, author="t")
    expected: dict[str, bytes] = {}
    snapshots = []
    for step in history:
        files = dict(expected)
        ok = True
        for path, data in step:
            if data is None:
                if path not in files:
                    ok = False
                files.pop(path, None)
            else:
                files[path] = data
        paths_now = set(files)
        if any(other.startswith(path + "/") for path in paths_now for other in paths_now):
            ok = False
        try:
            commit = commit_files(store, repo, step)
        except RegistryError as error:
            assert not ok and error.status in (404, 409)
            continue
        assert ok
        expected = files
        snapshots.append((commit, dict(expected)))
    fresh = Store(store.root)
    for commit, files in snapshots:
        tree = fresh.tree(commit)
        assert {path: store.blobs.path(entry.sha256).read_bytes() for path, entry in tree.files.items()} == files
        for path in ["a", "d/x", "f.txt"]:
            entry = Store.entry(fresh, commit, path)
            assert (entry is None) == (path not in files)
    fresh.close()
    store.close()


@FUZZ
@given(
    summary=st.text(max_size=50),
    contents=st.lists(st.binary(max_size=3000), min_size=0, max_size=4),
    piece=st.integers(1, 5000),
)
def test_commit_parser_streams_content_across_any_chunking(tmp_path_factory, summary, contents, piece):
    folder = tmp_path_factory.mktemp("staging")
    payload = ndjson(
        {"key": "header", "value": {"summary": summary, "parentCommit": "a" * 40}},
        *[file_line(f"f{index}.bin", data) for index, data in enumerate(contents)],
        {"key": "deletedFile", "value": {"path": "old.txt"}},
    )
    chunks = (payload[start : start + piece] for start in range(0, len(payload), piece))
    request = parse_commit_stream(chunks, folder)
    assert request.summary == summary and request.parent_commit == "a" * 40
    adds = [op for op in request.operations if op.kind == "add"]
    assert [op.staged.path.read_bytes() for op in adds] == contents
    assert [op.staged.sha1 for op in adds] == [hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest() for d in contents]
    assert request.operations[-1].kind == "delete" and request.operations[-1].path == "old.txt"
    request.discard()
    assert list(folder.iterdir()) == []


@FUZZ
@given(body=st.binary(max_size=400))
def test_commit_parser_refuses_garbage_cleanly(tmp_path_factory, body):
    folder = tmp_path_factory.mktemp("staging")
    try:
        parse_commit_stream(iter([body]), folder).discard()
    except RegistryError as error:
        assert 400 <= error.status < 500
    assert list(folder.iterdir()) == []


def _blocks_of(data: bytes, sizes: list[list[int]]) -> list[list[bytes]]:
    """`data` cut into blocks of pieces of the given sizes (the rest of `data` goes in a last piece)."""
    blocks, position = [], 0
    for block_sizes in sizes:
        block = []
        for size in block_sizes:
            block.append(data[position : position + size])
            position += size
        blocks.append(block)
    blocks.append([data[position:]])
    return blocks


def _direct_io_works(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    return True


@FUZZ
@given(
    sizes=st.lists(st.lists(st.integers(0, 9000), min_size=1, max_size=5), max_size=6),
    tail=st.integers(0, 20000),
    direct=st.booleans(),
)
def test_body_writer_stores_any_blocks_exactly(tmp_path_factory, monkeypatch, sizes, tail, direct):
    """Blocks of any sizes (aligned or not to the 4 KiB that O_DIRECT needs) land byte-exact, and `consume` sees
    every byte once, in order, before it is written: with O_DIRECT, and where the file system refuses it."""
    folder = tmp_path_factory.mktemp("body")
    data = random.Random(len(sizes) * 7919 + tail).randbytes(sum(map(sum, sizes)) + tail)
    seen = bytearray()
    if not direct:
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda path, flags, *mode: refuse_direct(real_open, path, flags, *mode))
    writer = BodyWriter(folder / "staged")
    assert writer.direct == (direct and _direct_io_works(folder))
    for block in _blocks_of(data, sizes):
        writer.write(block, seen.extend)
    assert writer.finish() == len(data)
    assert (folder / "staged").read_bytes() == data and bytes(seen) == data


def test_body_writer_takes_blocks_larger_than_its_buffer(tmp_path):
    data = random.Random(3).randbytes(5 << 20)
    writer = BodyWriter(tmp_path / "staged")
    for block in _blocks_of(data, [[1000], [3 << 20], [1]]):  # an unaligned rest carried into a 3 MiB block
        writer.write(block, None)
    assert writer.finish() == len(data) and (tmp_path / "staged").read_bytes() == data


def test_body_writer_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT at open, a device that refuses our alignment at the first write, and a
    short write that leaves the file unaligned: each upload still lands byte-exact."""
    data = random.Random(5).randbytes(3 * 4096 + 100)
    real_open, real_write = os.open, os.write

    monkeypatch.setattr(os, "open", lambda path, flags, *mode: refuse_direct(real_open, path, flags, *mode))
    writer = BodyWriter(tmp_path / "refused-open")
    assert not writer.direct
    writer.write([data], None)
    assert writer.finish() == len(data) and (tmp_path / "refused-open").read_bytes() == data
    monkeypatch.setattr(os, "open", real_open)

    for name, first_write in (("refused-write", None), ("short-write", 5000), ("aligned-short-write", 4096)):
        calls = []

        def flaky_write(fd, view, first_write=first_write, calls=calls):  # noqa: ANN001, ANN202
            calls.append(len(view))
            if len(calls) > 1:
                return real_write(fd, view)
            if first_write is None:
                raise OSError(errno.EINVAL, "Invalid argument")
            # O_DIRECT is cleared first, so the partial write itself needs no alignment
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            return real_write(fd, view[:first_write])

        monkeypatch.setattr(os, "write", flaky_write)
        writer = BodyWriter(tmp_path / name)
        direct = writer.direct
        writer.write([data[:9000], data[9000:]], None)
        assert writer.finish() == len(data) and (tmp_path / name).read_bytes() == data, name
        monkeypatch.setattr(os, "write", real_write)
        if direct:
            assert len(calls) >= 2, name


@FUZZ
@given(
    sizes=st.tuples(st.integers(0, 70000), st.integers(1, 70000)),
    spans=st.lists(st.tuples(st.booleans(), st.integers(0, 70000), st.integers(0, 70000)), max_size=12),
    ahead=st.integers(0, 4),
    direct=st.booleans(),
)
def test_ranges_read_around_the_page_cache_are_exact(tmp_path_factory, monkeypatch, sizes, spans, ahead, direct):
    """Any ranges of two files (unaligned starts and ends, repeats, backwards), read ahead by threads, with O_DIRECT
    or where the file system refuses it, come out byte-exact and in order."""
    folder = tmp_path_factory.mktemp("ranges")
    files = []
    for number, size in enumerate(sizes):
        path = folder / f"f{number}"
        path.write_bytes(random.Random(size).randbytes(size))
        files.append((path, path.read_bytes()))
    ranges = []
    for second, a, b in spans:
        path, data = files[second]
        start, end = sorted((a % (len(data) + 1), b % (len(data) + 1)))
        ranges.append((path, start, end))
    if not direct:
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda path, flags, *mode: refuse_direct(real_open, path, flags, *mode))
    got = [bytes(view) for view in read_ranges_around_cache(ranges, ahead=ahead)]
    assert got == [dict(files)[path][start:end] for path, start, end in ranges]


def refuse_direct(real_open, path, flags, *mode):  # noqa: ANN001, ANN201
    if flags & os.O_DIRECT:
        raise OSError(errno.EINVAL, "Invalid argument")
    return real_open(path, flags, *mode)


def test_ranges_larger_than_the_read_buffers(tmp_path):
    """Ranges past the 4 MiB buffers get larger ones, while the caller still holds the view it was given last."""
    data = random.Random(11).randbytes(13 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    ranges = [(0, 1000), (5, 6 << 20), (4096, 4096 + 10), (100, (9 << 20) + 3), (3, 5), ((4 << 20) - 1, 13 << 20)]
    view = None
    for view, (start, end) in zip(read_ranges_around_cache([(path, a, b) for a, b in ranges], ahead=1), ranges):
        assert bytes(view) == data[start:end]
    assert view is not None


def test_reading_ranges_stops_cleanly(tmp_path):
    """A range past the end of its file is an error naming the file; a reader dropped halfway waits for its reads in
    flight and frees its buffers."""
    path = tmp_path / "f"
    path.write_bytes(bytes(10000))
    with pytest.raises(OSError, match="ends 5000 bytes before byte 15000"):
        list(read_ranges_around_cache([(path, 0, 100), (path, 9000, 15000)]))
    views = read_ranges_around_cache([(path, start, start + 1000) for start in range(0, 9000, 1000)], ahead=3)
    assert bytes(next(views)) == bytes(1000)
    views.close()


def test_commit_parser_limits(tmp_path):
    with pytest.raises(RegistryError, match="not valid base64"):
        parse_commit_stream(iter([ndjson({"key": "file", "value": {"content": "@@@@", "path": "a"}})]), tmp_path)
    with pytest.raises(RegistryError, match="'oid' must be a sha256"):
        parse_commit_stream(iter([ndjson({"key": "lfsFile", "value": {"path": "a", "oid": "xyz"}})]), tmp_path)
    with pytest.raises(RegistryError) as too_big:
        parse_commit_stream(iter([ndjson(file_line("a", b"x" * 5000))]), tmp_path, max_upload_bytes=4000)
    assert too_big.value.status == 413
    with pytest.raises(RegistryError) as long_line:
        parse_commit_stream(
            iter([b'{"key": "header", "value": {"summary": "' + b"s" * 5000]), tmp_path, max_line_bytes=4096
        )
    assert long_line.value.status == 413
    assert list(tmp_path.iterdir()) == []


def test_gc_reclaims_unreferenced_commits_and_blobs_but_not_young_ones(local_hub, capsys):
    from hf_tts.cli import main as hf_tts_main

    api = HfApi()
    api.create_repo("org/gc")
    for index in range(3):
        api.upload_file(path_or_fileobj=f"old {index}".encode(), path_in_repo="w.txt", repo_id="org/gc")
    api.create_repo("org/doomed")
    api.upload_file(path_or_fileobj=b"doomed body", path_in_repo="d.txt", repo_id="org/doomed")
    api.super_squash_history("org/gc")
    api.delete_repo("org/doomed")
    store = local_hub.store
    blobs = {path.name for path in store.blobs.iter_blobs()}
    assert hashlib.sha256(b"doomed body").hexdigest() in blobs and len(blobs) == 4
    # A fresh unreferenced blob (an upload in flight) survives the grace period.
    assert store.gc(grace_seconds=3600)["blobs"] == 0
    old = time.time() - 7200
    for path in store.blobs.iter_blobs():
        os.utime(path, (old, old))
    capsys.readouterr()
    assert hf_tts_main(["hub", "gc", "--root", str(store.root), "--grace-seconds", "60"]) == 0
    report = capsys.readouterr().out
    assert "removed" in report and "3 blobs" in report
    assert {path.name for path in store.blobs.iter_blobs()} == {hashlib.sha256(b"old 2").hexdigest()}
    assert Path(hf_hub_download("org/gc", "w.txt")).read_bytes() == b"old 2"
    assert len(api.list_repo_commits("org/gc")) == 1


def write_folder_layout(root: Path) -> dict:
    """A root as the folder-based registry wrote it: blobs, repo.json, commits/*.json, refs.json, a temp leftover."""
    blobs = {}

    def blob(data: bytes) -> dict:
        sha = hashlib.sha256(data).hexdigest()
        (root / "blobs" / sha[:2]).mkdir(parents=True, exist_ok=True)
        (root / "blobs" / sha[:2] / sha).write_bytes(data)
        blobs[sha] = data
        return {"sha256": sha, "size": len(data)}

    repo = root / "models" / "org" / "old"
    (repo / "commits").mkdir(parents=True)
    (repo / "repo.json").write_text(
        json.dumps({"id": "org/old", "private": False, "createdAt": "2025-01-01T00:00:00.000Z"})
    )
    commits = []
    files: dict = {}
    parent = None
    history = [
        ("initial commit", {}),
        ("weights", {"w.bin": b"one", "README.md": b"---\nlibrary_name: hf-tts\ntags: [legacy]\n---\n"}),
        ("update", {"w.bin": b"two", "cfg/config.json": b"{}"}),
    ]
    for index, (summary, changes) in enumerate(history):
        files = {**files, **{path: blob(data) for path, data in changes.items()}}
        oid = hashlib.sha1(f"{index}".encode()).hexdigest()
        record = {
            "oid": oid,
            "parent": parent,
            "files": files,
            "summary": summary,
            "description": "",
            "date": f"2025-01-0{index + 1}T00:00:00.000Z",
        }
        (repo / "commits" / f"{oid}.json").write_text(json.dumps(record))
        commits.append(oid)
        parent = oid
    (repo / "commits" / f".{commits[-1]}.json.tmp123").write_text("{")  # a crash leftover of the old server
    (repo / "refs.json").write_text(json.dumps({"main": commits[-1], "dev": commits[1]}))
    return {"commits": commits}


def test_a_folder_registry_root_is_imported_with_every_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "reg"
    layout = write_folder_layout(root)
    from hf_tts.registry import LocalHubServer

    with LocalHubServer(root) as server:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        api = HfApi(endpoint=server.url)
        first, second, third = layout["commits"]
        assert api.model_info("org/old").sha == third
        assert api.model_info("org/old", revision="dev").sha == second
        assert [commit.commit_id for commit in api.list_repo_commits("org/old")] == [third, second, first]
        assert sorted(api.list_repo_files("org/old")) == ["README.md", "cfg/config.json", "w.bin"]
        assert api.list_repo_files("org/old", revision=second) == ["README.md", "w.bin"]
        download = hf_hub_download("org/old", "w.bin", revision=second, endpoint=server.url)
        assert Path(download).read_bytes() == b"one"
        assert [model.id for model in api.list_models(filter="legacy")] == ["org/old"]
        api.upload_file(path_or_fileobj=b"three", path_in_repo="w.bin", repo_id="org/old")
    # Imported once: a restart does not import again (or duplicate anything).
    with LocalHubServer(root) as server:
        assert len(HfApi(endpoint=server.url).list_repo_commits("org/old")) == 4
