"""`hf-tts synthesize`: a WAV of the expected length and rate from the converted fixtures, the --plot PNG, and
bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile
from speech_fixtures import f5_dir, reference_wave

from hf_tts.cli import main

REF_TEXT = "Some reference words"


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "reference_48k_stereo.wav"
    wave = np.repeat(reference_wave(), 2)  # the 24 kHz fixture at 48 kHz, stereo: resampled and downmixed
    soundfile.write(path, np.stack([wave, wave], axis=1), 48000)
    return path


def test_synthesize_writes_a_wav_and_a_plot(tmp_path, reference_file):
    out, plot, text_file = tmp_path / "speech.wav", tmp_path / "mel.png", tmp_path / "text.txt"
    text_file.write_text("Hello there, this is a test.", encoding="utf-8")
    args = ["synthesize", str(f5_dir()), "--text-file", str(text_file), "--ref-audio", str(reference_file)]
    args += ["--ref-text", REF_TEXT, "--out", str(out), "--nfe-step", "2", "--seed", "0", "--plot", str(plot)]
    assert main(args) == 0
    audio, rate = soundfile.read(out)
    assert rate == 24000 and audio.ndim == 1
    from transformers import AutoModel

    processor = AutoModel.from_pretrained(f5_dir()).get_processor()
    inputs = processor("Hello there, this is a test.", str(reference_file), REF_TEXT)
    assert len(audio) == (int(inputs.duration[0]) - inputs.ref_frames - 1) * 256
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mel.png", "speech.wav", "text.txt"]  # no temp files left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--text": ""}, "text to synthesize is empty"),
        ({"--ref-audio": "missing.wav"}, "does not exist"),
        ({"--ref-text": " "}, "reference text \\(ref_text\\) is empty"),
        ({"--out": "speech.mp3"}, "must be a .wav"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, reference_file, capsys, change, message):
    options = {"--text": "Hello.", "--ref-audio": str(reference_file), "--ref-text": REF_TEXT, "--out": "speech.wav"}
    options.update(change)
    options["--out"] = str(tmp_path / options["--out"])
    args = ["synthesize", str(f5_dir()), "--nfe-step", "2"] + [item for pair in options.items() for item in pair]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after any model-loading progress output
    assert error.startswith("hf-tts synthesize: error:")
    assert re.search(message, error)
    assert list(tmp_path.iterdir()) == []


def test_silent_reference_is_refused(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(48000, dtype=np.float32), 24000)
    out = tmp_path / "speech.wav"
    args = ["synthesize", str(f5_dir()), "--text", "Hello.", "--ref-audio", str(silent), "--ref-text", REF_TEXT]
    assert main([*args, "--out", str(out)]) == 2
    assert "silent" in capsys.readouterr().err
    assert not out.exists()
