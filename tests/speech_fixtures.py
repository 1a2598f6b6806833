"""Converted tiny F5-TTS (f5_v1_tiny) + Vocos (vocos_tiny) folders shared by the speech tests (built once per test
session, removed when it ends)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from conftest import upstream_fixture
from safetensors.torch import load_file


@functools.cache
def _converted_dir() -> Path:
    """One folder per test process, removed at its exit (`make test` used to leave 3.5 MB in /tmp per run). The
    helpers are plain functions that many test files call, so the folder is tied to the process, not to a fixture;
    forked workers (which leave through os._exit) and other processes never remove it."""
    folder = Path(tempfile.mkdtemp(prefix="hf_tts_speech_"))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return folder


def vocos_dir() -> Path:
    from hf_tts.convert.vocos import convert_vocos_checkpoint

    out = _converted_dir() / "vocos"
    if not out.exists():
        convert_vocos_checkpoint(upstream_fixture("vocos_tiny"), out)
    return out


def f5_dir(with_vocoder: bool = True) -> Path:
    """f5_v1_tiny converted with `convert_f5_checkpoint` (with the converted vocos_tiny attached, or without)."""
    from hf_tts.convert.f5 import convert_f5_checkpoint

    source = upstream_fixture("f5_v1_tiny")
    out = _converted_dir() / ("f5_speech" if with_vocoder else "f5_mel_only")
    if not out.exists():
        convert_f5_checkpoint(
            source / "model_ema.safetensors",
            source / "arch.json",
            upstream_fixture("f5_vocab.txt"),
            out,
            vocoder=vocos_dir() if with_vocoder else None,
        )
    return out


def reference_wave() -> np.ndarray:
    """The fixture's 1 s reference at 24 kHz (RMS about 0.1)."""
    return load_file(upstream_fixture("f5_v1_tiny") / "cases.safetensors")["ref_wave"][0].numpy()
