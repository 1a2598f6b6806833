"""File helpers every writer and reader of the package shares.

- `check_output_target`, `atomic_output_dir`, `atomic_write_file`: safe outputs (see `hf_tts.safe_output`).
- `load_torch_checkpoint`: `torch.load` that never unpickles arbitrary objects.
- `read_safetensors_header`: a safetensors file's JSON header, validated as strictly as safetensors does.
- `load_yaml`: YAML for recipes and configs, without anchors, aliases or tags (no alias bombs), bounded in size.
- `check_finite`: refuse NaN/Inf in a tensor or array before it is written.
- `sha256_file`: provenance hashes for model cards, optionally remembered in a stat-keyed cache (`HF_TTS_CACHE`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

from hf_tts.errors import InputError
from hf_tts.safe_output import atomic_output_dir, atomic_write_file, check_output_target

__all__ = [
    "atomic_output_dir",
    "atomic_write_file",
    "check_finite",
    "check_output_target",
    "hash_cache_dir",
    "load_torch_checkpoint",
    "load_yaml",
    "read_small_document",
    "read_safetensors_header",
    "sha256_file",
]


def load_torch_checkpoint(path: str | os.PathLike, *, mmap: bool = False, trust_pickle: bool = False) -> Any:
    """Load a `.pt`/`.pth`/`.bin` file with `weights_only=True` (tensors, dicts, numbers, strings only).

    A file that needs full unpickling is refused with an InputError that says how to opt in (`trust_pickle=True`,
    for files from a source you trust).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"checkpoint {path} does not exist") from None
    except OSError as error:
        raise InputError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not path.is_file():
        raise InputError(f"checkpoint {path} is not a file")
    if size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes); was its download or save interrupted?")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive; older files are a pickle starting with its PROTO opcode.
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
        raise InputError(f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)
    except pickle.UnpicklingError as error:
        # torch's weights-only unpickler says "Weights only load failed" and names what it refused (a GLOBAL such as
        # posix.system, an unsupported operand); anything else is a damaged file.
        text = str(error)
        if not text.startswith("Weights only load failed"):
            raise InputError(f"{path} is not a readable PyTorch checkpoint (its pickle data is damaged)") from None
        reason = _refused_pickle_reason(text)
        raise InputError(
            f"{path} contains objects that need full unpickling ({reason}); it was "
            "not loaded because unpickling can run arbitrary code. Re-save it as safetensors, or pass "
            "--trust-pickle (trust_pickle=True) if you trust its source"
        ) from None
    except PermissionError as error:
        raise InputError(f"cannot read checkpoint {path}: {error.strerror}") from None
    except (RuntimeError, EOFError, OSError, IndexError, ValueError, KeyError, TypeError) as error:
        # torch.load on a truncated or damaged archive raises any of these, from deep inside its readers.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path} is not a readable PyTorch checkpoint: {first_line[:200]}") from None


_REFUSAL = re.compile(r"(Unsupported global: GLOBAL [^\s]+|unsupported GLOBAL [^\s]+|Unsupported operand \d+)")


def _refused_pickle_reason(message: str) -> str:
    """What torch's weights-only unpickler refused, from its long message (a GLOBAL it blocked, an opcode)."""
    match = _REFUSAL.search(message)
    return match.group(1).replace("Unsupported global: ", "") if match else "the weights-only loader refused it"


# Bytes per element of every dtype safetensors writes (sub-byte float formats are not supported by this package).
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
# safetensors' own limit on the header (100 MB): a bigger claim is a damaged or hostile file.
_MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(header, data_start) of a safetensors file: the JSON header ({key: {dtype, shape, data_offsets}} plus an
    optional `__metadata__`) and the byte offset where tensor data begins. No tensor data is read.

    The header is checked as strictly as safetensors checks it (see `parse_safetensors_header`)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header_size = safetensors_header_length(handle.read(8), size, str(path))
            raw = handle.read(header_size)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    return parse_safetensors_header(raw, size, str(path)), 8 + header_size


def safetensors_header_length(prefix: bytes, file_size: int, source: str) -> int:
    """The header length a safetensors file's first 8 bytes claim, refused when it cannot fit the file."""
    if len(prefix) < 8:
        raise InputError(f"{source} is not a readable safetensors file: it is shorter than 8 bytes")
    (header_size,) = struct.unpack("<Q", prefix[:8])
    if header_size > min(_MAX_SAFETENSORS_HEADER, file_size - 8):
        raise InputError(
            f"{source} is not a readable safetensors file: its header claims {header_size} bytes "
            f"but the file has {file_size} bytes"
        )
    return header_size


def parse_safetensors_header(raw: bytes, file_size: int, source: str) -> dict[str, Any]:
    """The JSON header `raw` of a safetensors file of `file_size` bytes, checked as strictly as safetensors does, so
    a file this accepts is one safetensors loads with the same meaning: no duplicate keys, known dtypes, shapes of
    non-negative integers, offsets that match shape x itemsize and tile the data exactly (no overlap, gap or trailing
    bytes), `__metadata__` a str -> str map. `source` names the file in errors."""
    damaged = f"{source} is not a readable safetensors file"
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as error:
        raise InputError(f"{damaged}: its header names {error.args[0]!r} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{damaged}: its header is not valid JSON ({str(error)[:120]})") from None
    if not isinstance(header, dict):
        raise InputError(f"{damaged}: its header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{damaged}: its __metadata__ is not a map of strings")
    spans = []
    for key, entry in header.items():
        if key != "__metadata__":
            spans.append((*_tensor_span(entry, key, damaged), key))
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin != position:
            problem = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise InputError(f"{damaged}: the data of tensor {key!r} {problem}")
        position = end
    if 8 + len(raw) + position != file_size:
        raise InputError(
            f"{damaged}: its tensors cover {position} data bytes but the file holds {file_size - 8 - len(raw)} "
            "(truncated, or trailing bytes)"
        )
    return header


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _tensor_span(entry: Any, key: str, damaged: str) -> tuple[int, int]:
    """(begin, end) byte offsets of one tensor entry, after checking its dtype, shape and size agree."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InputError(f"{damaged}: tensor {key!r} is not a {{dtype, shape, data_offsets}} entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise InputError(f"{damaged}: tensor {key!r} has an unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(whole(dim) for dim in shape):
        raise InputError(f"{damaged}: tensor {key!r} has an invalid shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(whole(o) for o in offsets)):
        raise InputError(f"{damaged}: tensor {key!r} has invalid data_offsets {str(offsets)[:80]}")
    begin, end = offsets
    expected = SAFETENSORS_ITEMSIZE[dtype]
    for dim in shape:
        expected *= dim
    if end - begin != expected:
        raise InputError(
            f"{damaged}: tensor {key!r} ({dtype} {shape}) needs {expected} bytes but its offsets span {end - begin}"
        )
    return begin, end


# Recipes, arch files and configs are small documents; anything bigger or deeper is a mistake or an attack.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64


def read_small_document(path: str | os.PathLike, source: str, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a small config document: JSON for a `.json` file, else YAML through `load_yaml`; at most `max_bytes`,
    never read further. `source` names it in errors ("arch file X", "args.json of X")."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as error:
        raise InputError(f"{source} cannot be read: {error.strerror or error}") from None
    if len(raw) > max_bytes:
        raise InputError(f"{source} is larger than {max_bytes} bytes; a config document is much smaller")
    if Path(path).suffix.lower() != ".json":
        return load_yaml(raw, source)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{source} is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{source} is not valid JSON: {error}") from None
    except RecursionError:
        raise InputError(f"{source} is nested too deeply to be a config") from None


def load_yaml(text: str | bytes, source: str) -> Any:
    """Parse a YAML document safely: plain data only, no anchors or aliases (a 1 KB alias bomb expands to
    gigabytes), no explicit tags, at most `MAX_YAML_BYTES` and `MAX_YAML_DEPTH` levels. `source` names the file
    or option in error messages."""
    import yaml

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{source} is not UTF-8 text (byte {error.start})") from None
    if len(text) > MAX_YAML_BYTES:
        raise InputError(f"{source} is larger than {MAX_YAML_BYTES} bytes; a recipe or config is much smaller")
    try:
        return yaml.load(text, Loader=_plain_yaml_loader())  # noqa: S506  (a SafeLoader, restricted further)
    except yaml.MarkedYAMLError as error:
        where = f" at line {error.problem_mark.line + 1}" if error.problem_mark else ""
        raise InputError(f"{source} is not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{source} is not valid YAML: {str(error).splitlines()[0][:200]}") from None


@functools.cache
def _plain_yaml_loader() -> type:
    """SafeLoader minus anchors, aliases and tags, with a depth limit (built on first use: yaml is imported late)."""
    import yaml

    class PlainYamlLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.MarkedYAMLError(
                    problem="anchors and aliases (&name, *name) are not allowed", problem_mark=event.start_mark
                )
            if getattr(event, "tag", None) not in (None, "!"):
                raise yaml.MarkedYAMLError(
                    problem=f"tags such as {event.tag} are not allowed", problem_mark=event.start_mark
                )
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=event.start_mark
                )
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return PlainYamlLoader


def check_finite(values: Any, what: str) -> None:
    """Raise InputError when a torch tensor or numpy array holds NaN or Inf; `what` names it in the message."""
    if hasattr(values, "is_floating_point"):  # torch.Tensor, checked without importing torch here
        if not (values.is_floating_point() or values.is_complex()):
            return
        import torch

        bad = int((~torch.isfinite(values)).sum())
    else:
        import numpy as np

        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.inexact):
            return
        bad = int((~np.isfinite(array)).sum())
    if bad:
        raise InputError(f"{what} contains {bad} NaN or Inf value{'s' if bad > 1 else ''}")


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
