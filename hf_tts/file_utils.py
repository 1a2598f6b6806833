"""File helpers every writer and reader of the package shares.

- `atomic_output_dir`: build an output folder under a temporary name next to the target and rename it into place
  only when everything succeeded, so an error or Ctrl-C never leaves a half-written folder.
- `atomic_write_file`: the same for a single file (a WAV, a PNG, an .npy).
- `load_torch_checkpoint`: `torch.load` that never unpickles arbitrary objects.
- `read_safetensors_header`: a safetensors file's JSON header without reading any tensor.
- `sha256_file`: provenance hashes for model cards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
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


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
