"""File helpers every writer and reader of the package shares.

- `atomic_output_dir`: build an output folder under a temporary name next to the target and rename it into place
  only when everything succeeded, so an error or Ctrl-C never leaves a half-written folder.
- `atomic_write_file`: the same for a single file (a WAV, a PNG, an .npy).
- `load_torch_checkpoint`: `torch.load` that never unpickles arbitrary objects.
- `read_safetensors_header`: a safetensors file's JSON header without reading any tensor.
- `sha256_file`: provenance hashes for model cards, optionally remembered in a stat-keyed cache (`HF_TTS_CACHE`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hf_tts.errors import InputError


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes `out_dir` when the block exits without an exception.

    An existing `out_dir` is an InputError unless `overwrite=True`, in which case it is replaced only after the new
    folder is complete. On any exception (KeyboardInterrupt included) the temporary folder is removed.
    """
    target = Path(out_dir).absolute()
    if target.exists() and not overwrite:
        raise InputError(f"output folder {target} already exists; choose another --out or pass --overwrite")
    if target.exists() and not target.is_dir():
        raise InputError(f"output path {target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    # mkdtemp makes the folder private (0o700); the finished folder gets the permissions mkdir would give it.
    staging.chmod(0o777 & ~_current_umask())
    try:
        yield staging
        if target.exists():
            # Swap: move the old folder aside first so the target is never missing and never mixed.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            retired.rmdir()
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_file(target: str | os.PathLike, write: Callable[[BinaryIO], None], *, overwrite: bool = True) -> Path:
    """Call `write(stream)` on a temporary file next to `target`, then rename it into place; returns the path.

    On any exception the temporary file is removed and `target` is untouched. The file gets the permissions an
    ordinary new file gets (mkstemp makes it 0600). Writing through a stream keeps libraries such as numpy from
    appending their own suffix to the temporary name. An existing `target` is an InputError unless `overwrite`.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another path or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(staging, 0o666 & ~_current_umask())
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def load_torch_checkpoint(path: str | os.PathLike, *, mmap: bool = False, trust_pickle: bool = False) -> Any:
    """Load a `.pt`/`.pth`/`.bin` file with `weights_only=True` (tensors, dicts, numbers, strings only).

    A file that needs full unpickling is refused with an InputError that says how to opt in (`trust_pickle=True`,
    for files from a source you trust).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)
    except pickle.UnpicklingError as error:
        # torch names the class it refused ("Unsupported global: GLOBAL pkg.Class"); anything else is a damaged file.
        refused = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        if not refused:
            raise InputError(f"{path} is not a readable PyTorch checkpoint (its pickle data is damaged)") from error
        raise InputError(
            f"{path} contains objects that need full unpickling ({refused[0]}); it was not loaded because "
            "unpickling can run arbitrary code. Re-save it as safetensors, or pass --trust-pickle "
            "(trust_pickle=True) if you trust its source"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise InputError(
            f"{path} is not a readable PyTorch checkpoint: {str(error).strip().splitlines()[0]}"
        ) from error


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(header, data_start) of a safetensors file: the JSON header ({key: {dtype, shape, data_offsets}} plus an
    optional `__metadata__`) and the byte offset where tensor data begins. Nothing else of the file is read."""
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError, struct.error) as error:
        raise InputError(f"{path} is not a readable safetensors file: {error}") from error
    if not isinstance(header, dict):
        raise InputError(f"{path} is not a readable safetensors file: its header is not a JSON object")
    return header, 8 + header_size


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# huggingface_hub stores downloads as `<cache>/models--owner--name/blobs/<etag>`; a 64-hex etag is the LFS object
# id, the sha256 of the content.
_HUB_REPO_FOLDER = ("models--", "datasets--", "spaces--")
# A file changed less than this before it was hashed may change again within the same timestamp tick, unseen by its
# mtime and ctime, so its hash is not remembered (git's "racy clean" rule).
_RACY_WINDOW_NS = 2_000_000_000


def hash_cache_dir() -> Path | None:
    """Where `sha256_file(..., cache=True)` remembers hashes: `$HF_TTS_CACHE/sha256` (default
    `~/.cache/hf_tts/sha256`); None when `HF_TTS_CACHE` is set to an empty string (no cache)."""
    root = os.environ.get("HF_TTS_CACHE")
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf_tts")
    return Path(root) / "sha256" if root else None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20, *, cache: bool = False) -> str:
    """Hex sha256 of a file, read in chunks (model files can be gigabytes).

    With `cache=True` a file in the Hugging Face cache is named by its blob's sha256 without reading it, and other
    files' hashes are remembered under `hash_cache_dir()` keyed by path, inode, size, mtime and ctime, so hashing
    the same multi-gigabyte inputs for a second merge costs nothing; any change to the file misses the cache.
    """
    real = Path(os.path.realpath(path))
    if cache and _is_hub_blob(real):
        return real.name
    before = real.stat()
    entry = _hash_cache_entry(real) if cache else None
    signature = _stat_signature(before)
    if entry is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            remembered = json.loads(entry.read_text(encoding="utf-8"))
            if remembered["signature"] == signature and _SHA256_HEX.fullmatch(remembered["sha256"]):
                return remembered["sha256"]
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    settled = time.time_ns() - max(before.st_mtime_ns, before.st_ctime_ns) > _RACY_WINDOW_NS
    if entry is not None and settled and _stat_signature(real.stat()) == signature:
        record = json.dumps({"path": str(real), "signature": signature, "sha256": hexdigest}).encode()
        # A cache that cannot be written (read-only home, full disk) only costs the next merge a re-hash.
        with contextlib.suppress(OSError):
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_file(entry, lambda stream: stream.write(record))
    return hexdigest


def _is_hub_blob(real_path: Path) -> bool:
    return (
        real_path.parent.name == "blobs"
        and real_path.parent.parent.name.startswith(_HUB_REPO_FOLDER)
        and _SHA256_HEX.fullmatch(real_path.name) is not None
    )


def _hash_cache_entry(real_path: Path) -> Path | None:
    folder = hash_cache_dir()
    return None if folder is None else folder / f"{hashlib.sha256(os.fsencode(real_path)).hexdigest()[:40]}.json"


def _stat_signature(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a remembered hash to hold: writing the file moves mtime and ctime (ctime cannot be
    set back by the writer), replacing it changes the inode."""
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
