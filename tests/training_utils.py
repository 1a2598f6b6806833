"""Builders for the training tests: a tiny char vocab, tiny F5/E2 configs at 8 kHz, and a synthetic speech-like
dataset of chirps and tones with texts (as arrays, as WAV files in upstream's metadata.csv layout)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import soundfile
from datasets import Dataset

from hf_tts import F5TTSConfig, F5TTSModel
from hf_tts.tokenization_f5 import F5Tokenizer

VOCAB = [" ", *string.ascii_lowercase, ".", ",", "'"]
SAMPLING_RATE = 8000
# Small enough for CPU steps in well under a second; hop 64 at 8 kHz = 125 mel frames per second.
MEL = dict(n_fft=256, win_length=256, hop_length=64, sampling_rate=SAMPLING_RATE, mel_dim=24)
TINY = dict(dim=48, depth=2, heads=2, dim_head=24, ff_mult=2, dropout=0.0, text_num_embeds=len(VOCAB))


def write_vocab(folder: Path, vocab: list[str] = VOCAB) -> Path:
    path = Path(folder) / "vocab.txt"
    path.write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return path


def tiny_tokenizer(folder: Path) -> F5Tokenizer:
    return F5Tokenizer(str(write_vocab(folder)), tokenizer_type="char")


def tiny_f5_config(**overrides) -> F5TTSConfig:
    return F5TTSConfig(**{**TINY, **MEL, "text_dim": 24, "conv_layers": 1, "tokenizer_type": "char", **overrides})


def make_model_folder(folder: Path, model_class=F5TTSModel, config=None) -> Path:
    """A tiny freshly initialised model with its char tokenizer, saved as a package folder."""
    import torch

    torch.manual_seed(0)
    model = model_class(config or tiny_f5_config())
    model.save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


def synthetic_clips(count: int = 12, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Alternating linear chirps and steady tones of 0.35 to 0.9 s, each with a text naming what it is."""
    rng = np.random.default_rng(seed)
    clips = []
    for index in range(count):
        seconds = 0.35 + 0.55 * index / max(count - 1, 1)
        t = np.arange(int(SAMPLING_RATE * seconds)) / SAMPLING_RATE
        if index % 2:
            f0 = rng.uniform(200, 900)
            wave, text = np.sin(2 * np.pi * f0 * t), f"a tone at {string.ascii_lowercase[index % 26]}."
        else:
            f0, f1 = rng.uniform(100, 300), rng.uniform(1200, 3000)
            wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
            text = f"a chirp going up, {string.ascii_lowercase[index % 26]}."
        clips.append(((0.5 * wave).astype(np.float32), text))
    return clips


def synthetic_dataset(count: int = 12) -> Dataset:
    clips = synthetic_clips(count)
    return Dataset.from_dict(
        {
            "audio": [{"array": wave, "sampling_rate": SAMPLING_RATE} for wave, _ in clips],
            "text": [text for _, text in clips],
        }
    )


def write_metadata_folder(folder: Path, count: int = 6, sampling_rate: int = 16000) -> Path:
    """Upstream's custom-dataset layout: wavs/*.wav (at `sampling_rate`) + metadata.csv `audio_file|text`."""
    (folder / "wavs").mkdir(parents=True)
    lines = ["audio_file|text"]
    for index, (wave, text) in enumerate(synthetic_clips(count)):
        resampled = np.interp(
            np.arange(int(len(wave) * sampling_rate / SAMPLING_RATE)) * SAMPLING_RATE / sampling_rate,
            np.arange(len(wave)),
            wave,
        )
        soundfile.write(folder / "wavs" / f"clip_{index:03d}.wav", resampled, sampling_rate)
        lines.append(f"wavs/clip_{index:03d}.wav|{text}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
