"""Synthesis inputs for F5-TTS / E2-TTS with upstream `infer_process`'s numbers (f5-tts 1.1.22).

- `F5FeatureExtractor` prepares the reference voice: a path, array or `{"array", "sampling_rate"}`; mono; soxr
  resampling to 24 kHz; upstream's silence-based clipping to 12 s (with a warning), edge trimming at -42 dBFS plus
  50 ms of silence; loudness raised to RMS 0.1 (the original RMS is kept to scale the output back).
- `F5Processor` adds the text: reference-text normalisation, sentence chunks sized from the reference length,
  the duration of each chunk and the pinyin/char token ids of `reference text + chunk`.

Formulas (upstream names): `max_chars = int(ref_text_bytes / ref_seconds * (22 - ref_seconds) * speed)`;
`duration = ref_audio_len + int(ref_audio_len / ref_text_bytes * gen_text_bytes / local_speed)` with
`ref_audio_len = samples // hop` and `local_speed = 0.3` for chunks under 10 UTF-8 bytes; with `fix_duration`
(seconds, reference included) a single chunk gets `int(fix_duration * sampling_rate / hop)` frames instead, and
several chunks share it as f5-tts 1.1.22 does (`chunk_fix_durations`): each gets the reference plus a share of
`fix_duration - reference + cross_fade * (chunks - 1)` proportional to its UTF-8 length, so the joined audio lasts
about `fix_duration - reference` seconds (1.1.20 gave every chunk the whole `fix_duration`).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, ProcessorMixin, SequenceFeatureExtractor

from hf_tts.audio import AudioInput, load_audio, normalize_loudness, split_on_silence, trim_silence_edges
from hf_tts.errors import InputError
from hf_tts.limits import (
    MAX_CHUNK_SECONDS,
    MAX_REFERENCE_AUDIO_SECONDS,
    MAX_SPEED,
    MAX_TEXT_CHARS,
    MIN_SPEED,
    check_number,
)
from hf_tts.tokenization_f5 import check_text

TARGET_RMS = 0.1
MAX_REFERENCE_SECONDS = 12.0
MIN_REFERENCE_SECONDS = 0.5
# Upstream sizes chunks so that reference + chunk stays under about this many seconds.
CHUNK_BUDGET_SECONDS = 22.0
SHORT_CHUNK_BYTES = 10
SHORT_CHUNK_SPEED = 0.3
# Upstream's cross-fade between chunks (seconds); `fix_duration` spread over chunks counts the overlaps back in.
CROSS_FADE_SECONDS = 0.15
# Upstream's reference clipping: (min silence ms, silence threshold dBFS) tried in order, keeping 1 s of silence.
_CLIP_PASSES = ((1000, -50.0), (100, -40.0))
_KEEP_SILENCE_MS = 1000
_CLIP_MIN_SECONDS = 6.0
_EDGE_SILENCE_DBFS = -42.0
# pydub's `AudioSegment.silent(50)` is made at 11025 Hz and resampled, so upstream appends 1198 samples at 24 kHz
# where this appends 1200 (checked against pydub 0.25.1: otherwise equal lengths on clipped and trimmed references).
_APPENDED_SILENCE_SECONDS = 0.05
_SENTENCE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


def normalize_reference_text(ref_text: str) -> str:
    """Upstream's `preprocess_ref_audio_text` ending: make the text end with ". " (or "。"); "Hello" and "Hello."
    become "Hello. ". An empty text is refused: upstream would transcribe the audio with Whisper instead."""
    if ref_text is not None:
        check_text(ref_text, "the reference text (ref_text)", max_chars=MAX_TEXT_CHARS)
    if ref_text is None or not ref_text.strip():
        raise InputError(
            "the reference text (ref_text) is empty: give the transcript of the reference audio (upstream would "
            "transcribe it with an ASR model such as openai/whisper-large-v3-turbo; this package does not)"
        )
    if not ref_text.endswith(". ") and not ref_text.endswith("。"):
        ref_text += " " if ref_text.endswith(".") else ". "
    return ref_text


def prompt_text(ref_text: str) -> str:
    """Upstream's `infer_batch_process` step: one more space after a 1-byte last character ("Hello. " becomes
    "Hello.  "); the model reads this followed by each chunk."""
    return ref_text + " " if utf8_length(ref_text[-1]) == 1 else ref_text


def max_chunk_bytes(ref_text: str, ref_seconds: float, speed: float = 1.0) -> int:
    """Upstream's chunk size in UTF-8 bytes: the reference's bytes per second over the time left to 22 s."""
    return int(utf8_length(ref_text) / ref_seconds * (CHUNK_BUDGET_SECONDS - ref_seconds) * speed)


def chunk_text(text: str, max_bytes: int) -> list[str]:
    """Upstream's `chunk_text`: split after sentence punctuation and pack sentences greedily by UTF-8 length,
    adding a space after sentences that end in a 1-byte character."""
    chunks, current = [], ""
    for sentence in _SENTENCE_END.split(text):
        if not sentence:
            continue
        piece = sentence + " " if utf8_length(sentence[-1]) == 1 else sentence
        if utf8_length(current) + utf8_length(sentence) <= max_bytes:
            current += piece
        else:
            if current:
                chunks.append(current.strip())
            current = piece
    if current:
        chunks.append(current.strip())
    return chunks


def estimate_duration(ref_frames: int, ref_text: str, gen_text: str, speed: float = 1.0) -> int:
    """Total frames (reference + generated) of one chunk, upstream's formula."""
    gen_bytes = utf8_length(gen_text)
    local_speed = SHORT_CHUNK_SPEED if gen_bytes < SHORT_CHUNK_BYTES else speed
    return ref_frames + int(ref_frames / utf8_length(ref_text) * gen_bytes / local_speed)


def chunk_fix_durations(
    fix_duration: float, chunks: list[str], ref_frames: int, hop_length: int, sampling_rate: int
) -> list[float]:
    """Each chunk's fixed length in seconds (reference included), f5-tts 1.1.22's `infer_batch_process` rule: one
    chunk keeps `fix_duration`; several share `fix_duration - reference` (plus the cross-fade overlaps, which the
    join takes back) in proportion to their UTF-8 lengths, each on top of the reference. Same float arithmetic as
    upstream, so the frame counts match it exactly."""
    if len(chunks) <= 1:
        return [fix_duration] * len(chunks)
    ref_seconds = ref_frames * hop_length / sampling_rate
    allocatable = fix_duration - ref_seconds + CROSS_FADE_SECONDS * (len(chunks) - 1)
    weights = [utf8_length(chunk) for chunk in chunks]
    total = sum(weights)
    return [ref_seconds + allocatable * weight / total for weight in weights]


def check_speech_text(text: object) -> str:
    """The text to speak: non-empty valid Unicode of at most MAX_TEXT_CHARS characters."""
    check_text(text, "the text to synthesize", max_chars=MAX_TEXT_CHARS)
    if not text.strip():
        raise InputError("the text to synthesize is empty; give at least one word")
    return text


def check_speech_options(speed: object = 1.0, fix_duration: object = None) -> None:
    """The length options of a synthesis request, checked before any audio is read: `speed` in
    [MIN_SPEED, MAX_SPEED], `fix_duration` (seconds, reference included) in (0, MAX_CHUNK_SECONDS]."""
    check_number("speed", speed, MIN_SPEED, MAX_SPEED)
    if fix_duration is not None:
        check_number(
            "fix_duration (seconds, reference included)", fix_duration, 0, MAX_CHUNK_SECONDS, low_inclusive=False
        )


@dataclass
class ReferenceAudio:
    wave: np.ndarray  # mono float32 at the feature extractor's rate, loudness-normalised
    rms: float  # RMS before normalisation; generated audio is scaled back by rms / target when it was quieter
    clipped: bool  # True when the reference was cut to MAX_REFERENCE_SECONDS


@dataclass
class SynthesisInputs:
    """Everything `model.sample` needs for one request: one batch row per text chunk."""

    cond: torch.Tensor  # (B, samples) the reference wave, repeated per chunk
    text: torch.Tensor  # (B, T) ids of reference text + chunk, padded with -1
    duration: torch.Tensor  # (B,) total frames per chunk (reference + generated)
    ref_frames: int  # upstream's ref_audio_len (samples // hop): generated frames start here
    chunks: list[str]
    reference: ReferenceAudio
    unknown_tokens: list[str] = field(default_factory=list)


class F5FeatureExtractor(SequenceFeatureExtractor):
    r"""Reference-audio preparation for F5-TTS / E2-TTS (see the module docstring); outputs padded waveforms."""

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 24000,
        padding_value: float = 0.0,
        hop_length: int = 256,
        target_rms: float = TARGET_RMS,
        max_reference_seconds: float = MAX_REFERENCE_SECONDS,
        min_reference_seconds: float = MIN_REFERENCE_SECONDS,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.hop_length = hop_length
        self.target_rms = target_rms
        self.max_reference_seconds = max_reference_seconds
        self.min_reference_seconds = min_reference_seconds

    def _clip_at_silence(self, wave: np.ndarray) -> tuple[np.ndarray, bool]:
        """Upstream: keep whole non-silent pieces (with up to 1 s of their silence) while under 12 s, trying long
        then short silences, and cut hard at 12 s only when neither finds a place."""
        rate = self.sampling_rate
        limit, floor = int(self.max_reference_seconds * rate), int(_CLIP_MIN_SECONDS * rate)
        kept, clipped = wave, False
        for min_silence_ms, threshold_db in _CLIP_PASSES:
            pieces, length = [], 0
            for piece in split_on_silence(wave, rate, min_silence_ms, threshold_db, _KEEP_SILENCE_MS):
                if length > floor and length + len(piece) > limit:
                    clipped = True
                    break
                pieces.append(piece)
                length += len(piece)
            kept = np.concatenate(pieces) if pieces else wave[:0]
            if len(kept) <= limit:
                break
        if len(kept) > limit:
            kept, clipped = kept[:limit], True
        return kept, clipped

    def prepare_reference(self, audio: AudioInput, sampling_rate: int | None = None) -> ReferenceAudio:
        """Load and clean one reference voice; raises InputError for a missing, unreadable, silent or short one."""
        rate = self.sampling_rate
        wave = load_audio(
            audio,
            rate,
            input_sampling_rate=sampling_rate,
            source="reference audio",
            max_seconds=MAX_REFERENCE_AUDIO_SECONDS,
        )
        original_seconds = len(wave) / rate
        wave, clipped = self._clip_at_silence(wave)
        wave = trim_silence_edges(wave, rate, _EDGE_SILENCE_DBFS)
        if wave.size == 0:
            raise InputError(
                f"the reference audio is silent (nothing above {_EDGE_SILENCE_DBFS:g} dBFS in {original_seconds:.2f} "
                "s); give a recording of the voice to clone"
            )
        if len(wave) < self.min_reference_seconds * rate:
            raise InputError(
                f"the reference audio is too short: {len(wave) / rate:.2f} s of sound (after trimming silence); give "
                f"at least {self.min_reference_seconds:g} s (3 to 12 s works best)"
            )
        if clipped:
            warnings.warn(
                f"the reference audio is {original_seconds:.1f} s long; it was clipped to {len(wave) / rate:.1f} s "
                f"at a silence (references over {self.max_reference_seconds:g} s are clipped, as upstream does), "
                "but its whole transcript is kept: the model then reads words the clipped audio no longer holds, "
                "which shows as mumbled, repeated or cut words at the start of the speech; trim the recording to "
                f"at most {self.max_reference_seconds:g} s, or cut the reference text to what is said in the first "
                f"{len(wave) / rate:.1f} s",
                UserWarning,
                stacklevel=2,
            )
        wave = np.concatenate([wave, np.zeros(int(_APPENDED_SILENCE_SECONDS * rate), dtype=np.float32)])
        wave, level = normalize_loudness(wave, self.target_rms)
        return ReferenceAudio(wave=wave, rms=level, clipped=clipped)

    def __call__(
        self,
        audio: AudioInput | list[AudioInput],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Prepared reference waves, padded: `input_values` (B, samples), `attention_mask`, `reference_rms` (B,)."""
        batch = audio if isinstance(audio, list) else [audio]
        references = [self.prepare_reference(item, sampling_rate) for item in batch]
        features = BatchFeature({"input_values": [ref.wave for ref in references]})
        padded = self.pad(features, padding="longest", return_attention_mask=True, return_tensors=return_tensors)
        padded["reference_rms"] = [ref.rms for ref in references]
        return padded.convert_to_tensors(return_tensors) if return_tensors else padded


class F5Processor(ProcessorMixin):
    r"""Reference audio ([`F5FeatureExtractor`]) + text ([`F5Tokenizer`]) -> [`SynthesisInputs`].

    `processor(text, ref_audio=..., ref_text=...)` prepares a request. Called with texts only (as transformers'
    text-to-speech pipeline does) it returns them untouched, with itself, for the model's `generate`.
    """

    def __init__(self, feature_extractor: F5FeatureExtractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        text: str | list[str] | None = None,
        ref_audio: AudioInput | None = None,
        ref_text: str | None = None,
        *,
        sampling_rate: int | None = None,
        speed: float = 1.0,
        fix_duration: float | None = None,
        **kwargs,
    ) -> SynthesisInputs | BatchFeature:
        if ref_audio is None and ref_text is None:
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)) or not texts:
                raise InputError(
                    f"the text to synthesize must be a string or a non-empty list of strings, got {text!r:.60}"
                )
            return BatchFeature(
                {"text": [check_text(item, "the text to synthesize") for item in texts], "processor": self}
            )
        if isinstance(text, list):
            if len(text) != 1:
                raise InputError("prepare one text per call (the chunks of a long text are batched for you)")
            text = text[0]
        return self.prepare(
            text, ref_audio, ref_text, sampling_rate=sampling_rate, speed=speed, fix_duration=fix_duration
        )

    def _check_chunk_lengths(self, chunks: list[str], durations: list[int]) -> None:
        """Refuse a chunk longer than MAX_CHUNK_SECONDS (reference included) before it is sampled: one solve holds
        the whole chunk, so its memory grows with the square of its length."""
        extractor = self.feature_extractor
        limit = int(MAX_CHUNK_SECONDS * extractor.sampling_rate / extractor.hop_length)
        for index, (chunk, frames) in enumerate(zip(chunks, durations)):
            if frames > limit:
                seconds = frames * extractor.hop_length / extractor.sampling_rate
                raise InputError(
                    f"chunk {index + 1} of the text ({chunk[:40]!r}...) would last {seconds:.0f} s with the reference, "
                    f"more than the {MAX_CHUNK_SECONDS:g} s one chunk may last; add sentence punctuation to split it, "
                    "or raise the speed"
                )

    def prepare(
        self,
        text: str,
        ref_audio: AudioInput,
        ref_text: str,
        *,
        sampling_rate: int | None = None,
        speed: float = 1.0,
        fix_duration: float | None = None,
    ) -> SynthesisInputs:
        """Reference audio + reference text + text to speak -> one batch row per chunk, with upstream's numbers.
        `fix_duration` (seconds, reference included) replaces the estimated length of every chunk, as upstream's."""
        check_speech_text(text)
        check_speech_options(speed, fix_duration)
        if ref_audio is None:
            raise InputError("ref_audio is required: a recording (path, array or dict) of the voice to clone")
        ref_text = normalize_reference_text(ref_text)
        extractor = self.feature_extractor
        reference = extractor.prepare_reference(ref_audio, sampling_rate)
        chunks = chunk_text(
            text, max(max_chunk_bytes(ref_text, len(reference.wave) / extractor.sampling_rate, speed), 1)
        )
        ref_frames = len(reference.wave) // extractor.hop_length
        ref_text = prompt_text(ref_text)
        encoded = self.tokenizer.encode_batch([ref_text + chunk for chunk in chunks])
        if encoded.unknown_tokens:
            warnings.warn(
                f"characters not in the model's vocabulary, spoken as the filler token: "
                f"{' '.join(repr(t) for t in encoded.unknown_tokens)}",
                UserWarning,
                stacklevel=2,
            )
        text_lengths = (encoded.ids != -1).sum(dim=1).tolist()
        rate, hop = extractor.sampling_rate, extractor.hop_length
        if fix_duration is None:
            estimates = [estimate_duration(ref_frames, ref_text, chunk, speed) for chunk in chunks]
        else:
            ref_seconds = ref_frames * hop / rate
            if fix_duration <= ref_seconds:
                raise InputError(
                    f"fix_duration {fix_duration:g} s is not longer than the reference audio ({ref_seconds:.2f} s "
                    "after silence trimming), and it includes the reference: nothing would be left to speak; give "
                    f"more than {ref_seconds:.2f} s (the reference plus the length of the new speech)"
                )
            seconds = chunk_fix_durations(fix_duration, chunks, ref_frames, hop, rate)
            estimates = [int(chunk_seconds * rate / hop) for chunk_seconds in seconds]
        # Raised to at least the prompt (+1) and text length (+1), as `sample()` does, so the frames cut per chunk
        # are exactly those it generates.
        durations = [
            max(estimate, max(length, ref_frames + 1) + 1) for estimate, length in zip(estimates, text_lengths)
        ]
        self._check_chunk_lengths(chunks, durations)
        cond = torch.from_numpy(reference.wave)[None].expand(len(chunks), -1).contiguous()
        return SynthesisInputs(
            cond=cond,
            text=encoded.ids,
            duration=torch.tensor(durations, dtype=torch.long),
            ref_frames=ref_frames,
            chunks=chunks,
            reference=reference,
            unknown_tokens=encoded.unknown_tokens,
        )


def load_processor(source: str | os.PathLike, config) -> F5Processor:
    """The processor of a model folder / repo: its `processor_config.json` when saved, else one built from the
    folder's tokenizer and the model config's audio settings."""
    try:
        return F5Processor.from_pretrained(str(source))
    except (OSError, ValueError, TypeError):
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise InputError(
            f"{source} has no tokenizer (vocab.txt + tokenizer_config.json); convert the model with "
            "`hf-tts convert f5 ... --vocab VOCAB`, or pass processor=F5Processor(...)"
        ) from error
    extractor = F5FeatureExtractor(sampling_rate=config.sampling_rate, hop_length=config.hop_length)
    return F5Processor(extractor, tokenizer)


__all__ = [
    "F5FeatureExtractor",
    "F5Processor",
    "ReferenceAudio",
    "SynthesisInputs",
    "check_speech_options",
    "check_speech_text",
    "chunk_fix_durations",
    "chunk_text",
    "estimate_duration",
    "load_processor",
    "max_chunk_bytes",
    "normalize_reference_text",
    "prompt_text",
]
