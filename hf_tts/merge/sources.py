"""Merge sources: what a path or Hub id on the `hf-tts merge` command line refers to, opened lazily.

A source is one of
- a package model folder (`config.json` + `model.safetensors` or sharded `model-*.safetensors` with an index), or a
  Hub repo id of one (downloaded with `huggingface_hub.snapshot_download`);
- an upstream F5-TTS / E2-TTS checkpoint file (`.safetensors` EMA export or `.pt` training checkpoint), its keys
  renamed on the fly by `hf_tts.convert.f5`'s key map (needs `--arch` and `--vocab`);
- an XTTS-v2 style checkpoint (`{"model": ..., "config": ...}`, read by `hf_tts.convert.xtts`), a `.pth` file or a
  folder holding `model.pth`.

Only headers are parsed when a source is opened (safetensors files by `MappedSafetensors`, `.pt` files with
`torch.load(mmap=True)`). Tensor bytes are read as they are merged: slices copied into small buffers, or whole
tensors from the memory map whose pages are handed back to the kernel once their key is done, so the resident set
never holds more than the tensors of the key being merged, however many sources there are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers.utils import logging

from hf_tts.errors import InputError
from hf_tts.file_utils import load_torch_checkpoint, read_safetensors_header

logger = logging.get_logger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files that define the text vocabulary of a package folder; they must be byte-identical across merged sources.
VOCAB_FILES = ("vocab.txt", "vocab.json", "tokenizer.json")
# Tokenizer and processor settings (JSON) of a package folder: sources that both have one must agree on it, unless
# --config-from names the donor; the donor's copy is written with the merge.
PROCESSING_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "processor_config.json")
# Copied from the config donor as they are.
COMPANION_FILES = (*VOCAB_FILES, *PROCESSING_FILES, "generation_config.json")
# Weights of the Vocos vocoder an F5/E2 folder carries (`SpeechSynthesisMixin.vocoder`): never averaged, they must be
# identical in every source and are copied.
VOCODER_PREFIX = "vocoder."
# Config keys that do not change what the weights mean (sampling defaults, training regularisation, bookkeeping):
# sources may differ in them and the config donor's values are kept.
NON_STRUCTURAL_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "architectures",  # the class name list save_pretrained writes; model_type is compared
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "name_or_path",
        "init_adaln_zero",
        "freeze_quantizer",
        "dropout",
        "audio_drop_prob",
        "cond_drop_prob",
        "cfg_drop_per_sample",
        "frac_lengths_mask",
        "sigma",
        "steps",
        "cfg_strength",
        "sway_sampling_coef",
        "ode_method",
        "use_epss",
    }
)
# Linux 5.14+ madvise flag (the mmap module does not name it yet).
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UPSTREAM_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class TensorReader(Protocol):
    """Lazy access to the tensors of one source. `tensor` and `read` return tensors the caller must never write to.

    `read(key, start, out)` gives elements `start:start + len(out)` of the flattened tensor (fewer at its end), either
    copied into `out` (a 1-D buffer of the tensor's dtype) or as a view of memory the reader already holds.
    """

    def infos(self) -> dict[str, TensorInfo]: ...

    def tensor(self, key: str) -> torch.Tensor: ...

    def read(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor: ...

    def release(self, key: str) -> None: ...


class MappedSafetensors(Mapping):
    """One safetensors file, memory-mapped; `tensor(key)` (also `self[key]`) is a zero-copy view, `release(key)`
    drops its pages, and `read(key, start, out)` copies a slice with `pread` (no page mapping at all).

    safetensors' `safe_open` maps the file too, but gives no way to hand pages back, so the resident set of a merge
    would grow to the size of every input; the header format is simple and documented, so it is parsed here.
    Slices go through `pread` because mapping pages costs more than copying them out of the page cache (measured
    1.6-9.6 GB/s to populate and drop mappings against 11 GB/s for 128 KiB `pread`s), and a copy into a small
    reused buffer leaves the slice in the CPU's cache for the merge arithmetic.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, self._data_start = read_safetensors_header(self.path)
        try:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (read from until the reader is dropped)
            # A private mapping: a stray write could never reach the file.
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as error:
            hint = " (too many open files: each source keeps two open; raise `ulimit -n`)" if error.errno == 24 else ""
            raise InputError(f"{self.path} cannot be opened: {error.strerror or error}{hint}") from None
        except ValueError as error:
            raise InputError(f"{self.path} is not a readable safetensors file: {error}") from error
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for key, entry in header.items():
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise InputError(
                    f"{self.path}: tensor {key!r} has dtype {entry['dtype']}, which merging does not support"
                )
            begin, end = entry["data_offsets"]
            info = TensorInfo(tuple(entry["shape"]), SAFETENSORS_DTYPES[entry["dtype"]])
            if end - begin != info.nbytes or self._data_start + end > len(self._map):
                raise InputError(
                    f"{self.path}: tensor {key!r} has inconsistent offsets; the file is truncated or corrupt"
                )
            self._entries[key] = (info, self._data_start + begin, self._data_start + end)

    def infos(self) -> dict[str, TensorInfo]:
        return {key: info for key, (info, _, _) in self._entries.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def tensor(self, key: str) -> torch.Tensor:
        info, begin, end = self._entries[key]
        if begin == end:
            return torch.empty(info.shape, dtype=info.dtype)
        count = (end - begin) // info.dtype.itemsize
        page_start = begin - begin % mmap.PAGESIZE
        # Map the tensor's pages in one call instead of one page fault per 4 KiB (several times faster); kernels
        # before 5.14 refuse the flag and the pages fault in on first touch instead.
        with contextlib.suppress(OSError):
            self._map.madvise(MADV_POPULATE_READ, page_start, end - page_start)
        return torch.frombuffer(self._map, dtype=info.dtype, count=count, offset=begin).view(info.shape)

    def read(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor:
        info, begin, end = self._entries[key]
        itemsize = info.dtype.itemsize
        target = out[: min(out.numel(), (end - begin) // itemsize - start)]
        offset = begin + start * itemsize
        if start == 0:
            # Ask for the whole tensor at once: the disk gets a few large requests instead of one per slice.
            os.posix_fadvise(self._file.fileno(), begin, end - begin, os.POSIX_FADV_WILLNEED)
        try:
            size = os.preadv(self._file.fileno(), [target.view(torch.uint8).numpy()], offset)
        except OSError as error:
            raise InputError(f"{self.path}: tensor {key!r} could not be read: {error.strerror or error}") from None
        if size != target.numel() * itemsize:
            raise InputError(f"{self.path}: tensor {key!r} could not be read in full; the file changed or is truncated")
        return target

    def release(self, key: str) -> None:
        _, begin, end = self._entries[key]
        page_start = begin - begin % mmap.PAGESIZE
        if end > page_start:
            self._map.madvise(mmap.MADV_DONTNEED, page_start, end - page_start)


class StateDictReader:
    """Tensors already opened elsewhere (a `torch.load(mmap=True)` state dict or an on-the-fly conversion)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self._state_dict = state_dict
        self._flat: tuple[str, torch.Tensor] | None = None  # the key being read in slices, flattened once

    def read(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor:
        flat = self._flat  # one read of the attribute: `release` may run on the merge's other thread
        if flat is None or flat[0] != key:
            flat = self._flat = (key, self._state_dict[key].reshape(-1))  # a view unless the tensor is not contiguous
        return flat[1][start : start + out.numel()]

    def infos(self) -> dict[str, TensorInfo]:
        return {key: TensorInfo(tuple(value.shape), value.dtype) for key, value in self._state_dict.items()}

    def tensor(self, key: str) -> torch.Tensor:
        return self._state_dict[key]

    def release(self, key: str) -> None:
        """The pages belong to torch's own mapping, which has no per-tensor release."""
        self._flat = None


class RenamedReader:
    """Another reader's tensors under new names (`names`: new key -> the inner reader's key)."""

    def __init__(self, inner: TensorReader, names: dict[str, str]):
        self._inner = inner
        self._names = names

    def infos(self) -> dict[str, TensorInfo]:
        infos = self._inner.infos()
        return {name: infos[key] for name, key in self._names.items()}

    def tensor(self, key: str) -> torch.Tensor:
        return self._inner.tensor(self._names[key])

    def read(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor:
        return self._inner.read(self._names[key], start, out)

    def release(self, key: str) -> None:
        self._inner.release(self._names[key])


class FolderReader:
    """`model.safetensors` or the shards listed in `model.safetensors.index.json`."""

    def __init__(self, folder: Path):
        index_path = folder / WEIGHTS_INDEX_NAME
        weight_map = None
        if index_path.is_file():
            weight_map = _read_weight_map(index_path)
            files = sorted(set(weight_map.values()))
        elif (folder / WEIGHTS_NAME).is_file():
            files = [WEIGHTS_NAME]
        else:
            raise InputError(
                f"{folder} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}; a package model folder is what "
                "save_pretrained / hf-tts convert writes"
            )
        self.files = [folder / name for name in files]
        self._shards = [MappedSafetensors(path) for path in self.files]
        self._owner: dict[str, MappedSafetensors] = {}
        for shard in self._shards:
            for key in shard.infos():
                if key in self._owner:
                    raise InputError(
                        f"{folder}: tensor {key!r} is in both {self._owner[key].path.name} and {shard.path.name}"
                    )
                self._owner[key] = shard
        if weight_map is not None:
            misplaced = sorted(key for key, shard in self._owner.items() if weight_map.get(key) != shard.path.name)
            unlisted = sorted(set(weight_map) - set(self._owner))
            if misplaced or unlisted:
                example = (misplaced or unlisted)[0]
                raise InputError(
                    f"{index_path} does not match its shards ({len(misplaced) + len(unlisted)} keys listed in the "
                    f"wrong shard or in none, e.g. {example!r}); regenerate the folder with save_pretrained"
                )

    def infos(self) -> dict[str, TensorInfo]:
        return {key: info for shard in self._shards for key, info in shard.infos().items()}

    def tensor(self, key: str) -> torch.Tensor:
        return self._owner[key].tensor(key)

    def read(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor:
        return self._owner[key].read(key, start, out)

    def release(self, key: str) -> None:
        self._owner[key].release(key)


def _read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's `weight_map`: tensor name -> shard file name, a plain file name in the same folder (an index
    naming `../x` or an absolute path would make the merge read files outside the model folder)."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{index_path} is not a readable JSON file: {str(error)[:200]}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index_path} has no 'weight_map' (tensor name -> shard file); regenerate it")
    for key, name in weight_map.items():
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise InputError(
                f"{index_path}: tensor {key!r} is mapped to {name!r}, which is not a shard file name in that folder"
            )
    return weight_map


@dataclass
class MergeSource:
    """One opened source: its tensors, its files (hashed for the card) and what it must agree on with the others."""

    spec: str  # as the user gave it
    kind: str  # "folder" | "hub" | "upstream" | "xtts" | "file" (a bare safetensors state dict)
    reader: TensorReader
    files: list[Path]  # the weight files read
    fingerprint: dict[str, Any]  # structural config fields compared across sources
    config: dict[str, Any]  # the config written with the output when this source is the donor
    folder: Path | None = None  # where tokenizer / vocoder / sidecar files live
    vocab_files: dict[str, Path] = field(default_factory=dict)
    hub_id: str | None = None
    variant: str | None = None  # "ema" / "online" for upstream training checkpoints
    native: Any = None  # format-specific data the writer needs (the XTTS checkpoint's config and key prefix)

    @property
    def family(self) -> str:
        return "xtts" if self.kind == "xtts" else str(self.config.get("model_type", "unknown"))

    @property
    def vocab_sha256(self) -> str | None:
        if not self.vocab_files:
            return None
        digest = hashlib.sha256()
        for name in sorted(self.vocab_files):
            try:
                content = self.vocab_files[name].read_bytes()
            except OSError as error:
                raise InputError(f"{self.vocab_files[name]} cannot be read: {error.strerror or error}") from None
            digest.update(name.encode() + b"\0" + content)
        return digest.hexdigest()


@dataclass(frozen=True)
class SourceOptions:
    """How sources that are not package folders are read."""

    arch: str | None = None  # upstream F5/E2: preset name or arch file
    vocab: str | None = None  # upstream F5/E2: vocab.txt
    source: str = "ema"  # upstream training checkpoints: "ema" or "online" weights
    trust_pickle: bool = False
    token: str | None = None


def structural_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in NON_STRUCTURAL_CONFIG_KEYS}


def _full_config(folder: Path) -> dict[str, Any]:
    """The folder's config with defaults filled in (save_pretrained writes only the fields that differ from them),
    so a field left at its default in one source and written out in another still compares equal."""
    from transformers import CONFIG_MAPPING, AutoConfig

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{path} is not a readable JSON file: {str(error)[:200]}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a JSON object (a model config), got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return raw  # a model type this installation does not know: compare what the file says
    try:
        return AutoConfig.from_pretrained(folder).to_dict()
    except InputError:
        raise  # the package's config validation names the file and the field
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise InputError(f"{path}: not a valid {model_type} config: {str(error).strip()[:200]}") from None


def _open_folder(spec: str, folder: Path, kind: str, hub_id: str | None) -> MergeSource:
    if not (folder / "config.json").is_file():
        raise InputError(f"source {spec}: {folder} has no config.json, so it is not a package model folder")
    reader = FolderReader(folder)
    config = _full_config(folder)
    return MergeSource(
        spec=spec,
        kind=kind,
        reader=reader,
        files=reader.files,
        fingerprint=structural_fields(config),
        config=config,
        folder=folder,
        vocab_files={name: folder / name for name in VOCAB_FILES if (folder / name).is_file()},
        hub_id=hub_id,
    )


def _open_upstream_f5(spec: str, path: Path, checkpoint: Any, options: SourceOptions) -> MergeSource:
    """`checkpoint`: the torch.load(mmap=True) result of a `.pt` file, None for a `.safetensors` export (mapped here).
    Either way only headers and the small rotary buffer are read now; weights stream in as they are merged."""
    from hf_tts.convert.f5 import (
        check_weight_shapes,
        expected_state_shapes,
        model_class_for,
        resolve_arch,
        select_upstream_state,
        upstream_f5_key_map,
    )
    from hf_tts.tokenization_f5 import read_vocab_file

    if options.arch is None or options.vocab is None:
        raise InputError(
            f"source {spec} is an upstream F5/E2 checkpoint: pass --arch (preset name or arch file) and --vocab "
            "(its vocab.txt) so it can be converted on the fly"
        )
    vocab = Path(options.vocab)
    if not vocab.is_file():
        raise InputError(f"--vocab {vocab} does not exist or is not a file")
    config = resolve_arch(options.arch, text_num_embeds=len(read_vocab_file(vocab)))
    mapped = MappedSafetensors(path) if checkpoint is None else None
    state = select_upstream_state(
        mapped if mapped is not None else checkpoint, path, options.source == "online", online_flag="--source online"
    )
    names = upstream_f5_key_map(state, path)
    if mapped is not None:
        reader: TensorReader = RenamedReader(mapped, names)
    else:
        reader = StateDictReader({name: state[key] for name, key in names.items()})
    check_weight_shapes(
        {key: info.shape for key, info in reader.infos().items()},
        expected_state_shapes(model_class_for(config), config),
        config,
        arch_label=f"--arch {options.arch}",
        vocab_label=str(vocab),
    )
    config_dict = config.to_dict()
    return MergeSource(
        spec=spec,
        kind="upstream",
        reader=reader,
        files=[path],
        fingerprint=structural_fields(config_dict),
        config=config_dict,
        folder=None,
        vocab_files={"vocab.txt": vocab},
        variant=options.source,
    )


def _open_xtts(spec: str, path: Path, checkpoint: dict, options: SourceOptions) -> MergeSource:
    from hf_tts.convert.xtts import read_xtts_checkpoint

    xtts = read_xtts_checkpoint(path, checkpoint)
    return MergeSource(
        spec=spec,
        kind="xtts",
        reader=StateDictReader(xtts.state_dict),
        files=[path],
        fingerprint=xtts.fingerprint,
        config=xtts.config,
        folder=path.parent,
        vocab_files={"vocab.json": path.parent / "vocab.json"} if (path.parent / "vocab.json").is_file() else {},
        native=xtts,
    )


def _looks_like_upstream_f5(path: Path) -> bool:
    """An F5-TTS / E2-TTS export names its weights `ema_model.transformer.*` (or `transformer.*` for the CFM's own
    state dict); any other safetensors file is merged as the plain state dict it is."""
    header, _ = read_safetensors_header(path)
    return any(key.startswith(("ema_model.", "transformer.")) for key in header if key != "__metadata__")


def _open_bare_safetensors(spec: str, path: Path) -> MergeSource:
    """A safetensors state dict without a config (any model): merged key by key, written as `model.safetensors`."""
    reader = MappedSafetensors(path)
    return MergeSource(
        spec=spec, kind="file", reader=reader, files=[path], fingerprint={}, config={}, folder=None, vocab_files={}
    )


def _open_file(spec: str, path: Path, options: SourceOptions) -> MergeSource:
    if path.suffix not in _UPSTREAM_SUFFIXES:
        raise InputError(
            f"source {spec}: unsupported file type {path.suffix!r}; expected a model folder, an upstream F5/E2 "
            f"checkpoint or an XTTS checkpoint ({', '.join(_UPSTREAM_SUFFIXES)})"
        )
    if path.suffix == ".safetensors":
        if options.arch is None and options.vocab is None and not _looks_like_upstream_f5(path):
            return _open_bare_safetensors(spec, path)
        return _open_upstream_f5(spec, path, None, options)
    from hf_tts.convert.xtts import is_xtts_checkpoint

    # Tensors of a zip-format file (torch.save's default since 1.6) are memory-mapped and paged in as merged;
    # the legacy format cannot be mapped and is read whole.
    mappable = zipfile.is_zipfile(path)
    if not mappable:
        logger.warning(f"{path} uses torch's legacy (pre-1.6) format, which cannot be memory-mapped: reading it whole")
    checkpoint = load_torch_checkpoint(path, mmap=mappable, trust_pickle=options.trust_pickle)
    if is_xtts_checkpoint(checkpoint):
        return _open_xtts(spec, path, checkpoint, options)
    return _open_upstream_f5(spec, path, checkpoint, options)


def open_source(spec: str | os.PathLike, options: SourceOptions) -> MergeSource:
    """Open `spec` (a folder, a checkpoint file or a Hub repo id) reading headers only."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        has_safetensors = (path / WEIGHTS_NAME).is_file() or (path / WEIGHTS_INDEX_NAME).is_file()
        if (path / "model.pth").is_file() and not has_safetensors:
            return _open_file(spec, path / "model.pth", options)  # a Coqui XTTS folder
        return _open_folder(spec, path, "folder", None)
    if path.is_file():
        return _open_file(spec, path, options)
    if HUB_REPO_ID.match(spec):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(spec, token=options.token))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
            raise InputError(f"source {spec}: not a local path, and the Hub download failed: {error}") from error
        return _open_folder(spec, folder, "hub", spec)
    raise InputError(f"source {spec} does not exist (not a folder, a file, or a Hub repo id like 'user/model')")
