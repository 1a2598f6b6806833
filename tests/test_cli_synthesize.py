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


def run_cli(args: list[str]) -> int:
    """`main(args)`, with argparse's own refusals (SystemExit) counted as their exit code."""
    try:
        return main(args)
    except SystemExit as exit:
        return exit.code


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
        ({"--text-file": "missing.txt"}, "text file missing.txt does not exist"),
        ({"--speed": "0"}, r"argument --speed: 0 is outside \[0.1, 10.0\]"),
        ({"--fix-duration": "-1"}, r"argument --fix-duration: -1 is outside \(0.0, 60.0\]"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, reference_file, capsys, change, message):
    options = {"--text": "Hello.", "--ref-audio": str(reference_file), "--ref-text": REF_TEXT, "--out": "speech.wav"}
    options.update(change)
    if "--text-file" in options:
        del options["--text"]
    options["--out"] = str(tmp_path / options["--out"])
    args = ["synthesize", str(f5_dir()), "--nfe-step", "2"] + [item for pair in options.items() for item in pair]
    assert run_cli(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after any model-loading progress output
    assert error.startswith("hf-tts synthesize: error:")
    assert re.search(message, error)
    assert list(tmp_path.iterdir()) == []


def _write_short(path):
    tone = 0.1 * np.sin(np.arange(7200) * 2 * np.pi * 220 / 24000)  # 0.3 s of sound in 2 s
    soundfile.write(path, np.concatenate([tone, np.zeros(40800)]), 24000)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: soundfile.write(path, np.zeros(48000, dtype=np.float32), 24000), "reference audio is silent"),
        (_write_short, "reference audio is too short: 0.30 s"),
        (lambda path: path.write_bytes(b"RIFF not really a wav"), "is not readable audio"),
    ],
)
def test_bad_reference_files_are_refused(tmp_path, capsys, write, message):
    reference = tmp_path / "reference.wav"
    write(reference)
    out, plot = tmp_path / "speech.wav", tmp_path / "mel.png"
    args = ["synthesize", str(f5_dir()), "--text", "Hello.", "--ref-audio", str(reference), "--ref-text", REF_TEXT]
    assert main([*args, "--out", str(out), "--plot", str(plot)]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.wav"]


def test_fix_duration_and_one_warning_for_characters_outside_the_vocab(tmp_path, reference_file, capsys):
    out = tmp_path / "speech.wav"
    args = ["synthesize", str(f5_dir()), "--text", "Snow ☃ and ✈ plane ☃.", "--ref-audio", str(reference_file)]
    args += ["--ref-text", REF_TEXT, "--out", str(out), "--nfe-step", "2", "--fix-duration", "2.0"]
    args += ["--remove-silence"]
    assert main(args) == 0
    # the CLI prints Python warnings as one line each
    messages = [line for line in capsys.readouterr().err.splitlines() if "vocabulary" in line]
    assert len(messages) == 1 and "'☃'" in messages[0] and "'✈'" in messages[0]
    assert messages[0].startswith("hf-tts synthesize: warning: characters not in the model's vocabulary")
    from transformers import AutoModel

    ref_frames = AutoModel.from_pretrained(f5_dir()).get_processor()("Hi.", str(reference_file), REF_TEXT).ref_frames
    # one chunk of int(2.0 * 24000 / 256) frames, reference included; --remove-silence only ever shortens it
    assert 0 < len(soundfile.read(out)[0]) <= (int(2.0 * 24000 / 256) - ref_frames - 1) * 256


def test_synthesize_in_bfloat16_on_cpu(tmp_path, reference_file):
    out = tmp_path / "speech.wav"
    args = ["synthesize", str(f5_dir()), "--text", "Hello there.", "--ref-audio", str(reference_file)]
    assert main([*args, "--ref-text", REF_TEXT, "--out", str(out), "--nfe-step", "2", "--dtype", "bfloat16"]) == 0
    audio, rate = soundfile.read(out)
    assert rate == 24000 and len(audio) > 0 and np.isfinite(audio).all()
