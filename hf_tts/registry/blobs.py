"""Content-addressed file bodies on disk: `ROOT/blobs/<sha256[:2]>/<sha256>`, shared by every repo, revision and
registry process using the root.

A body is received into a staging file (this process's folder under `ROOT/tmp/`), fsynced, then renamed into place:
a blob is either absent or complete. Several processes may place the same blob at once; the rename makes that
harmless. `gc` removes blobs no commit references, but only those older than a grace period, and placing a blob
that already exists refreshes its mtime, so an upload in flight never loses its blob to a concurrent gc.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
import shutil
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from hf_tts.libc import libc_function
from hf_tts.registry.commit_stream import StagedFile

_HOST = socket.gethostname().replace("-", "_") or "host"
_LIVE_STAGING: set[str] = set()  # this process's staging folders (several stores may share a root in tests)


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait for it
_DIRECT_ALIGNMENT = 4096  # offsets, lengths and buffer addresses of O_DIRECT writes (any logical block size up to 4K)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing `length` bytes at `offset` of a file being received to disk now, without
    waiting: the fsync that ends the upload then waits only for the last bytes instead of the whole file. A no-op
    where `sync_file_range` does not exist (the fsync still makes the file durable)."""
    function = libc_function("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if function is not None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _open_direct(path: Path, flags: int, mode: int = 0o644) -> tuple[int, bool]:
    """`path` opened with O_DIRECT where the file system allows it, else without; returns (fd, whether direct)."""
    try:
        return os.open(path, flags | os.O_DIRECT, mode), True
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
    return os.open(path, flags, mode), False


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BodyWriter:
    """Writes a request body, block by block, into a new file, bypassing the page cache (O_DIRECT) where the file
    system allows it.

    Why: copying received bytes into the page cache was the largest single cost of an upload (a fifth of the
    registry's CPU for a multi-GB push on two cores, much more once memory is full and every new page must be
    reclaimed first), and an upload is verified as it arrives: an LFS object is never read back before a download,
    xorbs once, by the shard's sha256 check, itself around the cache (`read_ranges_around_cache`). Each block is
    copied once into an aligned buffer (which replaces joining its pieces), handed to `consume`, and the aligned part
    written straight to disk; the unaligned rest waits for the next block, the last few bytes are written through
    the page cache. Where O_DIRECT is refused (some file systems) the blocks go through the page cache, their
    writeback started at once. Not thread-safe: one block at a time."""

    def __init__(self, path: Path):
        # `direct`: whether blocks are being written with O_DIRECT (it stops if the device refuses a write)
        self.fd, self.direct = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        self._buffer: mmap.mmap | None = None
        self._carried = 0  # unwritten bytes at the start of the buffer (less than one alignment unit)
        self.size = 0  # bytes received

    def write(self, pieces: list[bytes], consume: Callable[[bytes | memoryview], None] | None = None) -> None:
        """Append `pieces` (one block of the body), handing their bytes to `consume` first."""
        length = sum(len(piece) for piece in pieces)
        if not self.direct:
            # One buffer per block: a hash or parser handed many 64-256 KiB pieces retakes the GIL after each of
            # them, and waits for the event loop every time (measured: 6.2 -> 5.6 s for a 2 GiB LFS upload).
            block = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if consume is not None:
                consume(block)
            _write_all(self.fd, block)
            start_writeback(self.fd, self.size, length)
            self.size += length
            return
        end = self._carried + length
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, max(end, 2 << 20) + _DIRECT_ALIGNMENT)  # page-aligned
        elif end > len(self._buffer):
            larger = mmap.mmap(-1, end + _DIRECT_ALIGNMENT)
            larger[: self._carried] = self._buffer[: self._carried]
            self._buffer.close()
            self._buffer = larger
        position = self._carried
        for piece in pieces:
            self._buffer[position : position + len(piece)] = piece
            position += len(piece)
        with memoryview(self._buffer) as view:
            if consume is not None:
                consume(view[self._carried : end])
            written = self._write_out(view[:end])
        self._buffer.move(0, written, end - written)
        self._carried = end - written
        self.size += length

    def _write_out(self, view: memoryview) -> int:
        """Write the aligned start of `view` with O_DIRECT, or all of it once direct writes have stopped; returns
        how many bytes were written."""
        aligned = len(view) - len(view) % _DIRECT_ALIGNMENT
        written = 0
        while self.direct and written < aligned:
            try:
                count = os.write(self.fd, view[written:aligned])
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # the device wants a larger alignment than ours: the page cache from here on
                break
            written += count
            if count % _DIRECT_ALIGNMENT:
                self._stop_direct()  # a short write (disk nearly full) left the file unaligned
        if not self.direct:
            _write_all(self.fd, view[written:])
            written = len(view)
        return written

    def _stop_direct(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def finish(self) -> int:
        """Write what is left, make the file durable, close it; returns the body's size."""
        if self._carried:
            self._stop_direct()
            with memoryview(self._buffer) as view:
                _write_all(self.fd, view[: self._carried])
            self._carried = 0
        os.fsync(self.fd)
        self.close()
        return self.size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


@functools.cache
def _disk_readers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="hf-tts-disk-read")


def _read_around_cache(path: Path, start: int, end: int, buffer: mmap.mmap) -> int:
    """Read the aligned span holding [start, end) of `path` into `buffer` (O_DIRECT where allowed); returns where
    `start` lies in the buffer."""
    aligned = start - start % _DIRECT_ALIGNMENT
    length = -(-(end - aligned) // _DIRECT_ALIGNMENT) * _DIRECT_ALIGNMENT
    fd, _ = _open_direct(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with memoryview(buffer) as view:
            got = 0
            while got < end - aligned:
                count = os.preadv(fd, [view[got:length]], aligned + got)
                if count == 0:
                    raise OSError(errno.EIO, f"{path} ends {end - aligned - got} bytes before byte {end}")
                got += count
    finally:
        os.close(fd)
    return start - aligned


def read_ranges_around_cache(ranges: Iterable[tuple[Path, int, int]], ahead: int = 2) -> Iterator[memoryview]:
    """The bytes of each (file, start, end) range in turn, read around the page cache (O_DIRECT where the file system
    allows it) by threads up to `ahead` ranges in advance. Each view is valid until the next one is asked for.

    For one pass over data written around the page cache (`BodyWriter`): the sha256 check of a newly pushed Xet file
    reads its xorbs once, and through the page cache every block would first need a page (reclaimed from others
    once memory is full) and a copy."""
    pending = iter(ranges)
    spare: list[mmap.mmap] = []
    reading: deque[tuple[Future, mmap.mmap, int]] = deque()

    def read_next() -> None:
        following = next(pending, None)
        if following is None:
            return
        path, start, end = following
        size = end - start + 2 * _DIRECT_ALIGNMENT
        buffer = spare.pop() if spare else None
        if buffer is None or len(buffer) < size:  # a smaller one is dropped (the caller may still hold a view)
            buffer = mmap.mmap(-1, max(size, 4 << 20))
        reading.append((_disk_readers().submit(_read_around_cache, path, start, end, buffer), buffer, end - start))

    for _ in range(ahead + 1):
        read_next()
    given: mmap.mmap | None = None
    try:
        while reading:
            done, buffer, length = reading.popleft()
            skip = done.result()
            if given is not None:
                spare.append(given)  # the caller asked for the next range: it is done with the previous one
            given = buffer
            read_next()
            with memoryview(buffer) as view:
                yield view[skip : skip + length]
    finally:
        for done, buffer, _ in reading:
            done.exception()  # a read in flight still fills its buffer
            spare.append(buffer)
        for buffer in [*spare, *([given] if given is not None else [])]:
            with suppress(BufferError):  # a view the caller still holds keeps it alive; freed with the last one
                buffer.close()


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
