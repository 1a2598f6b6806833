"""Audio features shared by the models: upstream F5-TTS / Vocos "vocos-type" log-mel spectrogram.

Equal to `torchaudio.transforms.MelSpectrogram(power=1, center=True, pad_mode="reflect", norm=None,
mel_scale="htk")` followed by `log(clamp(., min))`, computed with `torch.stft` and an
HTK filterbank (`transformers.audio_utils` mel scale, torchaudio's float32 arithmetic; no torchaudio dependency).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.audio_utils import hertz_to_mel

from hf_tts.errors import InputError
from hf_tts.limits import MAX_AUDIO_DECODED_SAMPLES, MAX_AUDIO_SECONDS, MAX_SAMPLING_RATE, check_number


class LogMelSpectrogram(nn.Module):
    """Natural-log magnitude mel spectrogram: wave (B, samples) -> (B, n_mels, samples // hop_length + 1).

    `clamp_min` is 1e-5 for F5-TTS (upstream `MelSpec`) and 1e-7 for Vocos' own feature extractor.
    The Hann window and the filterbank are non-persistent buffers (never saved): a model's `_init_weights` calls
    `reset_buffers()` so they are right after `from_pretrained`, which leaves such buffers uninitialised.
    """

    def __init__(
        self,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        n_mels: int = 100,
        sampling_rate: int = 24000,
        clamp_min: float = 1e-5,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.sampling_rate = sampling_rate
        self.clamp_min = clamp_min
        self.register_buffer("window", torch.empty(win_length), persistent=False)
        self.register_buffer("mel_filters", torch.empty(n_fft // 2 + 1, n_mels), persistent=False)
        self.reset_buffers()

    def _window(self) -> torch.Tensor:
        return torch.hann_window(self.win_length, periodic=True, dtype=torch.float32)

    def _mel_filters(self) -> torch.Tensor:
        """HTK triangles in Hz space, (n_freqs, n_mels), computed in float32 the way torchaudio's `melscale_fbanks`
        (which upstream's MelSpectrogram uses) does.

        `transformers.audio_utils.mel_filter_bank` builds the same filters in float64; its float32-rounded result is
        up to 7e-6 away from torchaudio's float32 arithmetic, which shows as 1e-5 in the log-mel. Doing the float32
        arithmetic here makes the log-mel bit-identical to upstream (tests compare both filterbanks)."""
        n_freqs = self.n_fft // 2 + 1
        fft_freqs = torch.linspace(0, self.sampling_rate // 2, n_freqs, dtype=torch.float32)
        mel_max = float(hertz_to_mel(self.sampling_rate / 2, mel_scale="htk"))
        mel_points = torch.linspace(0.0, mel_max, self.n_mels + 2, dtype=torch.float32)
        filter_freqs = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)  # htk mel -> Hz, in float32
        widths = filter_freqs[1:] - filter_freqs[:-1]
        slopes = filter_freqs.unsqueeze(0) - fft_freqs.unsqueeze(1)
        down = -slopes[:, :-2] / widths[:-1]
        up = slopes[:, 2:] / widths[1:]
        return torch.clamp(torch.minimum(down, up), min=0.0)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the window and the filterbank in place (device kept; meta tensors are left alone)."""
        for name, value in (("window", self._window()), ("mel_filters", self._mel_filters())):
            buffer = getattr(self, name)
            if buffer.device.type != "meta":
                buffer.copy_(value)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim == 3:  # (B, 1, samples), as upstream accepts
            wave = wave.squeeze(1)
        if wave.ndim != 2:
            raise ValueError(f"expected a waveform of shape (batch, samples), got shape {tuple(wave.shape)}")
        spec = torch.stft(
            wave.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        # (B, freq, frames) -> (B, frames, freq) @ (freq, mels), the order torchaudio's MelScale uses
        mel = torch.matmul(spec.transpose(-1, -2), self.mel_filters.float()).transpose(-1, -2)
        return mel.clamp(min=self.clamp_min).log()


__all__ = ["LogMelSpectrogram"]


# --- Audio input for synthesis: loading, mono, resampling, loudness, silence (pydub semantics, in milliseconds) ---

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor | Mapping
MIN_DBFS = -200.0  # the level reported for digital silence (pydub reports -inf)


def _as_float_array(values: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    try:
        wave = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"{source}: expected an array of audio samples, got {type(values).__name__} ({error})"
        ) from None
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise InputError(
            f"{source}: expected a non-empty 1-D (samples) or 2-D (channels, samples) array, got shape {wave.shape}"
        )
    if not np.isfinite(wave).all():
        raise InputError(f"{source}: the audio contains NaN or infinite samples")
    return wave


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a regular file this process can open, or an InputError saying what it is instead: missing, a folder,
    a fifo / device / socket (reading a fifo would block), or not readable. `what` names it ("reference audio
    file")."""
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        broken_link = os.path.islink(path)
        raise InputError(f"{what} {path} {'is a broken symbolic link' if broken_link else 'does not exist'}") from None
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read: {_reason(error)}") from None
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{what} {path} is not a regular file (a fifo, device or socket); give a file")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read: {_reason(error)}") from None
    return path


def _reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied (check the permissions of the file and its folders)"
    return error.strerror or str(error)


def _check_audio_length(samples: int, rate: float, source: str, max_seconds: float) -> None:
    """Refuse audio longer than `max_seconds`: its length after resampling to any rate, from its sample count and
    rate alone, before anything is decoded or resampled (a header claiming 1 Hz would resample to 1e9 samples)."""
    seconds = samples / rate
    if seconds > max_seconds:
        raise InputError(
            f"{source} lasts {seconds:.6g} s ({samples} samples at {rate:g} Hz); at most {max_seconds:g} s of "
            "audio is read: give a shorter recording"
        )


def check_audio_file(path: str | os.PathLike, source: str = "audio", *, max_seconds: float = MAX_AUDIO_SECONDS):
    """The `soundfile.info` of an audio file, after checking from its header alone that it can be decoded within the
    caps: a positive sampling rate, at most `max_seconds` long, at most `MAX_AUDIO_DECODED_SAMPLES` samples over
    all channels. Raises InputError naming `source` and the file."""
    import soundfile

    path = check_input_file(path, f"{source} file")
    described = f"{source} file {path}"
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise InputError(f"{described} is not readable audio ({error}); use WAV, FLAC or OGG") from error
    if not 0 < info.samplerate <= MAX_SAMPLING_RATE or info.channels <= 0:
        raise InputError(
            f"{described} is damaged or unsupported: its header gives {info.samplerate} Hz (at most "
            f"{MAX_SAMPLING_RATE} is read) and {info.channels} channels"
        )
    _check_audio_length(info.frames, info.samplerate, described, max_seconds)
    if info.frames * info.channels > MAX_AUDIO_DECODED_SAMPLES:
        raise InputError(
            f"{described} holds {info.frames} frames x {info.channels} channels, more than the "
            f"{MAX_AUDIO_DECODED_SAMPLES} samples decoded at most; give a shorter, mono or lower-rate recording"
        )
    return info


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a 2-D array (the shorter axis is the channel axis) into a 1-D float32 wave."""
    if wave.ndim == 1:
        return wave
    channel_axis = 0 if wave.shape[0] <= wave.shape[1] else 1
    return wave.mean(axis=channel_axis, dtype=np.float32)


def resample(wave: np.ndarray, orig_sampling_rate: float, target_sampling_rate: float) -> np.ndarray:
    """Resample a 1-D wave with soxr (high quality); a no-op when the rates are equal."""
    if orig_sampling_rate == target_sampling_rate:
        return wave
    import soxr

    return soxr.resample(wave, orig_sampling_rate, target_sampling_rate, quality="HQ").astype(np.float32)


def load_audio(
    audio: AudioInput,
    sampling_rate: int,
    *,
    input_sampling_rate: float | None = None,
    source: str = "audio",
    max_seconds: float = MAX_AUDIO_SECONDS,
) -> np.ndarray:
    """A mono float32 wave at `sampling_rate` from a file path, an array / tensor (at `input_sampling_rate`, default
    `sampling_rate`) or a `{"array", "sampling_rate"}` dict (the `datasets` Audio format). Stereo is averaged;
    other rates are resampled with soxr. Audio longer than `max_seconds` is refused before it is decoded or
    resampled. Bad input raises an InputError naming `source`."""
    if isinstance(audio, Mapping):
        if "array" not in audio or "sampling_rate" not in audio:
            raise InputError(f"{source}: a dict must have 'array' and 'sampling_rate' keys, got {sorted(audio)}")
        rate = _sampling_rate(audio["sampling_rate"], source)
        wave = _as_float_array(audio["array"], source)
    elif isinstance(audio, (str, os.PathLike)):
        import soundfile

        path = Path(audio)
        check_audio_file(path, source, max_seconds=max_seconds)
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
            raise InputError(f"{source} file {path} is not readable audio ({error}); use WAV, FLAC or OGG") from error
        except OSError as error:
            raise InputError(f"{source} file {path} cannot be read: {_reason(error)}") from error
        # soundfile returns (frames, channels); the channel axis is averaged whatever its size.
        wave = _as_float_array(data.mean(axis=1, dtype=np.float32), f"{source} file {path}")
    elif isinstance(audio, (np.ndarray, torch.Tensor)):
        rate = _sampling_rate(sampling_rate if input_sampling_rate is None else input_sampling_rate, source)
        wave = _as_float_array(audio, source)
    else:
        raise InputError(
            f"{source}: expected a file path, a numpy array / torch tensor, or a dict with 'array' and "
            f"'sampling_rate', got {type(audio).__name__}"
        )
    wave = to_mono(wave)
    _check_audio_length(len(wave), rate, source, max_seconds)
    return resample(wave, rate, sampling_rate)


def _sampling_rate(value: object, source: str) -> float:
    return check_number(f"{source}: the sampling rate", value, 0, MAX_SAMPLING_RATE, low_inclusive=False)


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0


def normalize_loudness(wave: np.ndarray, target_rms: float = 0.1) -> tuple[np.ndarray, float]:
    """Upstream's reference loudness step: scale a wave quieter than `target_rms` up to it (louder ones are left
    alone). Returns the wave and its original RMS, which the generated audio is scaled back to."""
    level = rms(wave)
    if 0.0 < level < target_rms:
        return (wave * (target_rms / level)).astype(np.float32), level
    return wave, level


class _WindowLevels:
    """dBFS of any [start, start + length) millisecond window of a wave, in O(1) from cumulative energy."""

    def __init__(self, wave: np.ndarray, sampling_rate: int):
        self.samples_per_ms = sampling_rate / 1000.0
        self.length_ms = int(len(wave) / self.samples_per_ms)
        self.energy = np.concatenate(([0.0], np.cumsum(np.square(wave, dtype=np.float64))))

    def sample(self, ms: int) -> int:
        return min(int(round(ms * self.samples_per_ms)), len(self.energy) - 1)

    def dbfs(self, start_ms: int, length_ms: int) -> float:
        start, end = self.sample(start_ms), self.sample(min(start_ms + length_ms, self.length_ms))
        if end <= start:
            return MIN_DBFS
        mean_square = (self.energy[end] - self.energy[start]) / (end - start)
        return 10.0 * np.log10(mean_square) if mean_square > 0 else MIN_DBFS


def leading_silence_ms(wave: np.ndarray, sampling_rate: int, threshold_db: float, chunk_ms: int = 10) -> int:
    """pydub's `detect_leading_silence`: milliseconds before the first `chunk_ms` window at or above `threshold_db`."""
    levels = _WindowLevels(wave, sampling_rate)
    position = 0
    while position < levels.length_ms and levels.dbfs(position, chunk_ms) < threshold_db:
        position += chunk_ms
    return min(position, levels.length_ms)


def trim_silence_edges(wave: np.ndarray, sampling_rate: int, threshold_db: float = -42.0) -> np.ndarray:
    """Cut leading and trailing silence (pydub `detect_leading_silence` from both ends, as upstream does)."""
    samples_per_ms = sampling_rate / 1000.0
    start = int(round(leading_silence_ms(wave, sampling_rate, threshold_db) * samples_per_ms))
    wave = wave[start:]
    end_trim = int(round(leading_silence_ms(wave[::-1], sampling_rate, threshold_db) * samples_per_ms))
    return wave[: len(wave) - end_trim] if end_trim > 0 else wave


def nonsilent_ranges_ms(
    wave: np.ndarray, sampling_rate: int, min_silence_ms: int, threshold_db: float, seek_ms: int = 10
) -> list[tuple[int, int]]:
    """pydub's `detect_nonsilent`: [start, end) millisecond ranges between silences of at least `min_silence_ms`
    whose window level is at or below `threshold_db`."""
    levels = _WindowLevels(wave, sampling_rate)
    total = levels.length_ms
    if total < min_silence_ms:
        return [(0, total)]
    last_start = total - min_silence_ms
    starts = list(range(0, last_start + 1, seek_ms))
    if last_start % seek_ms:
        starts.append(last_start)
    silent_starts = [s for s in starts if levels.dbfs(s, min_silence_ms) <= threshold_db]
    if not silent_starts:
        return [(0, total)]
    silences, range_start, previous = [], silent_starts[0], silent_starts[0]
    for start in silent_starts[1:]:
        if start != previous + seek_ms and start > previous + min_silence_ms:
            silences.append((range_start, previous + min_silence_ms))
            range_start = start
        previous = start
    silences.append((range_start, previous + min_silence_ms))
    if silences[0] == (0, total):
        return []
    ranges, previous_end = [], 0
    for start, end in silences:
        ranges.append((previous_end, start))
        previous_end = end
    if previous_end != total:
        ranges.append((previous_end, total))
    return [r for r in ranges if r != (0, 0)]


def split_on_silence(
    wave: np.ndarray,
    sampling_rate: int,
    min_silence_ms: int,
    threshold_db: float,
    keep_silence_ms: int,
    seek_ms: int = 10,
) -> list[np.ndarray]:
    """pydub's `split_on_silence`: the non-silent pieces, each with up to `keep_silence_ms` of its surrounding
    silence (shared silence is split half and half between neighbours)."""
    ranges = [
        [start - keep_silence_ms, end + keep_silence_ms]
        for start, end in nonsilent_ranges_ms(wave, sampling_rate, min_silence_ms, threshold_db, seek_ms)
    ]
    for current, following in zip(ranges, ranges[1:]):
        if following[0] < current[1]:
            current[1] = following[0] = (current[1] + following[0]) // 2
    samples_per_ms = sampling_rate / 1000.0
    return [
        wave[int(round(max(start, 0) * samples_per_ms)) : int(round(end * samples_per_ms))] for start, end in ranges
    ]


def remove_long_silences(
    wave: np.ndarray,
    sampling_rate: int,
    min_silence_ms: int = 1000,
    threshold_db: float = -50.0,
    keep_silence_ms: int = 500,
) -> np.ndarray:
    """Upstream's `remove_silence_for_generated_wav`: silences of `min_silence_ms` or more (at or below
    `threshold_db`) shrink to at most `keep_silence_ms` on each side of the sound around them."""
    pieces = split_on_silence(wave, sampling_rate, min_silence_ms, threshold_db, keep_silence_ms)
    return np.concatenate(pieces) if pieces else wave[:0]


__all__ += [
    "check_audio_file",
    "check_input_file",
    "leading_silence_ms",
    "load_audio",
    "nonsilent_ranges_ms",
    "normalize_loudness",
    "remove_long_silences",
    "resample",
    "rms",
    "split_on_silence",
    "to_mono",
    "trim_silence_edges",
]
