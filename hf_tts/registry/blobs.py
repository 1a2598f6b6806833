"""Content-addressed file bodies on disk: `ROOT/blobs/<sha256[:2]>/<sha256>`, shared by every repo, revision and
registry process using the root.

A body is received into a staging file (this process's folder under `ROOT/tmp/`), fsynced, then renamed into place:
a blob is either absent or complete. Several processes may place the same blob at once; the rename makes that
harmless. `gc` removes blobs no commit references, but only those older than a grace period, and placing a blob
that already exists refreshes its mtime, so an upload in flight never loses its blob to a concurrent gc.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from hf_tts.libc import libc_function
from hf_tts.registry.commit_stream import StagedFile

_HOST = socket.gethostname().replace("-", "_") or "host"
_LIVE_STAGING: set[str] = set()  # this process's staging folders (several stores may share a root in tests)


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait for it


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing `length` bytes at `offset` of a file being received to disk now, without
    waiting: the fsync that ends the upload then waits only for the last bytes instead of the whole file. A no-op
    where `sync_file_range` does not exist (the fsync still makes the file durable)."""
    function = libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if function is not None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobStore:
    def __init__(self, root: Path):
        self.root = root / "blobs"
        self.tmp_root = root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.clean_stale_staging()
        # One staging folder per process: `proc-<host>-<pid>-<random>`, so a later start can tell dead ones apart.
        self.staging = self.tmp_root / f"proc-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        _LIVE_STAGING.add(self.staging.name)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, staged: StagedFile) -> None:
        """Move a staged body into the store (or drop it when the blob exists, refreshing the blob's mtime)."""
        target = self.path(staged.sha256)
        if target.exists():
            try:
                os.utime(target)
                staged.path.unlink(missing_ok=True)
                return
            except FileNotFoundError:
                pass  # removed by a gc in between: place ours
        target.parent.mkdir(exist_ok=True)
        os.replace(staged.path, target)

    def ensure(self, staged: StagedFile) -> None:
        """After the commit is in the database: the blob must exist. A gc that ran between `put` and the commit may
        have removed an old, then unreferenced, copy; the staged body is still here in that case."""
        if not self.path(staged.sha256).exists() and staged.path.exists():
            self.path(staged.sha256).parent.mkdir(exist_ok=True)
            os.replace(staged.path, self.path(staged.sha256))

    def iter_blobs(self) -> Iterator[Path]:
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                yield from (path for path in folder.iterdir() if path.is_file())

    def gc(self, referenced: set[str], grace_seconds: float, dry_run: bool = False) -> tuple[int, int]:
        """Remove unreferenced blobs older than `grace_seconds`. Returns (files, bytes) reclaimed."""
        cutoff = time.time() - grace_seconds
        count = size = 0
        for path in list(self.iter_blobs()):
            if path.name in referenced:
                continue
            try:
                stat = path.stat()
                if stat.st_mtime > cutoff:
                    continue
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            count += 1
            size += stat.st_size
        return count, size

    def clean_stale_staging(self, names: Iterable[Path] | None = None) -> int:
        """Remove staging folders of registry processes that are gone (killed mid-upload). A folder of another
        machine (a shared blob directory) is removed only when untouched for a day."""
        removed = 0
        for folder in names if names is not None else list(self.tmp_root.iterdir()):
            parts = folder.name.split("-")
            if len(parts) == 4 and parts[0] == "proc" and parts[2].isdigit():
                if parts[1] == _HOST:
                    pid = int(parts[2])
                    stale = folder.name not in _LIVE_STAGING if pid == os.getpid() else not _pid_alive(pid)
                else:
                    stale = time.time() - folder.stat().st_mtime > 86400
            else:
                stale = True  # leftovers of the folder-based registry (uploads of a stopped server)
            if stale:
                shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        _LIVE_STAGING.discard(self.staging.name)
        shutil.rmtree(self.staging, ignore_errors=True)
