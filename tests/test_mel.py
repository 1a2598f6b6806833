"""Log-mel spectrogram (`hf_tts.audio.LogMelSpectrogram`) against upstream F5-TTS' vocos-type MelSpec."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers.audio_utils import mel_filter_bank

from hf_tts.audio import LogMelSpectrogram
from tests.conftest import upstream_fixture

# The filterbank is built with torchaudio's float32 arithmetic, so the log-mel matches upstream to float rounding.
MEL_TOLERANCE = 1e-6


def test_log_mel_matches_upstream_vocos_mel():
    cases = load_file(upstream_fixture("f5_v1_tiny") / "cases.safetensors")
    mel = LogMelSpectrogram(n_fft=1024, hop_length=256, win_length=1024, n_mels=100, sampling_rate=24000)
    out = mel(cases["ref_wave"])
    assert out.shape == cases["ref_mel"].shape == (1, 100, 24000 // 256 + 1)
    assert (out - cases["ref_mel"]).abs().max().item() <= MEL_TOLERANCE


def test_log_mel_accepts_channel_axis_and_clamps():
    mel = LogMelSpectrogram()
    wave = torch.randn(2, 4096) * 0.1
    assert torch.equal(mel(wave), mel(wave.unsqueeze(1)))
    silent = mel(torch.zeros(1, 2048))
    assert torch.allclose(silent, torch.full_like(silent, torch.log(torch.tensor(1e-5)).item()))


def test_reset_buffers_recomputes_window_and_filterbank():
    mel = LogMelSpectrogram(n_fft=512, hop_length=128, win_length=512, n_mels=80, sampling_rate=16000)
    expected = {name: buffer.clone() for name, buffer in mel.named_buffers()}
    for buffer in mel.buffers():
        buffer.fill_(float("nan"))
    mel.reset_buffers()
    for name, buffer in mel.named_buffers():
        assert torch.equal(buffer, expected[name]), name
    assert mel.state_dict() == {}  # non-persistent: never saved


def test_log_mel_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        LogMelSpectrogram()(torch.zeros(2, 2, 2, 100))


def test_filterbank_equals_transformers_mel_filter_bank_to_float32_rounding():
    """Same HTK filters as transformers' (float64) mel_filter_bank; only float32 rounding differs."""
    mel = LogMelSpectrogram(n_fft=1024, n_mels=100, sampling_rate=24000)
    reference = mel_filter_bank(513, 100, 0.0, 12000.0, 24000, norm=None, mel_scale="htk")
    assert mel.mel_filters.shape == reference.shape
    assert (mel.mel_filters.double() - torch.from_numpy(reference)).abs().max().item() < 1e-5
