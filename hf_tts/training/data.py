"""Training data for F5-TTS / E2-TTS: dataset preparation and the batch collator.

Sources:
- a `datasets.Dataset` with an audio column and a text column. Audio may be `{"array", "sampling_rate"}` dicts (what
  a decoded `Audio` feature gives), `{"path", "bytes"}` dicts (`Audio(decode=False)`, the way to use the `Audio`
  feature where torchcodec is absent) or plain file paths; files are read with soundfile;
- a folder in upstream's custom-dataset layout: `metadata.csv` with a header line `audio_file|text` and one
  `relative/path.wav|transcript` line per clip (`load_metadata_folder`).

`prepare_tts_dataset` turns a source into rows of `text_ids` (vocab ids), `num_frames` (mel frames, for bucketing)
and the audio: resampled `audio` samples or an `audio_path` (mel computed on the fly by the collator), or a
precomputed `mel` (`precompute_mel=True`, cached by `datasets.map` under `cache_dir`). `FlowMatchingDataCollator`
pads a batch into the model's `forward` arguments: `mel` (B, N, n_mels) zero-padded, `text` (B, T) padded with -1
and `mel_lengths` (B,), from which the model builds its padding mask.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from hf_tts.audio import LogMelSpectrogram, load_audio
from hf_tts.errors import InputError
from hf_tts.tokenization_f5 import TEXT_PAD_ID

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
# Upstream's CustomDataset keeps clips of 0.3 to 30 seconds.
DEFAULT_MIN_SECONDS = 0.3
DEFAULT_MAX_SECONDS = 30.0
# Bumped when the prepared rows change meaning, so stale datasets.map caches are not reused.
_PREPARE_VERSION = "1"


def mel_spectrogram_for(config: Any) -> LogMelSpectrogram:
    """The log-mel the model of `config` (a FlowMatchingTTSConfig) trains on (upstream's vocos-type mel)."""
    return LogMelSpectrogram(
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        n_mels=config.mel_dim,
        sampling_rate=config.sampling_rate,
    )


def load_metadata_folder(folder: str | os.PathLike, *, confined: bool = False) -> Any:
    """Read upstream's custom-dataset layout into a `datasets.Dataset` with columns `audio` (file path) and `text`.

    `folder/metadata.csv` is pipe-separated with the header `audio_file|text`; audio paths are relative to the
    folder (absolute paths are kept). Every listed file must exist. `confined` (a downloaded dataset repo) refuses
    absolute paths and `..`: data from elsewhere may only name its own files, never others on this machine.
    """
    from datasets import Dataset

    folder = Path(folder)
    metadata = folder / METADATA_FILE
    if not metadata.is_file():
        raise InputError(
            f"{folder} has no {METADATA_FILE}; expected upstream's layout: a pipe-separated {METADATA_FILE} with the "
            "header 'audio_file|text' and lines like 'wavs/clip_0001.wav|The transcript.'"
        )
    audio_paths, texts = [], []
    with open(metadata, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [cell.strip() for cell in header[:2]] != ["audio_file", "text"]:
            raise InputError(f"{metadata}: the first line must be the header 'audio_file|text', got {header!r}")
        for line_number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise InputError(f"{metadata} line {line_number}: expected 'audio_file|text', got {'|'.join(row)!r}")
            path = Path(row[0].strip())
            if confined and (path.is_absolute() or ".." in path.parts):
                raise InputError(
                    f"{metadata} line {line_number}: audio path {row[0].strip()!r} leaves the dataset; a downloaded "
                    "dataset may only name files inside its repo (relative paths without '..')"
                )
            path = path if path.is_absolute() else folder / path
            if not path.is_file():
                raise InputError(f"{metadata} line {line_number}: audio file {path} does not exist")
            audio_paths.append(str(path))
            # A transcript may itself contain '|'; everything after the first one is text.
            texts.append("|".join(row[1:]).strip())
    if not texts:
        raise InputError(f"{metadata} lists no clips")
    return Dataset.from_dict({"audio": audio_paths, "text": texts})


def load_audio_source(source: Any, sampling_rate: int, where: str = "audio") -> np.ndarray:
    """Mono float32 samples at `sampling_rate` from any audio value a dataset row may hold: what
    `hf_tts.audio.load_audio` reads (paths, arrays, `{"array", "sampling_rate"}`) plus the `{"bytes", "path"}`
    dicts of an `Audio(decode=False)` column."""
    if isinstance(source, Mapping) and source.get("array") is None:
        if source.get("bytes") is not None:
            import soundfile

            try:
                samples, rate = soundfile.read(io.BytesIO(source["bytes"]), dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
                raise InputError(f"{where}: the audio bytes are not readable audio ({error})") from error
            return load_audio(samples.mean(axis=1), sampling_rate, input_sampling_rate=rate, source=where)
        if source.get("path"):
            return load_audio(source["path"], sampling_rate, source=where)
    return load_audio(source, sampling_rate, source=where)


def _audio_file_of(source: Any) -> str | None:
    """The file path of an audio value that is only a reference to a file (decoded later), else None."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Mapping) and source.get("array") is None and source.get("bytes") is None:
        return source.get("path")
    return None


def find_unknown_tokens(texts: Sequence[str], tokenizer: Any) -> list[str]:
    """Distinct tokens of `texts` missing from the tokenizer's vocab, in order of first appearance."""
    vocab = tokenizer.get_vocab()
    unknown: dict[str, None] = {}
    for text in texts:
        unknown.update((token, None) for token in tokenizer.tokenize(text) if token not in vocab)
    return list(unknown)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def prepare_tts_dataset(
    dataset: Any,
    tokenizer: Any,
    config: Any,
    *,
    audio_column: str = "audio",
    text_column: str = "text",
    precompute_mel: bool = False,
    cache_dir: str | os.PathLike | None = None,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    allow_unknown_tokens: bool = False,
    num_proc: int | None = None,
) -> Any:
    """Rows ready for `FlowMatchingDataCollator`: `text_ids`, `num_frames` and `mel` | `audio` | `audio_path`.

    Args:
        dataset: a `datasets.Dataset` (see module docstring for the audio values it may hold), or a folder in
            upstream's `metadata.csv` layout.
        tokenizer: the model's `F5Tokenizer`.
        config: the model's config (sampling rate, hop length and mel settings).
        precompute_mel: compute the log-mel once with `datasets.map` (stored as `mel`, (frames, n_mels)) instead of
            on the fly in the collator.
        cache_dir: where `datasets.map` writes (and later reuses) the prepared rows; None keeps them in memory
            unless the source dataset is itself file-backed.
        min_seconds, max_seconds: clips outside this duration are dropped (upstream: 0.3 s to 30 s).
        allow_unknown_tokens: map tokens missing from the vocab to id 0 as upstream does, instead of raising
            (extend the vocab with `extend_vocabulary` to learn them).
    """
    from datasets import Array2D, Dataset, Features, Sequence, Value

    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_metadata_folder(dataset)
    if not isinstance(dataset, Dataset):
        raise InputError(f"expected a datasets.Dataset or a {METADATA_FILE} folder, got {type(dataset).__name__}")
    for column in (audio_column, text_column):
        if column not in dataset.column_names:
            raise InputError(
                f"the dataset has no {column!r} column (columns: {', '.join(dataset.column_names)}); "
                "pass audio_column=/text_column="
            )
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    texts = dataset[text_column]
    unknown = find_unknown_tokens(texts, tokenizer)
    if unknown and not allow_unknown_tokens:
        raise InputError(
            f"the texts use {len(unknown)} token(s) missing from the model's vocab: {''.join(unknown)[:80]!r}; "
            "extend the vocab (hf-tts finetune --extend-vocab, or extend_vocabulary()), or let them map to id 0 "
            "(the space, as upstream does) with --allow-unknown-tokens (allow_unknown_tokens=True)"
        )

    sampling_rate, hop_length = config.sampling_rate, config.hop_length
    # A source of bare file references stays one (decoded per batch); decoded audio is stored resampled.
    audio_kind = "mel" if precompute_mel else ("audio_path" if _audio_file_of(dataset[0][audio_column]) else "audio")
    mel_spec = mel_spectrogram_for(config) if precompute_mel else None
    audio_value = {
        "mel": Array2D(shape=(None, config.mel_dim), dtype="float32"),
        "audio": Sequence(Value("float32")),
        "audio_path": Value("string"),
    }[audio_kind]
    features = Features(
        {"text_ids": Sequence(Value("int32")), "num_frames": Value("int32"), "seconds": Value("float32")}
        | {audio_kind: audio_value}
    )

    def prepare_row(row: dict, index: int) -> dict:
        where = f"row {index} column {audio_column!r}"
        text_ids = tokenizer.encode_batch(row[text_column]).ids[0].tolist()
        if audio_kind == "audio_path":
            path = _audio_file_of(row[audio_column])
            if path is None:
                raise InputError(f"{where}: the column mixes file references with decoded audio; use one kind")
            import soundfile

            try:
                info = soundfile.info(path)
            except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
                raise InputError(f"{where} ({path}): cannot read the audio ({error})") from error
            num_samples = round(info.frames * sampling_rate / info.samplerate)
            return {
                "text_ids": text_ids,
                "num_frames": num_samples // hop_length + 1,
                "seconds": num_samples / sampling_rate,
                "audio_path": path,
            }
        samples = load_audio_source(row[audio_column], sampling_rate, where)
        prepared = {
            "text_ids": text_ids,
            "num_frames": len(samples) // hop_length + 1,
            "seconds": len(samples) / sampling_rate,
        }
        if mel_spec is not None:
            with torch.no_grad():
                prepared["mel"] = mel_spec(torch.from_numpy(samples)[None])[0].T.numpy()
        else:
            prepared["audio"] = samples
        return prepared

    fingerprint = _fingerprint(
        _PREPARE_VERSION,
        dataset._fingerprint,
        audio_column,
        text_column,
        audio_kind,
        sorted(tokenizer.get_vocab().items()),
        getattr(tokenizer, "tokenizer_type", None),
        [config.sampling_rate, config.hop_length, config.n_fft, config.win_length, config.mel_dim],
    )
    map_kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        map_kwargs["cache_file_name"] = str(Path(cache_dir) / f"hf_tts-prepared-{fingerprint}.arrow")
    prepared = dataset.map(
        prepare_row,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        new_fingerprint=fingerprint,
        load_from_cache_file=True,
        num_proc=num_proc,
        desc="Preparing audio and text" + (" (mel)" if precompute_mel else ""),
        **map_kwargs,
    )
    kept = prepared.filter(
        lambda seconds: min_seconds <= seconds <= max_seconds,
        input_columns="seconds",
        new_fingerprint=_fingerprint(fingerprint, min_seconds, max_seconds),
        **({"cache_file_name": map_kwargs["cache_file_name"][: -len(".arrow")] + "-kept.arrow"} if map_kwargs else {}),
    )
    if len(kept) < len(prepared):
        logger.warning(
            "dropped %d of %d clips shorter than %.2f s or longer than %.1f s",
            len(prepared) - len(kept),
            len(prepared),
            min_seconds,
            max_seconds,
        )
    if len(kept) == 0:
        raise InputError(f"no clip lasts between {min_seconds} s and {max_seconds} s; nothing to train on")
    return kept.remove_columns("seconds").with_format("torch")


class FlowMatchingDataCollator:
    """Pads prepared rows into `model(**batch)` arguments: `mel` (B, N, n_mels), `text` (B, T), `mel_lengths` (B,).

    Rows holding `audio` samples or an `audio_path` get their log-mel computed here with `mel_spec` (build it with
    `mel_spectrogram_for(config)`); rows with a precomputed `mel` need none.
    """

    def __init__(self, mel_spec: LogMelSpectrogram | None = None):
        self.mel_spec = mel_spec

    def _mel_of(self, row: Mapping[str, Any]) -> torch.Tensor:
        if "mel" in row:
            return torch.as_tensor(row["mel"], dtype=torch.float32)
        if self.mel_spec is None:
            raise InputError("rows without a precomputed 'mel' need the collator's mel_spec to compute it")
        if "audio" in row:
            samples = torch.as_tensor(row["audio"], dtype=torch.float32)
        elif "audio_path" in row:
            samples = torch.from_numpy(load_audio_source(str(row["audio_path"]), self.mel_spec.sampling_rate))
        else:
            raise InputError(f"a row needs 'mel', 'audio' or 'audio_path'; got keys {sorted(row)}")
        with torch.no_grad():
            return self.mel_spec(samples[None])[0].T

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        mels = [self._mel_of(row) for row in rows]
        texts = [torch.as_tensor(row["text_ids"], dtype=torch.long) for row in rows]
        return {
            "mel": pad_sequence(mels, batch_first=True, padding_value=0.0),
            "text": pad_sequence(texts, batch_first=True, padding_value=TEXT_PAD_ID),
            "mel_lengths": torch.tensor([mel.shape[0] for mel in mels], dtype=torch.long),
        }


__all__ = [
    "FlowMatchingDataCollator",
    "find_unknown_tokens",
    "load_audio_source",
    "load_metadata_folder",
    "mel_spectrogram_for",
    "prepare_tts_dataset",
]
