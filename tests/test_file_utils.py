"""Atomic output folders, safe checkpoint loading and hashing (hf_tts.file_utils)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time

import pytest
import torch

from hf_tts.errors import InputError
from hf_tts.file_utils import (
    atomic_output_dir,
    atomic_write_file,
    hash_cache_dir,
    load_torch_checkpoint,
    sha256_file,
)


def _entries(folder):
    return sorted(path.name for path in folder.iterdir())


def test_folder_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out"
    with atomic_output_dir(target) as staging:
        (staging / "weights.bin").write_bytes(b"123")
        assert not target.exists()
    assert (target / "weights.bin").read_bytes() == b"123"
    assert _entries(tmp_path) == ["out"]  # no staging folder left behind


def test_error_and_interrupt_leave_nothing(tmp_path):
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_output_dir(tmp_path / "out") as staging:
            (staging / "partial").write_text("half")
            raise error
    assert _entries(tmp_path) == []


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(InputError, match="already exists.*--overwrite"), atomic_output_dir(target):
        pass
    assert (target / "config.json").exists()
    with atomic_output_dir(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert _entries(target) == ["new.txt"]
    assert _entries(tmp_path) == ["out"]


def test_failed_overwrite_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(ValueError), atomic_output_dir(target, overwrite=True):
        raise ValueError("conversion failed")
    assert _entries(target) == ["config.json"]


def test_output_folder_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out"):
            pass
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


class _Payload:
    """A class a weights-only load must refuse to rebuild."""


class _RunsCode:
    """A pickle that would run a command when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_without_unpickling_arbitrary_objects(tmp_path):
    safe = tmp_path / "safe.pt"
    torch.save({"weight": torch.ones(2), "step": 3}, safe)
    assert load_torch_checkpoint(safe)["step"] == 3

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": _Payload()}, unsafe)
    with pytest.raises(InputError, match="full unpickling.*--trust-pickle"):
        load_torch_checkpoint(unsafe)
    with pytest.raises(InputError, match="does not exist"):
        load_torch_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="is not a PyTorch checkpoint"):
        load_torch_checkpoint(tmp_path / "garbage.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(safe.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_torch_checkpoint(truncated)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_torch_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("protocol", [2, 4, 5, "torch.save"])
def test_malicious_pickles_are_refused_as_such_not_as_damaged(tmp_path, protocol):
    import pickle

    path = tmp_path / "evil.pt"
    if protocol == "torch.save":
        torch.save({"model": _RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"model": _RunsCode()}, protocol=protocol))
    refused = r"need full unpickling \((unsupported GLOBAL posix.system|Unsupported operand \d+)\)"
    # torch warns about protocols above 2
    with pytest.warns() if protocol in (4, 5) else contextlib.nullcontext(), pytest.raises(InputError, match=refused):
        load_torch_checkpoint(path)


def test_unreadable_checkpoint_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    torch.save({"a": torch.ones(1)}, path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(InputError, match="cannot read checkpoint .*locked.pt: Permission denied"):
        load_torch_checkpoint(path)


def test_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", chunk_size=1 << 20) == hashlib.sha256(data).hexdigest()


@pytest.fixture
def hash_cache(tmp_path, monkeypatch):
    """A private hash cache whose racy window is 20 ms instead of 2 s, so tests need not wait for files to settle."""
    import hf_tts.file_utils as file_utils

    monkeypatch.setenv("HF_TTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_utils, "_RACY_WINDOW_NS", 20_000_000)
    return tmp_path / "cache" / "sha256"


def _settled_file(path, data: bytes):
    """Write `data`, then wait out the (test-sized) racy window so its hash may be remembered."""
    path.write_bytes(data)
    time.sleep(0.05)
    return path


def test_hash_cache_remembers_a_settled_file_and_misses_after_any_change(tmp_path, hash_cache):
    path = _settled_file(tmp_path / "model.safetensors", b"first version")
    assert sha256_file(path, cache=True) == hashlib.sha256(b"first version").hexdigest()
    assert hash_cache_dir() == hash_cache
    (entry,) = hash_cache.iterdir()
    # Proof that a second call is served from the cache and does not read the file: a doctored entry is believed...
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert sha256_file(path, cache=True) == "0" * 64
    # ...but never without cache=True (integrity checks always read the bytes)...
    assert sha256_file(path) == hashlib.sha256(b"first version").hexdigest()
    # ...and a rewrite of the same size with the old mtime put back still moves the ctime: a miss.
    _settled_file(path, b"other version")
    os.utime(path, ns=(record["signature"][3], record["signature"][3]))
    assert sha256_file(path, cache=True) == hashlib.sha256(b"other version").hexdigest()


def test_damaged_hash_cache_entry_is_ignored(tmp_path, hash_cache):
    path = _settled_file(tmp_path / "model.safetensors", b"weights")
    sha256_file(path, cache=True)
    (entry,) = hash_cache.iterdir()
    for damaged in (
        "not json",
        json.dumps({"signature": "x"}),
        json.dumps({**json.loads(entry.read_text()), "sha256": "zz"}),
    ):
        entry.write_text(damaged)
        assert sha256_file(path, cache=True) == hashlib.sha256(b"weights").hexdigest()


def test_hash_cache_skips_recently_modified_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TTS_CACHE", str(tmp_path / "cache"))
    hash_cache = tmp_path / "cache" / "sha256"
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"still being written?")
    assert sha256_file(path, cache=True) == hashlib.sha256(b"still being written?").hexdigest()
    assert not hash_cache.exists() or not any(hash_cache.iterdir())


def test_hash_cache_disabled_or_unwritable_still_hashes(tmp_path, monkeypatch, hash_cache):
    path = _settled_file(tmp_path / "weights.bin", b"abc")
    monkeypatch.setenv("HF_TTS_CACHE", "")
    assert hash_cache_dir() is None
    assert sha256_file(path, cache=True) == hashlib.sha256(b"abc").hexdigest()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("HF_TTS_CACHE", str(blocker))
    assert sha256_file(path, cache=True) == hashlib.sha256(b"abc").hexdigest()


def test_hub_cache_blobs_are_named_by_their_sha256(tmp_path, hash_cache):
    """A file under huggingface_hub's cache is a symlink to `blobs/<sha256>`: the name is the hash, nothing is read
    (the content here deliberately does not match the name, to prove it)."""
    name = hashlib.sha256(b"the real content").hexdigest()
    blob = tmp_path / "hub" / "models--someone--voice" / "blobs" / name
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"not read")
    snapshot = tmp_path / "hub" / "models--someone--voice" / "snapshots" / "abc123" / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)
    assert sha256_file(snapshot, cache=True) == name
    assert sha256_file(snapshot) == hashlib.sha256(b"not read").hexdigest()
    # The same name outside a Hub repo folder is hashed like any file.
    lookalike = tmp_path / "mine" / "blobs" / name
    lookalike.parent.mkdir(parents=True)
    lookalike.write_bytes(b"not read")
    assert sha256_file(lookalike, cache=True) == hashlib.sha256(b"not read").hexdigest()


def test_single_files_are_written_whole_or_not_at_all(tmp_path):
    import numpy as np

    target = tmp_path / "motion"  # no .npy suffix: numpy must not add one to a temporary name
    atomic_write_file(target, lambda stream: np.save(stream, np.arange(3)))
    assert np.load(target).tolist() == [0, 1, 2]
    assert _entries(tmp_path) == ["motion"]
    with pytest.raises(RuntimeError):

        def fail(stream):
            stream.write(b"partial")
            raise RuntimeError("disk full")

        atomic_write_file(target, fail)
    assert np.load(target).tolist() == [0, 1, 2] and _entries(tmp_path) == ["motion"]
    with pytest.raises(InputError, match="already exists"):
        atomic_write_file(target, lambda stream: None, overwrite=False)
    umask = os.umask(0o022)
    try:
        atomic_write_file(tmp_path / "speech.wav", lambda stream: stream.write(b"RIFF"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "speech.wav").stat().st_mode) == 0o644


def test_safetensors_header_is_read_without_the_tensors(tmp_path):
    from safetensors.torch import save_file

    from hf_tts.file_utils import read_safetensors_header

    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 3), "step": torch.tensor(7)}, path, metadata={"format": "pt"})
    header, data_start = read_safetensors_header(path)
    assert header["weight"]["shape"] == [2, 3] and header["step"]["dtype"] == "I64"
    assert header["__metadata__"] == {"format": "pt"}
    assert data_start + header["weight"]["data_offsets"][1] <= path.stat().st_size
    (tmp_path / "broken.safetensors").write_bytes(b"\x05")
    with pytest.raises(InputError, match="broken.safetensors is not a readable safetensors file"):
        read_safetensors_header(tmp_path / "broken.safetensors")
