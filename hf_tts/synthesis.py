"""Speech synthesis with a flow-matching TTS model and its Vocos vocoder.

The chunks of one request are sampled in batched ODE solves (each row masked to its own duration; upstream samples
them one after another): the first chunk alone, so its audio comes as soon as possible, then the rest in text order,
in solves bounded by `CPU_BATCH_FRAMES` on a CPU and in one solve on an accelerator. Each chunk's generated frames
are vocoded on their own, brought back to the reference loudness and joined with upstream's 0.15 s linear
cross-fade (`CrossFader`), which `synthesize_stream` hands out piece by piece: the pieces joined are exactly
`synthesize`'s audio, since both run the same code. `synthesize_batch` samples the chunks of several requests
(different voices and texts) in shared solves.

Precision: `dtype="auto"` (the default) samples in bf16 where the hardware computes it natively (CPUs with
AVX512-BF16 or AMX, GPUs with bf16) and in fp32 elsewhere; `dtype=torch.float32` gives upstream's numbers exactly.

`SpeechSynthesisMixin` gives `FlowMatchingTTSModel` its `vocoder` submodule (saved and loaded with the model when
`config.vocoder_config` is set), `attach_vocoder`, `synthesize` and the `generate` transformers' text-to-speech
pipeline calls.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from hf_tts.audio import AudioInput, remove_long_silences
from hf_tts.errors import InputError
from hf_tts.file_utils import check_finite
from hf_tts.limits import MAX_CFG_STRENGTH, MAX_SAMPLING_STEPS, MAX_SEED, MAX_SWAY, MIN_SWAY, check_number
from hf_tts.models.vocos.modeling_vocos import VocosModel
from hf_tts.processing import (
    CROSS_FADE_SECONDS,
    TARGET_RMS,
    F5Processor,
    SynthesisInputs,
    check_speech_options,
    check_speech_text,
    load_processor,
)

# Padded frames (both CFG halves) one long-form solve may hold on a CPU. Batching buys nothing there (products of a few
# hundred rows already run at the full rate) and pays for padding: Base layout, ten chunks of 210-300 frames, 2 threads,
# one solve took 1.3x as long as chunk by chunk, while solves of at most 1024 frames matched it; for ten chunks of
# 104-120 frames they were 1.07x faster than chunk by chunk. An accelerator gets every chunk in one solve.
CPU_BATCH_FRAMES = 1024
ATTACH_HINT = (
    "attach one with `hf-tts attach-vocoder MODEL_DIR VOCODER_DIR` (VOCODER_DIR: `hf-tts convert vocos` output or "
    "an upstream charactr/vocos-mel-24khz folder), `hf-tts convert f5 ... --vocoder DIR`, or "
    "`model.attach_vocoder(VocosModel.from_pretrained(...))`"
)
# Keyword arguments transformers' text-to-speech pipeline adds to every `generate` call (pad_token_id since the
# tokenizer has a pad id); they mean nothing here.
_PIPELINE_GENERATE_KWARGS = (
    "max_new_tokens",
    "return_dict_in_generate",
    "attention_mask",
    "input_ids",
    "pad_token_id",
)
SAMPLING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What one request of `synthesize_batch` may hold besides text / ref_audio / ref_text.
REQUEST_OPTIONS = (
    "sampling_rate",
    "nfe_step",
    "cfg_strength",
    "sway_sampling_coef",
    "speed",
    "fix_duration",
    "remove_silence",
    "seed",
)


@dataclass
class SpeechOutput:
    audio: np.ndarray  # (samples,) float32 mono
    sampling_rate: int
    mel: torch.Tensor  # (n_mels, frames) the generated log-mel, chunks concatenated
    chunks: list[str]


@dataclass
class SpeechPiece:
    """One piece of a stream: audio ready to be played (the cross-fade with the next chunk is held back)."""

    audio: np.ndarray  # (samples,) float32 mono
    sampling_rate: int
    chunk: int  # index of the text chunk this audio ends in; -1 for the final tail
    text: str  # that chunk's text ("" for the tail)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products in hardware (AVX512-BF16 or AMX-BF16 flags in /proc/cpuinfo), where
    bf16 sampling is 1.6-3.8x faster than fp32; elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_sampling_dtype(dtype: torch.dtype | str | None, device: torch.device | str | None = None) -> torch.dtype:
    """The precision to sample in. "auto" (or None): bf16 on a CUDA GPU that supports it and on a CPU with native bf16
    (`cpu_has_native_bf16`), fp32 otherwise (other accelerators, older CPUs). A name ("float32", "bfloat16",
    "float16") or a torch floating dtype is taken as it is."""
    if dtype is None or dtype == "auto":
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in SAMPLING_DTYPES:
            raise InputError(f"dtype must be auto, {', '.join(SAMPLING_DTYPES)} or a torch dtype, got {dtype!r:.40}")
        return SAMPLING_DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or dtype not in SAMPLING_DTYPES.values():
        raise InputError(f"dtype must be auto, {', '.join(SAMPLING_DTYPES)} or a torch dtype, got {dtype!r:.40}")
    return dtype


def weights_signature(module: torch.nn.Module) -> tuple:
    """Where each weight lives and how often it was changed in place: a cached copy or compiled module built from
    `module` is stale when this changes. Inference tensors have no version counter (they cannot change outside
    inference mode), so their address stands alone."""
    return tuple(
        (tensor.data_ptr(), 0 if tensor.is_inference() else tensor._version) for tensor in module.state_dict().values()
    )


def sampling_model(model, dtype: torch.dtype):
    """`model` itself when its weights are in `dtype`; otherwise a copy in `dtype` (without the vocoder), cached on
    the model and rebuilt when a weight changes. The copy costs the weights' size in `dtype` (half of fp32 for bf16);
    load the model in the sampling precision to avoid it (`load_speech_model(..., sampling_dtype=...)`)."""
    if model.sampling_dtype == dtype:
        return model
    key = (dtype, model.device, weights_signature(model.backbone))
    cached = model.__dict__.get("_sampling_copy")
    if cached is None or cached[0] != key:
        vocoder = model.vocoder
        model.vocoder = None  # the vocoder stays in fp32 and is not copied
        # ordinary tensors even when called under inference_mode, so that torch.compile can still track them
        with torch.inference_mode(False):
            try:
                copied = copy.deepcopy(model)
            finally:
                model.vocoder = vocoder
            for name in ("_sampling_copy", "_compiled_backbone"):
                copied.__dict__.pop(name, None)
            copied.backbone.to(dtype)  # the mel front end keeps its fp32 filterbank, as in `load_speech_model`
        # a plain attribute, not a submodule: the copy must stay out of the model's state_dict()
        model.__dict__["_sampling_copy"] = cached = (key, copied.eval())
    return cached[1]


def check_sampling_options(
    nfe_step: object = None, cfg_strength: object = None, sway_sampling_coef: object = None, seed: object = None
) -> None:
    """The sampler's options, checked before any work (None: the config's default, or no sway / no seed): `nfe_step`
    in [1, MAX_SAMPLING_STEPS], `cfg_strength` finite in [0, MAX_CFG_STRENGTH], `sway_sampling_coef` in
    [MIN_SWAY, MAX_SWAY] (where the time grid stays increasing), `seed` in [0, MAX_SEED]. An infinite guidance or a
    NaN sway would otherwise sample NaN and give a silent, constant WAV."""
    if nfe_step is not None:
        check_number("nfe_step (ODE steps)", nfe_step, 1, MAX_SAMPLING_STEPS, integer=True)
    if cfg_strength is not None:
        check_number("cfg_strength", cfg_strength, 0, MAX_CFG_STRENGTH)
    if sway_sampling_coef is not None:
        check_number("sway_sampling_coef", sway_sampling_coef, MIN_SWAY, MAX_SWAY)
    if seed is not None:
        check_number("seed", seed, 0, MAX_SEED, integer=True)


def check_generated(
    values: torch.Tensor | np.ndarray,
    what: str,
    options: str = "the sampling options (cfg_strength, sway_sampling_coef, dtype)",
) -> None:
    """Refuse a generated mel / wave / motion holding NaN or Inf before anything is written (a NaN mel becomes a
    constant, silent WAV); the cause is the model or the options, which the message points to."""
    try:
        check_finite(values, what)
    except InputError as error:
        raise InputError(
            f"{error}: the model produced NaN/Inf; check its weights (a damaged or diverged checkpoint) and {options}"
        ) from None


def resolve_device(device: str | torch.device | None, option: str = "device") -> torch.device | None:
    """`device` as a torch.device this process can use, checked before a model is loaded: a bad name, or an
    accelerator this torch build or machine does not have (`cuda` on a CPU-only build), is an InputError naming the
    devices that are available."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"{option} {str(device)[:40]!r} is not a torch device name (such as cpu, cuda, cuda:1, mps); available "
            f"here: {', '.join(available_devices())}"
        ) from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "mps":
        usable, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, parsed.type, None)
        usable = backend is not None and hasattr(backend, "is_available") and bool(backend.is_available())
        count = backend.device_count() if usable and hasattr(backend, "device_count") else 1
    if not usable:
        why = (
            f"this torch build ({torch.__version__}) has no CUDA support"
            if parsed.type == "cuda" and not torch.backends.cuda.is_built()
            else f"no {parsed.type} device is visible to torch {torch.__version__}"
        )
        raise InputError(f"{option} {device}: {why}; available here: {', '.join(available_devices())}")
    if parsed.index is not None and parsed.index >= count:
        raise InputError(
            f"{option} {device}: there are only {count} {parsed.type} devices; available here: "
            f"{', '.join(available_devices())}"
        )
    return parsed


def available_devices() -> list[str]:
    """The device names `resolve_device` accepts on this machine (cpu first)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += ["xpu"] + [f"xpu:{index}" for index in range(xpu.device_count())]
    return names


class CrossFader:
    """Upstream's linear cross-fade of min(seconds, both lengths) samples between consecutive waves, done
    incrementally: `push(wave)` returns the audio that no later cross-fade can change (all but the last `seconds`
    of what was pushed), `flush()` the rest. The pieces joined equal `cross_fade(waves)` sample for sample."""

    def __init__(self, sampling_rate: int, seconds: float = CROSS_FADE_SECONDS):
        self.overlap = int(seconds * sampling_rate)
        self.tail = np.zeros(0, dtype=np.float32)  # the held-back end of the audio so far
        self.length = 0  # samples pushed and joined so far (emitted + tail)

    def push(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if self.length == 0:
            joined = wave
        else:
            overlap = min(self.overlap, self.length, len(wave))
            if overlap <= 0:
                joined = np.concatenate([self.tail, wave])
            else:
                fade_out = np.linspace(1, 0, overlap, dtype=np.float32)
                fade_in = np.linspace(0, 1, overlap, dtype=np.float32)
                blended = self.tail[len(self.tail) - overlap :] * fade_out + wave[:overlap] * fade_in
                joined = np.concatenate([self.tail[: len(self.tail) - overlap], blended, wave[overlap:]])
            self.length -= overlap
        self.length += len(wave)
        keep = min(self.overlap, len(joined))
        self.tail = joined[len(joined) - keep :]
        return joined[: len(joined) - keep].astype(np.float32)

    def flush(self) -> np.ndarray:
        tail, self.tail = self.tail, np.zeros(0, dtype=np.float32)
        return tail.astype(np.float32)


def cross_fade(waves: list[np.ndarray], sampling_rate: int, seconds: float = CROSS_FADE_SECONDS) -> np.ndarray:
    """Join waves with upstream's linear cross-fade of min(seconds, both lengths) samples."""
    fader = CrossFader(sampling_rate, seconds)
    pieces = [fader.push(wave) for wave in waves]
    return np.concatenate([*pieces, fader.flush()]).astype(np.float32)


def join_chunks(waves: list[np.ndarray], sampling_rate: int, remove_silence: bool = False) -> np.ndarray:
    """The chunks' waves cross-faded into one; `remove_silence` then shortens silences over 1 s, as upstream's
    `remove_silence_for_generated_wav` does to the written file."""
    audio = cross_fade(waves, sampling_rate)
    return remove_long_silences(audio, sampling_rate) if remove_silence else audio


def chunk_batches(durations: list[int], batch_frames: int | None) -> list[list[int]]:
    """Chunk indices grouped into batched solves, longest first (less padding): each batch holds at most
    `batch_frames` padded frames counting both CFG halves (2 x chunks x its longest), but always one chunk; None puts
    every chunk in one batch."""
    order = sorted(range(len(durations)), key=lambda index: (-durations[index], index))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        if batch is not None and (batch_frames is None or 2 * (len(batch) + 1) * durations[batch[0]] <= batch_frames):
            batch.append(index)
        else:
            batches.append([index])
    return batches


def stream_batches(durations: list[int], batch_frames: int | None) -> list[list[int]]:
    """Chunk indices grouped into solves for streaming: the first chunk alone (its audio is ready after the shortest
    possible solve), then the others in text order, consecutive chunks sharing a solve while 2 x chunks x the
    longest of them stays within `batch_frames` (None: all the others in one solve)."""
    batches: list[list[int]] = [[0]] if durations else []
    for index in range(1, len(durations)):
        batch = batches[-1] if len(batches) > 1 else None
        longest = max([durations[row] for row in batch] + [durations[index]]) if batch else 0
        if batch is not None and (batch_frames is None or 2 * (len(batch) + 1) * longest <= batch_frames):
            batch.append(index)
        else:
            batches.append([index])
    return batches


def _auto_batch_frames(model, batch_frames: int | None | str) -> int | None:
    if batch_frames == "auto":
        return CPU_BATCH_FRAMES if model.device.type == "cpu" else None
    return batch_frames


def _sample_rows(model, inputs: SynthesisInputs, rows: list[int], options: dict) -> list[torch.Tensor]:
    """One batched solve of the chunks `rows` of `inputs`, each isolated from the others' padding; each chunk's
    generated frames (frames_i, n_mels), from upstream's `ref_audio_len` on."""
    index = torch.tensor(rows)
    options = dict(options)
    if options.get("latents") is not None:
        options["latents"] = options["latents"][index]
    mel = model.sample(inputs.cond[index], inputs.text[index], inputs.duration[index], isolate_samples=True, **options)
    check_generated(mel, "the generated mel spectrogram")
    return [mel[position, inputs.ref_frames : int(inputs.duration[row])] for position, row in enumerate(rows)]


def sample_chunks(
    model,
    inputs: SynthesisInputs,
    *,
    progress_callback: Callable[[int, int], None] | None = None,
    batch_frames: int | None | str = "auto",
    **sample_options,
) -> list[torch.Tensor]:
    """Sample every chunk in batched solves, each chunk isolated from the others' padding (so it equals sampling that
    chunk alone, as upstream does chunk by chunk); returns each chunk's generated frames (frames_i, n_mels), starting
    at upstream's `ref_audio_len` (so one frame overlaps the prompt, as upstream).

    `batch_frames` bounds each solve (see `chunk_batches`); "auto" is `CPU_BATCH_FRAMES` on a CPU and one solve for
    all chunks on an accelerator. `latents` in `sample_options`, if given, has one row per chunk.
    """
    durations = [int(total) for total in inputs.duration.tolist()]
    batches = chunk_batches(durations, _auto_batch_frames(model, batch_frames))
    mels: list[torch.Tensor | None] = [None] * len(durations)
    for number, batch in enumerate(batches):
        options = dict(sample_options)
        if progress_callback is not None:
            options["progress_callback"] = functools.partial(_batch_progress, progress_callback, number, len(batches))
        for row, mel in zip(batch, _sample_rows(model, inputs, batch, options)):
            mels[row] = mel
    return mels


def stream_chunks(
    model,
    inputs: SynthesisInputs,
    vocoder: VocosModel,
    *,
    progress_callback: Callable[[int, int], None] | None = None,
    batch_frames: int | None | str = "auto",
    **sample_options,
) -> Iterator[tuple[int, torch.Tensor, np.ndarray]]:
    """(chunk index, generated mel, vocoded wave) of every chunk in text order, each as soon as its solve is done
    (`stream_batches`: the first chunk alone, then the rest batched); what `synthesize` and `synthesize_stream`
    share, so their audio is the same."""
    durations = [int(total) for total in inputs.duration.tolist()]
    batches = stream_batches(durations, _auto_batch_frames(model, batch_frames))
    for number, batch in enumerate(batches):
        options = dict(sample_options)
        if progress_callback is not None:
            options["progress_callback"] = functools.partial(_batch_progress, progress_callback, number, len(batches))
        mels = _sample_rows(model, inputs, batch, options)
        for row, mel in zip(batch, mels):
            yield row, mel, vocode_chunks(vocoder, [mel], inputs.reference.rms)[0]


def _batch_progress(callback: Callable[[int, int], None], batch: int, batches: int, step: int, steps: int) -> None:
    """Progress of one batched solve as progress over all of them."""
    callback(batch * steps + step, batches * steps)


def vocode_chunks(vocoder: VocosModel, mels: list[torch.Tensor], reference_rms: float) -> list[np.ndarray]:
    """Decode each chunk's mel on its own (the vocoder's convolutions must not see another chunk's padding) and
    restore the reference loudness when it was raised to the target RMS."""
    gain = reference_rms / TARGET_RMS if reference_rms < TARGET_RMS else 1.0
    waves = []
    with torch.inference_mode():
        for mel in mels:
            wave = vocoder.decode(mel.T[None].to(vocoder.device, vocoder.dtype))[0]
            check_generated(wave, "the vocoded waveform")
            waves.append((wave.float().cpu().numpy() * gain).astype(np.float32))
    return waves


def _prepare_batch_request(processor: F5Processor, request: Any) -> tuple[SynthesisInputs, dict]:
    """One `synthesize_batch` request checked and prepared: (processor inputs, its options)."""
    if not isinstance(request, dict):
        raise InputError(f"a request must be a dict with text, ref_audio and ref_text, got {type(request).__name__}")
    unknown = sorted(set(request) - {"text", "ref_audio", "ref_text", *REQUEST_OPTIONS})
    if unknown:
        raise InputError(
            f"unknown request key {unknown[0]!r:.40}; a request takes text, ref_audio, ref_text and "
            f"{', '.join(REQUEST_OPTIONS)}"
        )
    missing = [name for name in ("text", "ref_audio", "ref_text") if request.get(name) is None]
    if missing:
        raise InputError(f"the request has no {missing[0]}; each request needs text, ref_audio and ref_text")
    options = {name: request[name] for name in REQUEST_OPTIONS if request.get(name) is not None}
    options.setdefault("sway_sampling_coef", -1.0)
    check_speech_text(request["text"])
    check_speech_options(options.get("speed", 1.0), options.get("fix_duration"))
    check_sampling_options(
        options.get("nfe_step"), options.get("cfg_strength"), options["sway_sampling_coef"], options.get("seed")
    )
    inputs = processor(
        request["text"],
        request["ref_audio"],
        request["ref_text"],
        sampling_rate=options.get("sampling_rate"),
        speed=options.get("speed", 1.0),
        fix_duration=options.get("fix_duration"),
    )
    return inputs, options


def _sample_requests(
    model, requests: list[tuple[SynthesisInputs, dict]], batch_frames: int | None | str
) -> list[list[torch.Tensor]]:
    """The chunks of several requests (same nfe_step / cfg / sway) in shared solves: each row carries its own
    reference mel (padded, with its length as `lens`), text and duration, and its own seeded noise (the draw
    `sample(seed=...)` makes for it alone). Returns each request's chunk mels, generated frames only."""
    mel_dim = model.config.mel_dim
    rows = []  # (request, chunk, prompt mel, text ids, duration, ref_frames, seed)
    with torch.inference_mode():
        for number, (inputs, options) in enumerate(requests):
            prompt = model.mel_spec(inputs.cond[:1].to(model.device))[0].T.to(model.sampling_dtype)
            for chunk in range(len(inputs.chunks)):
                ids = inputs.text[chunk][inputs.text[chunk] != -1]
                duration = int(inputs.duration[chunk])
                rows.append((number, chunk, prompt, ids, duration, inputs.ref_frames, options.get("seed")))
    order = chunk_batches([row[4] for row in rows], _auto_batch_frames(model, batch_frames))
    first = requests[0][1]
    options = {
        "steps": first.get("nfe_step"),
        "cfg_strength": first.get("cfg_strength"),
        "sway_sampling_coef": first.get("sway_sampling_coef"),
    }
    mels: list[list[torch.Tensor | None]] = [[None] * len(inputs.chunks) for inputs, _ in requests]
    for batch in order:
        chosen = [rows[index] for index in batch]
        total = max(row[4] for row in chosen)
        noise = []
        for *_, duration, _, seed in chosen:
            generator = None if seed is None else torch.Generator(model.device).manual_seed(seed)
            noise.append(
                torch.randn(duration, mel_dim, generator=generator, device=model.device, dtype=model.sampling_dtype)
            )
        mel = model.sample(
            torch.nn.utils.rnn.pad_sequence([row[2] for row in chosen], batch_first=True),
            torch.nn.utils.rnn.pad_sequence([row[3] for row in chosen], batch_first=True, padding_value=-1),
            torch.tensor([row[4] for row in chosen]),
            lens=torch.tensor([row[2].shape[0] for row in chosen]),
            latents=torch.nn.utils.rnn.pad_sequence(noise, batch_first=True)[:, :total],
            isolate_samples=True,
            **options,
        )
        check_generated(mel, "the generated mel spectrogram")
        for position, (number, chunk, _, _, duration, ref_frames, _) in enumerate(chosen):
            mels[number][chunk] = mel[position, ref_frames:duration]
    return mels


class SpeechSynthesisMixin:
    """Vocoder and speech synthesis for `FlowMatchingTTSModel` (F5-TTS, E2-TTS)."""

    def __init__(self, config):
        super().__init__(config)
        vocoder_config = getattr(config, "vocoder_config", None)
        self.vocoder = VocosModel(vocoder_config) if vocoder_config is not None else None

    @classmethod
    def can_generate(cls) -> bool:
        # transformers' text-to-speech pipeline calls `generate` only on models that say they can generate.
        return True

    def attach_vocoder(self, vocoder: VocosModel) -> None:
        """Carry `vocoder` as a submodule: saved with `save_pretrained`, loaded back by `from_pretrained`."""
        if not isinstance(vocoder, VocosModel):
            raise InputError(f"the vocoder must be a VocosModel, got {type(vocoder).__name__}")
        voc, own = vocoder.config, self.config
        mismatched = [
            f"{name} {getattr(voc, name)} vs {getattr(own, other)}"
            for name, other in (("sampling_rate", "sampling_rate"), ("n_mels", "mel_dim"), ("hop_length", "hop_length"))
            if getattr(voc, name) != getattr(own, other)
        ]
        if mismatched:
            raise InputError(f"the vocoder does not fit this model's mel: {', '.join(mismatched)} (vocoder vs model)")
        self.vocoder = vocoder.to(self.device)
        self.config.vocoder_config = vocoder.config

    def require_vocoder(self) -> VocosModel:
        if self.vocoder is None:
            raise InputError(f"this model has no vocoder, so it can only make mel spectrograms; {ATTACH_HINT}")
        return self.vocoder

    def get_processor(self, processor: F5Processor | None = None) -> F5Processor:
        """`processor`, or the one of the folder / repo the model was loaded from (cached)."""
        if processor is not None:
            return processor
        source = getattr(self, "name_or_path", "") or ""
        if not source:
            raise InputError(
                "this model was not loaded from a folder, so its tokenizer is unknown; pass "
                "processor=load_processor(FOLDER, model.config) or F5Processor(F5FeatureExtractor(), F5Tokenizer(...))"
            )
        cached = getattr(self, "_cached_processor", None)
        if cached is None or cached[0] != source:
            cached = (source, load_processor(source, self.config))
            self._cached_processor = cached
        return cached[1]

    def _prepare_request(
        self,
        text: str,
        ref_audio: AudioInput,
        ref_text: str,
        *,
        processor: F5Processor | None,
        sampling_rate: int | None,
        nfe_step: int | None,
        cfg_strength: float | None,
        sway_sampling_coef: float | None,
        speed: float,
        fix_duration: float | None,
        seed: int | None,
        dtype: torch.dtype | str | None,
    ) -> tuple[SynthesisInputs, Any, dict]:
        """Checks, the processor's inputs, the model to sample with (in the resolved dtype) and its options."""
        check_speech_text(text)
        check_speech_options(speed, fix_duration)
        check_sampling_options(nfe_step, cfg_strength, sway_sampling_coef, seed)
        sampler = sampling_model(self, resolve_sampling_dtype(dtype, self.device))
        self.require_vocoder()
        inputs = self.get_processor(processor)(
            text, ref_audio, ref_text, sampling_rate=sampling_rate, speed=speed, fix_duration=fix_duration
        )
        options = {"steps": nfe_step, "cfg_strength": cfg_strength, "sway_sampling_coef": sway_sampling_coef}
        return inputs, sampler, {**options, "seed": seed}

    def synthesize(
        self,
        text: str,
        ref_audio: AudioInput,
        ref_text: str,
        *,
        processor: F5Processor | None = None,
        sampling_rate: int | None = None,
        nfe_step: int | None = None,
        cfg_strength: float | None = None,
        sway_sampling_coef: float | None = -1.0,
        speed: float = 1.0,
        fix_duration: float | None = None,
        remove_silence: bool = False,
        seed: int | None = None,
        progress: bool = False,
        compile: bool = False,
        dtype: torch.dtype | str = "auto",
    ) -> SpeechOutput:
        """Speak `text` in the voice of `ref_audio` (whose transcript is `ref_text`). `nfe_step` / `cfg_strength`
        default to the config's sampling settings; `fix_duration` (seconds, reference included) fixes the length
        (shared by the chunks, as upstream 1.1.22); `remove_silence` shortens silences over 1 s (upstream's option);
        `seed` makes the noise reproducible (each chunk is seeded alike); `progress` shows a bar over the batched
        ODE steps, on a terminal only (tqdm's disable=None: logs and captured stderr stay clean) and unless
        huggingface_hub's progress bars are disabled (`hf-tts --quiet`, HF_HUB_DISABLE_PROGRESS_BARS), like every
        other bar of the package; `compile` samples with the torch.compile'd backbone (see
        `FlowMatchingTTSModel.sample`); `dtype` is the sampling precision ("auto": bf16 where the hardware has it,
        see `resolve_sampling_dtype`; torch.float32 for upstream's exact numbers)."""
        from huggingface_hub.utils import tqdm

        inputs, sampler, options = self._prepare_request(
            text,
            ref_audio,
            ref_text,
            processor=processor,
            sampling_rate=sampling_rate,
            nfe_step=nfe_step,
            cfg_strength=cfg_strength,
            sway_sampling_coef=sway_sampling_coef,
            speed=speed,
            fix_duration=fix_duration,
            seed=seed,
            dtype=dtype,
        )
        vocoder = self.vocoder
        label = f"{len(inputs.chunks)} chunk{'s' if len(inputs.chunks) > 1 else ''}"
        mels, waves = [], []
        # closed on an error too, so the bar is finished before the error is reported, not after it
        with tqdm(desc=f"synthesizing {label}", unit="step", disable=None if progress else True) as bar:

            def advance(step: int, total: int) -> None:
                bar.total = total
                bar.update(step + 1 - bar.n)

            for _, mel, wave in stream_chunks(
                sampler, inputs, vocoder, progress_callback=advance, compile=compile, **options
            ):
                mels.append(mel)
                waves.append(wave)
        rate = vocoder.config.sampling_rate
        return SpeechOutput(
            audio=join_chunks(waves, rate, remove_silence),
            sampling_rate=rate,
            mel=torch.cat(mels, dim=0).T.float().cpu(),
            chunks=inputs.chunks,
        )

    def synthesize_stream(
        self,
        text: str,
        ref_audio: AudioInput,
        ref_text: str,
        *,
        processor: F5Processor | None = None,
        sampling_rate: int | None = None,
        nfe_step: int | None = None,
        cfg_strength: float | None = None,
        sway_sampling_coef: float | None = -1.0,
        speed: float = 1.0,
        fix_duration: float | None = None,
        seed: int | None = None,
        compile: bool = False,
        dtype: torch.dtype | str = "auto",
    ) -> Iterator[SpeechPiece]:
        """`synthesize` as a stream of `SpeechPiece`s: each chunk's audio as soon as its solve and vocoding are done
        (the first chunk is sampled alone, so the first audio comes after one short solve; the rest are batched),
        with the last 0.15 s held back until the next chunk's cross-fade, and a final tail. The pieces joined equal
        `synthesize(...).audio` with the same options and seed (`remove_silence` needs the whole audio, so it is not
        an option here). Every input is checked before the first piece."""
        inputs, sampler, options = self._prepare_request(
            text,
            ref_audio,
            ref_text,
            processor=processor,
            sampling_rate=sampling_rate,
            nfe_step=nfe_step,
            cfg_strength=cfg_strength,
            sway_sampling_coef=sway_sampling_coef,
            speed=speed,
            fix_duration=fix_duration,
            seed=seed,
            dtype=dtype,
        )
        return self._stream_pieces(sampler, inputs, {**options, "compile": compile})

    def _stream_pieces(self, sampler, inputs: SynthesisInputs, options: dict) -> Iterator[SpeechPiece]:
        rate = self.vocoder.config.sampling_rate
        fader = CrossFader(rate)
        for index, _, wave in stream_chunks(sampler, inputs, self.vocoder, **options):
            yield SpeechPiece(fader.push(wave), rate, index, inputs.chunks[index])
        yield SpeechPiece(fader.flush(), rate, -1, "")

    def synthesize_batch(
        self,
        requests: Sequence[dict[str, Any]],
        *,
        batch_size: int = 8,
        processor: F5Processor | None = None,
        dtype: torch.dtype | str = "auto",
        batch_frames: int | None | str = "auto",
        errors: str = "raise",
        progress_callback: Callable[[int, int], None] | None = None,
    ) -> list[SpeechOutput | InputError]:
        """Several requests, each a dict with `text`, `ref_audio`, `ref_text` and optionally any of
        `REQUEST_OPTIONS` (as `synthesize`'s). Groups of `batch_size` requests are prepared together and the chunks
        of those sharing the sampling options (nfe_step, cfg_strength, sway) share solves (one per group on an
        accelerator; bounded by `CPU_BATCH_FRAMES` padded frames on a CPU), each chunk isolated from the others, so
        each result is `synthesize`'s for that request (to about 1e-5: batched products round differently).
        `errors="return"` puts a request's InputError in its place in the result instead of raising it, so one bad
        request does not lose the others; `progress_callback(done, total)` is called after each request."""
        check_number("batch_size", batch_size, 1, 65_536, integer=True)
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r:.40}")
        if not isinstance(requests, Sequence) or isinstance(requests, (str, bytes)):
            raise InputError(f"requests must be a list of dicts, got {type(requests).__name__}")
        sampler = sampling_model(self, resolve_sampling_dtype(dtype, self.device))
        vocoder = self.require_vocoder()
        processor = self.get_processor(processor)
        results: list[SpeechOutput | InputError | None] = [None] * len(requests)
        for start in range(0, len(requests), batch_size):
            prepared: dict[int, tuple[SynthesisInputs, dict]] = {}
            for number in range(start, min(start + batch_size, len(requests))):
                try:
                    prepared[number] = _prepare_batch_request(processor, requests[number])
                except InputError as error:
                    if errors == "raise":
                        raise
                    results[number] = error
            groups: dict[tuple, list[int]] = {}
            for number, (_, options) in prepared.items():
                key = tuple(options.get(name) for name in ("nfe_step", "cfg_strength", "sway_sampling_coef"))
                groups.setdefault(key, []).append(number)
            for numbers in groups.values():
                try:
                    mels = _sample_requests(sampler, [prepared[n] for n in numbers], batch_frames)
                except InputError as error:  # NaN output of a shared solve: every request in it failed
                    if errors == "raise":
                        raise
                    for number in numbers:
                        results[number] = error
                    continue
                for number, chunk_mels in zip(numbers, mels):
                    inputs, options = prepared[number]
                    waves = vocode_chunks(vocoder, chunk_mels, inputs.reference.rms)
                    rate = vocoder.config.sampling_rate
                    results[number] = SpeechOutput(
                        audio=join_chunks(waves, rate, bool(options.get("remove_silence", False))),
                        sampling_rate=rate,
                        mel=torch.cat(chunk_mels, dim=0).T.float().cpu(),
                        chunks=inputs.chunks,
                    )
            if progress_callback is not None:
                progress_callback(min(start + batch_size, len(requests)), len(requests))
        return results

    def generate(
        self,
        text: list[str] | str | None = None,
        processor: F5Processor | None = None,
        ref_audio: AudioInput | None = None,
        ref_text: str | None = None,
        **options,
    ) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """What transformers' text-to-speech pipeline calls: `pipe(text, forward_params={"ref_audio": ...,
        "ref_text": ..., "nfe_step": ...})`. Returns {"audio": (1, samples) tensor, or a list for several texts}."""
        if text is None:
            raise InputError(
                "generate needs the raw text, which a tokenizer alone cannot give back: load the pipeline from a "
                "folder / repo id with processor_config.json, or with a model object pass both "
                "processor=model.get_processor() and tokenizer=processor.tokenizer to pipeline(...)"
            )
        for name in _PIPELINE_GENERATE_KWARGS:
            options.pop(name, None)
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts:
            raise InputError(f"generate needs a text or a non-empty list of texts, got {text!r:.60}")
        audio = [
            torch.from_numpy(self.synthesize(item, ref_audio, ref_text, processor=processor, **options).audio)[None]
            for item in texts
        ]
        return {"audio": audio[0] if len(audio) == 1 else audio}


def load_speech_model(
    source,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    sampling_dtype: torch.dtype | str | None = None,
) -> SpeechSynthesisMixin:
    """A model object, or a folder / repo id loaded with AutoModel (in `dtype`; "auto" keeps the saved one). The
    device and the source are checked before anything is loaded (a mistyped local folder is an InputError at once,
    not a Hub lookup with retries). `sampling_dtype` ("auto" or a dtype, see
    `resolve_sampling_dtype`) casts the flow-matching part in place, so sampling in it needs no second copy; the
    vocoder stays as loaded (fp32: it is small, and upstream runs it in fp32)."""
    device = resolve_device(device)
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoModel

        from hf_tts.model_source import check_model_source

        source = check_model_source(source, "model")
        try:
            model = AutoModel.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as error:
            raise InputError(f"could not load a model from {source}: {str(error).strip().splitlines()[0]}") from error
    else:
        model = source
    if not isinstance(model, SpeechSynthesisMixin):
        raise InputError(f"{type(model).__name__} cannot synthesize speech; use an F5-TTS or E2-TTS model")
    if device is not None:
        model = model.to(device)
    if sampling_dtype is not None:
        resolved = resolve_sampling_dtype(sampling_dtype, model.device)
        model.backbone.to(resolved)
        model.mel_spec.to(torch.float32)  # its buffers only; the mel is computed in fp32 either way
    return model.eval()


def plot_mel(
    mel: torch.Tensor | np.ndarray,
    path: str | os.PathLike | BinaryIO,
    title: str | None = "generated mel spectrogram",
    *,
    hop_length: int = 256,
    sampling_rate: int = 24000,
) -> None:
    """Save a (n_mels, frames) log-mel as a PNG picture (matplotlib, Agg backend), with a title and its time axis
    in seconds (frames x hop_length / sampling_rate)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = np.asarray(mel, dtype=np.float32)
    seconds = values.shape[-1] * hop_length / sampling_rate
    figure, axes = plt.subplots(figsize=(12, 4))
    image = axes.imshow(
        values,
        origin="lower",
        aspect="auto",
        interpolation="none",
        extent=(0.0, seconds, -0.5, values.shape[0] - 0.5),
    )
    axes.set_xlabel("time (s)")
    axes.set_ylabel("mel channel")
    if title:
        axes.set_title(title)
    figure.colorbar(image, ax=axes, label="log magnitude")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def _vocoder_weights(vocoder_source: str | os.PathLike) -> Path | dict[str, str]:
    """The vocoder's weights file for the card's provenance (hashed there), or its repo id."""
    folder = Path(vocoder_source)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return {"name": f"vocoder {vocoder_source}"}


def _check_vocoder_folder(vocoder_source: str | os.PathLike) -> None:
    """A local converted folder of another kind (an F5-TTS model given as the vocoder) is refused from its
    config.json: loading it as Vocos would give a randomly initialised vocoder and noise."""
    import json

    config = Path(vocoder_source) / "config.json"
    if not config.is_file():
        return
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "hf_tts_vocos":
        raise InputError(
            f"the vocoder {vocoder_source} is not a Vocos folder (its config.json has model_type {model_type!r}, "
            "not 'hf_tts_vocos'); give `hf-tts convert vocos` output or an upstream charactr/vocos-mel-24khz folder"
        )


def attach_vocoder_to_folder(
    model_dir: str | os.PathLike, vocoder_source: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> str:
    """Write `model_dir` with the vocoder from `vocoder_source` attached (in place, atomically, unless `out_dir`),
    plus its processor, so the folder alone gives speech. Returns the folder written."""
    from hf_tts.convert.vocos import load_vocos
    from hf_tts.file_utils import atomic_output_dir, check_output_target
    from hf_tts.hub.cards import kind_for_config, write_model_card

    # In place, the model folder is replaced (it must be a model folder); a new folder must not touch either input.
    in_place = out_dir is None
    target = model_dir if in_place else out_dir
    inputs = [vocoder_source] if in_place else [model_dir, vocoder_source]
    check_output_target(target, inputs=inputs, overwrite=in_place, kind="dir")
    _check_vocoder_folder(vocoder_source)
    vocoder = load_vocos(vocoder_source)
    model = load_speech_model(model_dir, dtype="auto")
    model.attach_vocoder(vocoder)
    processor = load_processor(model_dir, model.config)
    with atomic_output_dir(target, overwrite=in_place, inputs=inputs) as staging:
        # the folder's other files (tokenizer, ...) come along; weights, config and the card are rewritten
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_model_card(
            staging,
            kind=kind_for_config(model.config),
            config=model.config,
            sources=[_vocoder_weights(vocoder_source)],
            model_id=f"./{Path(target).absolute().name}",
        )
    return str(target)


__all__ = [
    "CROSS_FADE_SECONDS",
    "CrossFader",
    "REQUEST_OPTIONS",
    "SpeechOutput",
    "SpeechPiece",
    "SpeechSynthesisMixin",
    "attach_vocoder_to_folder",
    "available_devices",
    "check_generated",
    "check_sampling_options",
    "cpu_has_native_bf16",
    "cross_fade",
    "join_chunks",
    "load_speech_model",
    "plot_mel",
    "resolve_device",
    "resolve_sampling_dtype",
    "sample_chunks",
    "sampling_model",
    "weights_signature",
    "stream_batches",
    "stream_chunks",
    "vocode_chunks",
]
