"""Speech synthesis with a flow-matching TTS model and its Vocos vocoder.

All chunks of one request are sampled in ONE batched ODE solve (each row masked to its own duration; upstream
samples them one after another), then each chunk's generated frames are vocoded on their own, brought back to the
reference loudness and joined with upstream's 0.15 s linear cross-fade.

`SpeechSynthesisMixin` gives `FlowMatchingTTSModel` its `vocoder` submodule (saved and loaded with the model when
`config.vocoder_config` is set), `attach_vocoder`, `synthesize` and the `generate` transformers' text-to-speech
pipeline calls.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from hf_tts.audio import AudioInput, remove_long_silences
from hf_tts.errors import InputError
from hf_tts.file_utils import check_finite
from hf_tts.limits import MAX_CFG_STRENGTH, MAX_SAMPLING_STEPS, MAX_SEED, MAX_SWAY, MIN_SWAY, check_number
from hf_tts.models.vocos.modeling_vocos import VocosModel
from hf_tts.processing import (
    TARGET_RMS,
    F5Processor,
    SynthesisInputs,
    check_speech_options,
    check_speech_text,
    load_processor,
)

CROSS_FADE_SECONDS = 0.15
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
# Keyword arguments transformers' text-to-speech pipeline adds to every `generate` call; they mean nothing here.
_PIPELINE_GENERATE_KWARGS = ("max_new_tokens", "return_dict_in_generate", "attention_mask", "input_ids")


@dataclass
class SpeechOutput:
    audio: np.ndarray  # (samples,) float32 mono
    sampling_rate: int
    mel: torch.Tensor  # (n_mels, frames) the generated log-mel, chunks concatenated
    chunks: list[str]


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


def cross_fade(waves: list[np.ndarray], sampling_rate: int, seconds: float = CROSS_FADE_SECONDS) -> np.ndarray:
    """Join waves with upstream's linear cross-fade of min(seconds, both lengths) samples."""
    joined = waves[0]
    for wave in waves[1:]:
        overlap = min(int(seconds * sampling_rate), len(joined), len(wave))
        if overlap <= 0:
            joined = np.concatenate([joined, wave])
            continue
        fade_out = np.linspace(1, 0, overlap, dtype=np.float32)
        fade_in = np.linspace(0, 1, overlap, dtype=np.float32)
        blended = joined[-overlap:] * fade_out + wave[:overlap] * fade_in
        joined = np.concatenate([joined[:-overlap], blended, wave[overlap:]])
    return joined.astype(np.float32)


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
    if batch_frames == "auto":
        batch_frames = CPU_BATCH_FRAMES if model.device.type == "cpu" else None
    durations = [int(total) for total in inputs.duration.tolist()]
    batches = chunk_batches(durations, batch_frames)
    mels: list[torch.Tensor | None] = [None] * len(durations)
    for number, batch in enumerate(batches):
        rows = torch.tensor(batch)
        options = dict(sample_options)
        if options.get("latents") is not None:
            options["latents"] = options["latents"][rows]
        if progress_callback is not None:
            options["progress_callback"] = functools.partial(_batch_progress, progress_callback, number, len(batches))
        mel = model.sample(inputs.cond[rows], inputs.text[rows], inputs.duration[rows], isolate_samples=True, **options)
        check_generated(mel, "the generated mel spectrogram")
        for position, row in enumerate(batch):
            mels[row] = mel[position, inputs.ref_frames : durations[row]]
    return mels


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
    ) -> SpeechOutput:
        """Speak `text` in the voice of `ref_audio` (whose transcript is `ref_text`). `nfe_step` / `cfg_strength`
        default to the config's sampling settings; `fix_duration` (seconds, reference included) fixes each chunk's
        length; `remove_silence` shortens silences over 1 s (upstream's option); `seed` makes the noise
        reproducible (each chunk is seeded alike); `progress` shows tqdm bars over the batched ODE steps and the
        vocoded chunks; `compile` samples with the torch.compile'd backbone (see `FlowMatchingTTSModel.sample`)."""
        from tqdm.auto import tqdm

        check_speech_text(text)
        check_speech_options(speed, fix_duration)
        check_sampling_options(nfe_step, cfg_strength, sway_sampling_coef, seed)
        vocoder = self.require_vocoder()
        inputs = self.get_processor(processor)(
            text, ref_audio, ref_text, sampling_rate=sampling_rate, speed=speed, fix_duration=fix_duration
        )
        label = f"{len(inputs.chunks)} chunk{'s' if len(inputs.chunks) > 1 else ''}"
        with tqdm(desc=f"sampling {label}", unit="step", disable=not progress) as bar:

            def advance(step: int, total: int) -> None:
                bar.total = total
                bar.update(step + 1 - bar.n)

            mels = sample_chunks(
                self,
                inputs,
                steps=nfe_step,
                cfg_strength=cfg_strength,
                sway_sampling_coef=sway_sampling_coef,
                seed=seed,
                progress_callback=advance,
                compile=compile,
            )
        # closed on an error too, so the bar is finished before the error is reported, not after it
        with tqdm(mels, desc="vocoding", unit="chunk", disable=not progress) as chunks:
            waves = [vocode_chunks(vocoder, [mel], inputs.reference.rms)[0] for mel in chunks]
        rate = vocoder.config.sampling_rate
        return SpeechOutput(
            audio=join_chunks(waves, rate, remove_silence),
            sampling_rate=rate,
            mel=torch.cat(mels, dim=0).T.float().cpu(),
            chunks=inputs.chunks,
        )

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
    source, *, device: str | torch.device | None = None, dtype: torch.dtype | str = torch.float32
) -> SpeechSynthesisMixin:
    """A model object, or a folder / repo id loaded with AutoModel (in `dtype`; "auto" keeps the saved one). The
    device is checked before anything is loaded."""
    device = resolve_device(device)
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(str(source), dtype=dtype)
        except (OSError, ValueError) as error:
            raise InputError(f"could not load a model from {source}: {str(error).strip().splitlines()[0]}") from error
    else:
        model = source
    if not isinstance(model, SpeechSynthesisMixin):
        raise InputError(f"{type(model).__name__} cannot synthesize speech; use an F5-TTS or E2-TTS model")
    if device is not None:
        model = model.to(device)
    return model.eval()


def plot_mel(mel: torch.Tensor | np.ndarray, path: str | os.PathLike | BinaryIO, title: str | None = None) -> None:
    """Save a (n_mels, frames) log-mel as a PNG picture (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 4))
    image = axes.imshow(np.asarray(mel), origin="lower", aspect="auto", interpolation="none")
    axes.set_xlabel("frame")
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
    "SpeechOutput",
    "SpeechSynthesisMixin",
    "attach_vocoder_to_folder",
    "available_devices",
    "check_generated",
    "check_sampling_options",
    "cross_fade",
    "join_chunks",
    "load_speech_model",
    "plot_mel",
    "resolve_device",
    "sample_chunks",
    "vocode_chunks",
]
