"""Output safety: every file or folder the package writes goes through here.

The promises (README, "Safety"):
- `check_output_target` refuses, before any work, an output that would destroy something: an empty path, `/`, the
  home folder, the current folder or one of its ancestors, a path that is, contains or lies inside an input, an
  existing symlink / fifo / device / entry of the wrong kind, an existing output without `overwrite`, and (even with
  `overwrite`) a non-empty folder that is not a model folder (no `config.json`).
- The output is built under a staging name beside the target (`.NAME.hf-tts-PID-RAND.staging`) while a lock file
  (`.NAME.hf-tts-PID-RAND.lock`, holding an flock for as long as the writer lives) marks it as live. It is renamed
  into place only when complete; the target is checked again at that moment, so an output that appeared meanwhile
  is never replaced without `overwrite` and of two concurrent writers one loses cleanly. With `overwrite` the old
  output is moved aside (`.old`) and removed only after the new one is in place.
- Everything in a finished folder gets the permissions an ordinary new file or folder gets (the umask decides).
- Leftovers of killed runs (SIGKILL, power loss) are removed by the next writer in the same folder: an entry whose
  lock is no longer held is stale. A previous output that a killed overwrite had moved aside is put back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from hf_tts.errors import InputError
from hf_tts.libc import libc_function

OutputKind = Literal["dir", "file"]
# A staging entry's name: `.<target name>.hf-tts-<pid>-<random>.<role>`; roles: staging, old, lock (and lock-new
# while a lock file is being created, so a scanner never sees an unlocked `.lock`).
_ENTRY = re.compile(r"^\.(?P<name>.+)\.hf-tts-(?P<token>\d+-[0-9a-f]{8})\.(?P<role>staging|old|lock|lock-new)$")
# Keep staging names within NAME_MAX (255 bytes) whatever the target's name.
_MAX_NAME_IN_ENTRY = 180


def check_output_target(
    out: str | os.PathLike | None,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    kind: OutputKind = "dir",
) -> Path:
    """Validate where an output will go, before any work is done; returns the absolute target path.

    Raises InputError for every placement that could destroy or corrupt something (see the module docstring).
    `inputs` are the files and folders the command reads; missing ones and None are ignored.
    """
    if out is None or str(out).strip() == "":
        raise InputError("the output path is empty; give --out a file or folder name (an unset variable?)")
    target = Path(os.path.abspath(os.fspath(out)))
    real = _real_target(target)
    if real.parent == real or real == Path(os.path.realpath(os.path.expanduser("~"))):
        raise InputError(f"refusing to write the output to {target}: it is the root or home folder")
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise InputError(
            f"refusing to write the output to {target}: it is the current folder or contains it; name a new folder"
        )
    for source in inputs:
        if source is None or str(source) == "" or not os.path.lexists(source):
            continue
        source_real = Path(os.path.realpath(source))
        if real == source_real:
            raise InputError(f"the output {target} is the input {source}; choose another output path")
        if real in source_real.parents:
            raise InputError(f"the output {target} contains the input {source}; choose another output path")
        if source_real in real.parents:
            raise InputError(f"the output {target} lies inside the input {source}; choose another output path")
    _check_parent(target)
    try:
        status = os.lstat(target)
    except FileNotFoundError:
        return target
    _check_existing(target, status, overwrite=overwrite, kind=kind)
    return target


def _real_target(target: Path) -> Path:
    """The target with its parent folders' symlinks resolved; the last component is kept (it may be a symlink,
    which is refused separately rather than followed)."""
    return Path(os.path.realpath(target.parent)) / target.name if target.name else Path(os.path.realpath(target))


def _check_parent(target: Path) -> None:
    ancestor = target.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write {target}: {ancestor} is not a folder")


def _check_existing(target: Path, status: os.stat_result, *, overwrite: bool, kind: OutputKind) -> None:
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        raise InputError(f"the output {target} is a symbolic link; give the path it points to, or another path")
    if kind == "dir" and not stat.S_ISDIR(mode):
        raise InputError(f"the output {target} exists and is not a folder; choose another path")
    if kind == "file" and not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a fifo, device or socket)"
        raise InputError(f"the output {target} exists and is {what}; choose another path")
    if not overwrite:
        raise InputError(f"the output {target} already exists; choose another path or pass --overwrite")
    if kind == "dir" and not _replaceable_folder(target):
        raise InputError(
            f"the output {target} is a folder that holds other things than a model (no config.json); it is not "
            "replaced even with --overwrite: remove it yourself or choose another path"
        )


def _replaceable_folder(folder: Path) -> bool:
    """A folder `overwrite` may replace: empty, or a model folder (what this package or transformers writes)."""
    try:
        with os.scandir(folder) as entries:
            names = {entry.name for entry in entries}
    except OSError:
        return False
    return not names or "config.json" in names


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | os.PathLike, overwrite: bool = False, *, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder that becomes `out_dir` when the block exits without an exception.

    On any exception (KeyboardInterrupt and SIGTERM included) the staging folder is removed and `out_dir` is
    untouched. The finished folder gets the permissions mkdir would give it.
    """
    target = check_output_target(out_dir, inputs=inputs, overwrite=overwrite, kind="dir")
    with _Staging(target, "dir") as staging:
        yield staging.path
        staging.commit(overwrite)


def atomic_write_file(
    target: str | os.PathLike,
    write: Callable[[BinaryIO], None],
    *,
    overwrite: bool = True,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Call `write(stream)` on a staging file beside `target`, then rename it into place; returns the path.

    On any exception the staging file is removed and `target` is untouched. Writing through a stream keeps libraries
    such as numpy from appending their own suffix. The file gets the permissions an ordinary new file gets.
    """
    path = check_output_target(target, inputs=inputs, overwrite=overwrite, kind="file")
    with _Staging(path, "file") as staging:
        with open(staging.path, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        staging.commit(overwrite)
    return path


class _Staging:
    """One write in progress: its lock file, staging entry and (during an overwrite) the old output moved aside."""

    def __init__(self, target: Path, kind: OutputKind):
        self.target, self.kind = target, kind
        self.parent = target.parent
        self.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.parent)
        self._lock_fd, stem = _create_lock(self.parent, target.name)
        self.path = self.parent / f"{stem}.staging"
        self._old = self.parent / f"{stem}.old"
        self._lock = self.parent / f"{stem}.lock"

    def __enter__(self) -> _Staging:
        try:
            if self.kind == "dir":
                self.path.mkdir()
                self.path.chmod(0o777 & ~_current_umask())
            else:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                os.close(fd)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            _remove(self.path)
        finally:
            self._release()

    def commit(self, overwrite: bool) -> None:
        """Rename the staging entry to the target, checking the target again now (it may have appeared). Runs as
        one critical section: a SIGINT/SIGTERM arriving meanwhile is delivered after it (see `deliver_signal`)."""
        if self.kind == "dir":
            _give_default_modes(self.path)
        with _critical_section():
            try:
                status = os.lstat(self.target)
            except FileNotFoundError:
                status = None
            if status is not None:
                _check_existing(self.target, status, overwrite=overwrite, kind=self.kind)
                os.rename(self.target, self._old)
            try:
                _rename_noreplace(self.path, self.target)
            except FileExistsError:
                if status is not None:
                    _remove(self._old)
                raise InputError(
                    f"another process wrote {self.target} while this one ran; its output was kept and nothing of "
                    "this run was written"
                ) from None
            except BaseException:
                if status is not None:
                    os.rename(self._old, self.target)  # put the previous output back
                raise
            if status is not None:
                _remove(self._old)

    def _release(self) -> None:
        # The lock file goes last: while it exists and is locked, a scanner leaves this run's entries alone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock)
        os.close(self._lock_fd)


def _create_lock(parent: Path, name: str) -> tuple[int, str]:
    """Create and flock `.<name>.hf-tts-<token>.lock`; returns (fd, entry stem). The file is created under a
    `.lock-new` name and renamed once locked, so no scanner can find it unlocked and take it for stale."""
    entry_name = (
        name if len(name.encode()) <= _MAX_NAME_IN_ENTRY else name.encode()[:_MAX_NAME_IN_ENTRY].decode(errors="ignore")
    )
    while True:
        stem = f".{entry_name}.hf-tts-{os.getpid()}-{secrets.token_hex(4)}"
        fresh = parent / f"{stem}.lock-new"
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps({"pid": os.getpid(), "target": name}).encode())
            os.rename(fresh, parent / f"{stem}.lock")
        except FileNotFoundError:
            # A scanner took the fresh file for stale between its creation and the flock: try another name.
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)
            raise
        return fd, stem


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging entries of killed runs in `folder` (never a live run's); returns what was removed.

    A run is live while its lock file is flocked. A previous output that a killed overwrite had moved aside is
    renamed back when its target is missing, so a kill at any moment loses nothing.
    """
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    runs: dict[str, dict[str, str]] = {}
    for name in names:
        match = _ENTRY.match(name)
        if match:
            runs.setdefault(match["token"], {"name": match["name"]})[match["role"]] = name
    removed = []
    for entries in runs.values():
        lock_name = entries.get("lock") or entries.get("lock-new")
        lock_fd = None
        if lock_name is not None:
            lock_fd = _take_stale_lock(folder / lock_name)
            if lock_fd is None:
                continue  # a live run
        try:
            if "staging" in entries:
                _remove(folder / entries["staging"])
                removed.append(folder / entries["staging"])
            if "old" in entries:
                old = folder / entries["old"]
                target = folder / (_locked_target_name(lock_fd) or entries["name"])
                if os.path.lexists(target):
                    _remove(old)
                    removed.append(old)
                else:
                    os.rename(old, target)
            if lock_name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / lock_name)
                removed.append(folder / lock_name)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
    return removed


def _take_stale_lock(path: Path) -> int | None:
    """An fd holding the lock of `path` if no live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not os.path.lexists(path) or os.stat(path).st_ino != os.fstat(fd).st_ino:
        os.close(fd)  # the owner finished (and removed it) between our open and flock
        return None
    return fd


def _locked_target_name(fd: int | None) -> str | None:
    if fd is None:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        name = json.loads(os.pread(fd, 4096, 0))["target"]
        if isinstance(name, str) and name and "/" not in name:
            return name
    return None


def _remove(path: Path) -> None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(status.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _give_default_modes(folder: Path) -> None:
    """Give everything in a finished output folder the modes mkdir / open would: writers such as safetensors and
    mkstemp create private 0600 files, which would leave a shared model folder unreadable to the group."""
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~umask)


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Signals during a commit: the CLI's SIGINT/SIGTERM handlers call `deliver_signal`, which defers the exception while
# a rename sequence runs, so a Ctrl-C never lands between "old output moved aside" and "new output in place".
_critical_depth = 0
_pending_signal: BaseException | None = None


@contextlib.contextmanager
def _critical_section() -> Iterator[None]:
    global _critical_depth, _pending_signal
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if _critical_depth == 0 and _pending_signal is not None:
            pending, _pending_signal = _pending_signal, None
            raise pending


def deliver_signal(exception: BaseException) -> None:
    """Raise `exception` now, or right after the commit in progress if one is (for signal handlers)."""
    global _pending_signal
    if _critical_depth:
        _pending_signal = exception
        return
    raise exception


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename that fails with FileExistsError instead of replacing an existing target (Linux renameat2); where the
    call or the file system lacks it, a hard link (files) or an exclusive mkdir claim (folders) does the same."""
    renameat2 = libc_function("renameat2")
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(target))
    if source.is_dir():
        os.mkdir(target)  # FileExistsError when someone else got there first
        os.rename(source, target)  # replaces the empty folder this process just made
    else:
        os.link(source, target)
        os.unlink(source)
