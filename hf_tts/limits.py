"""Caps on what one speech or motion request may ask for (README, "Safety").

Every numeric option of `hf-tts synthesize` / `hf-tts animate`, the pipelines, `model.synthesize` and the samplers is
checked against these before any file is read or model loaded: a value that is not a finite number in range is an
InputError (exit 2). The caps keep tiny inputs (a `--speed 1e-6`, a WAV header claiming 1 Hz, `--num-frames 1e12`)
from asking for unbounded time or memory; each is far above what released models are used with.

This module imports nothing heavy (no torch), so the CLI parsers can use the caps while `hf-tts --help` stays fast.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from hf_tts.errors import InputError

# --- speech (F5-TTS / E2-TTS) ---
# Speaking speed: upstream's default is 1.0; 0.1 is ten times slower, 10 ten times faster.
MIN_SPEED = 0.1
MAX_SPEED = 10.0
# Longest chunk (reference included) one ODE solve may generate, in seconds: `fix_duration` and the estimated length
# of every chunk (upstream sizes chunks to about 22 s; a long sentence without punctuation can exceed it).
MAX_CHUNK_SECONDS = 60.0
# Longest text one request may speak, in characters (about an hour of speech; split longer texts into several calls).
MAX_TEXT_CHARS = 50_000
# ODE steps (`nfe_step`; upstream's default 32) and DDIM steps of the motion sampler.
MAX_SAMPLING_STEPS = 1000
# Classifier-free guidance strength (upstream's default 2.0; 0 disables guidance).
MAX_CFG_STRENGTH = 100.0
# Sway sampling coefficient range in which the ODE time grid stays increasing (the F5-TTS paper: s in
# [-1, 2 / (pi - 2)]); upstream uses -1.
MIN_SWAY = -1.0
MAX_SWAY = 2.0 / (math.pi - 2.0)
# Random seeds: any value torch's generators take without wrapping (0 .. 2**64 - 1).
MAX_SEED = 2**64 - 1
# Reference audio: longest recording read (its length after resampling, computed from the file's header before
# anything is decoded; references over 12 s are clipped to 12 s anyway).
MAX_REFERENCE_AUDIO_SECONDS = 300.0

# --- audio in general ---
# Longest audio any loader of the package reads (motion audio, and the default of `hf_tts.audio.load_audio`), after
# resampling, computed before decoding or resampling.
MAX_AUDIO_SECONDS = 600.0
# Highest sampling rate accepted from a file header or a caller (Hz): far above any audio format's (768 kHz), and
# keeps soxr away from rate ratios it stalls on (about 1e10 and more).
MAX_SAMPLING_RATE = 10_000_000
# Most samples (frames x channels) decoded from one audio file: 2**26 float32 values, 256 MiB (10 minutes of 48 kHz
# stereo, 57.6 million samples, fit).
MAX_AUDIO_DECODED_SAMPLES = 1 << 26

# --- motion (CFG motion model) ---
# Longest motion one request may generate, in frames (10 minutes at 30 fps, the length of MAX_AUDIO_SECONDS).
MAX_MOTION_FRAMES = 18_000
# Classifier-free guidance scale of the motion sampler (audio2photoreal uses 2 to 4).
MAX_GUIDANCE_SCALE = 100.0


def check_number(
    name: str,
    value: Any,
    low: float | None,
    high: float | None,
    *,
    integer: bool = False,
    low_inclusive: bool = True,
) -> float | int:
    """`value` as a finite number (an int when `integer`) in [low, high], or an InputError naming `name`.

    Booleans are refused (True is not a seed or a speed); numpy scalars are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a whole number" if integer else "a number"
        raise InputError(f"{name} must be {kind}, got {type(value).__name__} {_show(value)}")
    if integer:
        try:
            value = operator.index(value)
        except TypeError:
            raise InputError(f"{name} must be a whole number, got {_show(value)}") from None
    elif not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {_show(value)}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        opening = "[" if low_inclusive else "("
        raise InputError(f"{name} must be in {opening}{_bound(low)}, {_bound(high)}], got {_show(value)}")
    return value


def _bound(value: float | None) -> str:
    if value is None:
        return "inf"
    if isinstance(value, int):
        return str(value)
    return f"{value:g}" if value.is_integer() else f"{value:.4g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "MAX_AUDIO_DECODED_SAMPLES",
    "MAX_AUDIO_SECONDS",
    "MAX_CFG_STRENGTH",
    "MAX_CHUNK_SECONDS",
    "MAX_GUIDANCE_SCALE",
    "MAX_MOTION_FRAMES",
    "MAX_REFERENCE_AUDIO_SECONDS",
    "MAX_SAMPLING_RATE",
    "MAX_SAMPLING_STEPS",
    "MAX_SEED",
    "MAX_SPEED",
    "MAX_SWAY",
    "MAX_TEXT_CHARS",
    "MIN_SPEED",
    "MIN_SWAY",
    "check_number",
]
