"""Speech and motion under hostile or broken input (issue 12): `--out` placements that would destroy an input or a
special file, numeric options outside their caps, invalid Unicode, resource bombs in tiny headers (WAV rate, .npy
shape), NaN weights and NaN/empty features, and references that are folders, fifos or unreadable. Each case builds
the exact input the issue describes and checks for exit 2 with one stderr line (or an InputError), nothing written
and inputs unchanged."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file
from speech_fixtures import f5_dir, reference_wave
from transformers import AutoModel, pipeline

from hf_tts import CFGMotionConfig, CFGMotionModel
from hf_tts.audio import check_audio_file, load_audio
from hf_tts.errors import InputError
from hf_tts.limits import MAX_CHUNK_SECONDS, MAX_SEED, MAX_TEXT_CHARS
from hf_tts.processing import F5FeatureExtractor
from hf_tts.tokenization_f5 import F5Tokenizer
from tests.cli_utils import cli, one_error_line, tree_digest
from tests.conftest import upstream_fixture

REF_TEXT = "Some reference words"
TINY_MOTION = dict(nfeats=6, latent_dim=16, heads=2, layers=1, ff_size=32, cond_feature_dim=8, cond_encoder_layers=1)


@pytest.fixture(scope="module", autouse=True)
def converted_model() -> Path:
    """Build the converted speech fixture before any test captures stderr (conversion shows progress bars)."""
    return f5_dir()


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "reference.wav"
    soundfile.write(path, reference_wave(), 24000)
    return path


@pytest.fixture(scope="module")
def motion_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("motion") / "model"
    config = CFGMotionConfig(architecture="face", num_inference_steps=2, max_cond_len=64, **TINY_MOTION)
    CFGMotionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def features_file(tmp_path) -> Path:
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    return path


def synthesize(reference: Path, out: Path | str, *extra) -> int:
    return cli("synthesize", f5_dir(), "--text", "Hello.", "--ref-audio", reference, "--ref-text", REF_TEXT,
               "--out", out, "--nfe-step", "2", *extra)  # fmt: skip


def one_hertz_wav(path: Path) -> Path:
    """A valid 2 s WAV whose header claims 1 Hz: 48,000 frames that would resample to 1.15e9 samples at 24 kHz."""
    soundfile.write(path, 0.1 * np.sin(np.arange(48000) / 10.0).astype(np.float32), 24000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:32] = struct.pack("<II", 1, 2)  # sample rate 1 Hz, byte rate 2
    path.write_bytes(bytes(data))
    return path


# --- output placements ------------------------------------------------------------------------------------------


def test_synthesize_out_equal_to_the_reference_keeps_it(tmp_path, capsys):
    reference = tmp_path / "reference.wav"
    soundfile.write(reference, reference_wave(), 24000)
    before = tree_digest(reference)
    assert synthesize(reference, reference, "--overwrite") == 2
    assert "is the input" in one_error_line(capsys)
    assert tree_digest(reference) == before


def test_synthesize_out_inside_the_model_folder_is_refused(tmp_path, reference_file, capsys):
    model = tmp_path / "model"
    shutil.copytree(f5_dir(), model)
    before = tree_digest(model)
    code = cli("synthesize", model, "--text", "Hello.", "--ref-audio", reference_file, "--ref-text", REF_TEXT,
               "--out", model / "sub" / "speech.wav")  # fmt: skip
    assert code == 2
    assert "lies inside the input" in one_error_line(capsys)
    assert tree_digest(model) == before and not (model / "sub").exists()


def test_synthesize_plot_onto_the_text_file_is_refused(tmp_path, reference_file, capsys):
    text_file = tmp_path / "text.png"
    text_file.write_text("Hello there.", encoding="utf-8")
    code = cli("synthesize", f5_dir(), "--text-file", text_file, "--ref-audio", reference_file, "--ref-text", REF_TEXT,
               "--out", tmp_path / "speech.wav", "--plot", text_file, "--overwrite")  # fmt: skip
    assert code == 2
    assert "is the input" in one_error_line(capsys)
    assert text_file.read_text(encoding="utf-8") == "Hello there."
    assert not (tmp_path / "speech.wav").exists()


def test_synthesize_refuses_a_fifo_and_a_symlink_as_out(tmp_path, reference_file, capsys):
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    assert synthesize(reference_file, fifo, "--overwrite") == 2
    assert "not a regular file" in one_error_line(capsys)
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"keep me")
    link = tmp_path / "link.wav"
    link.symlink_to(kept)
    assert synthesize(reference_file, link, "--overwrite") == 2
    assert "symbolic link" in one_error_line(capsys)
    assert kept.read_bytes() == b"keep me" and link.is_symlink()


def test_synthesize_existing_out_needs_overwrite(tmp_path, reference_file, capsys):
    out = tmp_path / "speech.wav"
    out.write_bytes(b"previous")
    assert synthesize(reference_file, out) == 2
    assert "already exists" in one_error_line(capsys)
    assert out.read_bytes() == b"previous"
    assert synthesize(reference_file, out, "--overwrite") == 0
    assert soundfile.info(out).samplerate == 24000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav"]


def test_animate_out_dev_null_with_overwrite_is_refused(motion_model_dir, features_file, capsys):
    code = cli("animate", motion_model_dir, "--features", features_file, "--num-frames", "4", "--out", "/dev/null",
               "--overwrite")  # fmt: skip
    assert code == 2
    assert "not a regular file" in one_error_line(capsys)
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("placement", ["features", "inside-model", "plot-is-out"])
def test_animate_outputs_never_touch_an_input(motion_model_dir, features_file, tmp_path, capsys, placement):
    before = {**tree_digest(motion_model_dir), **tree_digest(features_file)}
    out = {"features": features_file, "inside-model": motion_model_dir / "motion.npy"}.get(
        placement, tmp_path / "motion.npy"
    )
    plot = ["--plot", out] if placement == "plot-is-out" else []
    code = cli("animate", motion_model_dir, "--features", features_file, "--num-frames", "4", "--out", out, *plot,
               "--overwrite")  # fmt: skip
    assert code == 2
    assert {"features": "is the input", "inside-model": "lies inside the input", "plot-is-out": "same file"}[
        placement
    ] in one_error_line(capsys)
    assert {**tree_digest(motion_model_dir), **tree_digest(features_file)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]


def test_attach_vocoder_out_inside_an_input_is_refused_before_loading(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(f5_dir(), model)
    before = tree_digest(model)
    vocoder = upstream_fixture("vocos_tiny")
    assert cli("attach-vocoder", model, vocoder, "--out", model / "with_vocoder") == 2
    assert "lies inside the input" in one_error_line(capsys)
    # the vocoder argument is an input too; a folder that is not a model is never loaded (the output check is first)
    assert cli("attach-vocoder", tmp_path / "not-a-model", vocoder, "--out", vocoder) == 2
    assert "is the input" in one_error_line(capsys)
    assert tree_digest(model) == before


# --- numeric options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--speed", "1e-6", "argument --speed: 1e-6 is outside [0.1, 10.0]"),
        ("--speed", "nan", "argument --speed: 'nan' is not a finite number"),
        ("--fix-duration", "1e6", "argument --fix-duration: 1e6 is outside (0.0, 60.0]"),
        ("--fix-duration", "inf", "not a finite number"),
        ("--nfe-step", "0", "argument --nfe-step: 0 is outside [1, 1000]"),
        ("--nfe-step", "100000", "is outside [1, 1000]"),
        ("--cfg-strength", "inf", "argument --cfg-strength: 'inf' is not a finite number"),
        ("--cfg-strength", "-1", "is outside [0.0, 100.0]"),
        ("--sway", "nan", "argument --sway: 'nan' is not a finite number"),
        ("--sway", "-2", "is outside [-1.0, 1.75"),
        ("--seed", str(2**70), f"argument --seed: {2**70} is outside [0, {MAX_SEED}]"),
        ("--seed", "-1", "is outside [0,"),
    ],
)
def test_synthesize_numeric_options_outside_their_caps(tmp_path, reference_file, capsys, option, value, message):
    assert synthesize(reference_file, tmp_path / "speech.wav", f"{option}={value}") == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value",
    [("--num-frames", "1000000000000"), ("--num-frames", "1e12"), ("--guidance-scale", "inf"),
     ("--steps", "100000"), ("--seed", str(2**70)), ("--plot-features", "0")],
)  # fmt: skip
def test_animate_numeric_options_outside_their_caps(motion_model_dir, features_file, tmp_path, capsys, option, value):
    out = tmp_path / "motion.npy"
    code = cli("animate", motion_model_dir, "--features", features_file, "--out", out, "--num-frames", "4",
               f"{option}={value}")  # fmt: skip
    assert code == 2
    assert f"argument {option}:" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_on_a_cpu_build_is_refused_before_loading(tmp_path, reference_file, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    code = cli("synthesize", not_a_model, "--text", "Hi.", "--ref-audio", reference_file, "--ref-text", REF_TEXT,
               "--out", tmp_path / "speech.wav", "--device", "cuda")  # fmt: skip
    assert code == 2
    error = one_error_line(capsys)
    assert "--device cuda:" in error and "available here: cpu" in error
    assert synthesize(reference_file, tmp_path / "speech.wav", "--device", "gpu0") == 2
    assert "is not a torch device name" in one_error_line(capsys)


def test_python_api_refuses_the_same_values(reference_file):
    model = AutoModel.from_pretrained(f5_dir())
    base = dict(nfe_step=2, seed=0)
    for options, message in [
        ({"cfg_strength": float("inf")}, "cfg_strength must be a finite number"),
        ({"sway_sampling_coef": float("nan")}, "sway_sampling_coef must be a finite number"),
        ({"seed": 2**70}, "seed must be in"),
        ({"nfe_step": 0}, r"nfe_step \(ODE steps\) must be in \[1, 1000\]"),
        ({"speed": 1e-6}, r"speed must be in \[0.1, 10\]"),
        ({"fix_duration": 1e6}, r"fix_duration \(seconds, reference included\) must be in \(0, 60\]"),
    ]:
        with pytest.raises(InputError, match=message):
            model.synthesize("Hello.", str(reference_file), REF_TEXT, **{**base, **options})
    with pytest.raises(InputError, match="one solve may generate"):
        model.sample(torch.randn(1, 24000), [[1, 2, 3]], 10**9, steps=1)
    tts = pipeline("zero-shot-text-to-speech", model=str(f5_dir()))
    with pytest.raises(InputError, match="cfg_strength must be a finite number"):
        tts("Hello.", ref_audio=str(reference_file), ref_text=REF_TEXT, cfg_strength=float("inf"))
    with pytest.raises(InputError, match=r"speed must be in \[0.1, 10\], got 1e-06"):
        tts("Hello.", ref_audio=str(reference_file), ref_text=REF_TEXT, speed=1e-6)


def test_motion_generate_refuses_huge_or_bad_lengths(motion_model_dir):
    model = CFGMotionModel.from_pretrained(motion_model_dir)
    cond = torch.randn(1, 10, 8)
    with pytest.raises(InputError, match=r"num_frames must be in \[1, 18000\], got 1000000000000"):
        model.generate(cond, 10**12)
    with pytest.raises(InputError, match="num_frames must be a whole number"):
        model.generate(cond, 4.5)
    with pytest.raises(InputError, match="guidance_scale must be at most 100"):
        model.generate(cond, 4, guidance_scale=1e9)
    pipe = pipeline("audio-to-motion", model=str(motion_model_dir), device="cpu")
    with pytest.raises(InputError, match=r"num_frames must be in \[1, 18000\]"):
        pipe({"cond_features": np.zeros((10, 8), np.float32)}, num_frames=10**12)


# --- text -----------------------------------------------------------------------------------------------------


def test_text_with_invalid_utf8_from_the_command_line(tmp_path, reference_file, capsys):
    # Linux hands undecodable argv bytes to Python as lone surrogates (surrogateescape): b"\xff" -> "\udcff".
    text = b"Hello \xff there.".decode("utf-8", "surrogateescape")
    assert cli("synthesize", f5_dir(), "--text", text, "--ref-audio", reference_file, "--ref-text", REF_TEXT,
               "--out", tmp_path / "speech.wav") == 2  # fmt: skip
    error = one_error_line(capsys)
    assert "--text is not valid Unicode text: '\\udcff' at character 6" in error
    assert cli("synthesize", f5_dir(), "--text", "Hello.", "--ref-audio", reference_file, "--ref-text", text,
               "--out", tmp_path / "speech.wav") == 2  # fmt: skip
    assert "reference text (ref_text) is not valid Unicode" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tokenizer_type", ["pinyin", "char"])
@pytest.mark.parametrize("text", ["ab\ud800c", "中文\udcff", "\ud800"])
def test_tokenizer_refuses_lone_surrogates(tokenizer_type, text):
    tokenizer = F5Tokenizer(str(upstream_fixture("f5_vocab.txt")), tokenizer_type=tokenizer_type)
    with pytest.raises(InputError, match="lone surrogate"):
        tokenizer.encode_batch(text)
    with pytest.raises(InputError, match="lone surrogate"):
        tokenizer(text)
    with pytest.raises(InputError, match="text 1 must be a string, got int"):
        tokenizer.encode_batch(["fine", 5])


def test_pipeline_refuses_empty_lists_and_non_strings(reference_file):
    tts = pipeline("zero-shot-text-to-speech", model=str(f5_dir()))
    options = dict(ref_audio=str(reference_file), ref_text=REF_TEXT, nfe_step=2)
    with pytest.raises(InputError, match="give at least one input"):
        tts([], **options)
    with pytest.raises(InputError, match="reference text \\(ref_text\\) must be a string, got int"):
        tts("Hello.", ref_audio=str(reference_file), ref_text=5, nfe_step=2)
    with pytest.raises(InputError, match="text to synthesize must be a string, got int"):
        tts(5, **options)
    with pytest.raises(InputError, match="text to synthesize must be a string, got bytes"):
        tts.model.synthesize(b"Hello.", str(reference_file), REF_TEXT, nfe_step=2)
    with pytest.raises(InputError, match="non-empty list of texts"):
        tts.model.generate([], processor=tts.model.get_processor(), ref_audio=str(reference_file), ref_text=REF_TEXT)


def test_text_and_chunk_caps(reference_file):
    processor = AutoModel.from_pretrained(f5_dir()).get_processor()
    with pytest.raises(InputError, match=f"more than the {MAX_TEXT_CHARS} one request may speak"):
        processor("a" * (MAX_TEXT_CHARS + 1), str(reference_file), REF_TEXT)
    # one sentence without punctuation is one chunk; 3,000 letters at the reference's pace last minutes
    with pytest.raises(InputError, match=f"chunk 1 of the text .* more than the {MAX_CHUNK_SECONDS:g} s"):
        processor("word " * 600, str(reference_file), REF_TEXT)


# --- audio ----------------------------------------------------------------------------------------------------


def test_wav_header_claiming_1_hz_is_refused_before_decoding(tmp_path, capsys):
    bomb = one_hertz_wav(tmp_path / "bomb.wav")
    with pytest.raises(InputError, match=r"lasts 48000 s \(48000 samples at 1 Hz\); at most 300 s"):
        F5FeatureExtractor().prepare_reference(str(bomb))
    out = tmp_path / "speech.wav"
    assert synthesize(bomb, out) == 2
    assert "lasts 48000 s" in one_error_line(capsys)
    assert not out.exists()


def test_animate_audio_header_bomb_is_refused_before_loading(tmp_path, capsys):
    bomb = one_hertz_wav(tmp_path / "bomb.wav")
    # the model folder does not exist: the audio is checked first, so its error is the one reported
    assert cli("animate", tmp_path / "no-model", bomb, "--out", tmp_path / "motion.npy") == 2
    assert "AUDIO file" in (error := one_error_line(capsys)) and "at most 600 s" in error


@pytest.mark.parametrize("rate", [float("nan"), 0, -16000, float("inf"), 1e300, True, "24000"])
def test_bad_sampling_rates_are_input_errors(rate):
    wave = np.zeros(2400, dtype=np.float32)
    with pytest.raises(InputError, match="sampling rate must be"):
        load_audio(wave, 24000, input_sampling_rate=rate)
    with pytest.raises(InputError, match="sampling rate must be"):
        load_audio({"array": wave, "sampling_rate": rate}, 24000)


def test_pipeline_array_with_nan_sampling_rate(reference_file):
    tts = pipeline("zero-shot-text-to-speech", model=str(f5_dir()))
    with pytest.raises(InputError, match="reference audio: the sampling rate must be a finite number, got nan"):
        tts("Hello.", ref_audio=reference_wave(), sampling_rate=float("nan"), ref_text=REF_TEXT, nfe_step=2)


def test_decoded_sample_cap(tmp_path, monkeypatch):
    import hf_tts.audio

    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.zeros((4800, 2), dtype=np.float32), 24000)
    monkeypatch.setattr(hf_tts.audio, "MAX_AUDIO_DECODED_SAMPLES", 9599)
    with pytest.raises(InputError, match="4800 frames x 2 channels, more than the 9599 samples"):
        check_audio_file(path)
    monkeypatch.setattr(hf_tts.audio, "MAX_AUDIO_DECODED_SAMPLES", 9600)
    assert check_audio_file(path).frames == 4800


def test_reference_that_is_a_folder_fifo_or_unreadable(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)  # reading it would block forever
    broken = tmp_path / "broken.wav"
    broken.symlink_to(tmp_path / "gone.wav")
    for reference, message in [
        (folder, "is a folder, not a file"),
        (fifo, "is not a regular file (a fifo, device or socket)"),
        (broken, "is a broken symbolic link"),
        (tmp_path / "missing.wav", "does not exist"),
    ]:
        assert synthesize(reference, tmp_path / "speech.wav") == 2
        assert f"reference audio file {reference} {message}" in one_error_line(capsys)
    unreadable = tmp_path / "unreadable.wav"
    soundfile.write(unreadable, reference_wave(), 24000)
    # Tests run as root, where chmod 000 still reads: deny the open the way the kernel would.
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if Path(path) == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert synthesize(unreadable, tmp_path / "speech.wav") == 2
    assert f"reference audio file {unreadable} cannot be read: permission denied" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.wav", "fifo.wav", "folder.wav", "unreadable.wav"]


# --- .npy features --------------------------------------------------------------------------------------------


def npy_with_header(path: Path, header: str, data: bytes) -> Path:
    """A version 1.0 .npy file with `header` (a dict literal) padded as numpy pads it, then `data`."""
    text = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1") + data)
    return path


@pytest.mark.parametrize(
    "header, data, message",
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 8), }", b"\0" * 1280, "is damaged"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (40, 8), }", b"\0" * 100, "is damaged"),
        ("{'descr': '|O', 'fortran_order': False, 'shape': (2, 8), }", b"\0" * 128, "holds Python objects"),
        ("{'descr': '<c8', 'fortran_order': False, 'shape': (40, 8), }", b"\0" * 2560, "expected float or integer"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 8), }", b"", "non-empty (length, C)"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (320,), }", b"\0" * 1280, "non-empty (length, C)"),
        ("{'descr': '<f4', 'shape': (40, 8), }", b"\0" * 1280, "not a readable .npy"),
    ],
)
def test_npy_features_with_lying_or_unsafe_headers(motion_model_dir, tmp_path, capsys, header, data, message):
    features = npy_with_header(tmp_path / "features.npy", header, data)
    before = tree_digest(features)
    out = tmp_path / "motion.npy"
    assert cli("animate", motion_model_dir, "--features", features, "--num-frames", "4", "--out", out) == 2
    assert message in one_error_line(capsys)
    assert tree_digest(features) == before and not out.exists()


@pytest.mark.parametrize("values", [np.full((40, 8), np.nan, np.float32), np.zeros((0, 8), np.float32)])
def test_nan_or_empty_features_are_refused_before_generating(motion_model_dir, tmp_path, capsys, values):
    features = tmp_path / "features.npy"
    np.save(features, values)
    out = tmp_path / "motion.npy"
    assert cli("animate", motion_model_dir, "--features", features, "--num-frames", "4", "--out", out) == 2
    assert ("contains 320 NaN" if values.size else "non-empty (length, C)") in one_error_line(capsys)
    assert not out.exists()
    pipe = pipeline("audio-to-motion", model=str(motion_model_dir), device="cpu")
    with pytest.raises(InputError, match="cond_features"):
        pipe({"cond_features": values}, num_frames=4)


# --- non-finite outputs ---------------------------------------------------------------------------------------


def poisoned_copy(source: Path, folder: Path, key_part: str) -> Path:
    """A copy of the model folder `source` with the first weight whose name contains `key_part` set to NaN."""
    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    key = next(name for name in weights if key_part in name)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("key_part, what", [("backbone.", "generated mel spectrogram"), ("vocoder.", "vocoded")])
def test_nan_weights_give_exit_2_not_a_constant_wav(tmp_path, reference_file, capsys, key_part, what):
    model = poisoned_copy(f5_dir(), tmp_path / "model", key_part)
    out = tmp_path / "speech.wav"
    code = cli("synthesize", model, "--text", "Hello.", "--ref-audio", reference_file, "--ref-text", REF_TEXT,
               "--out", out, "--nfe-step", "2")  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert what in error and "the model produced NaN/Inf; check its weights" in error
    assert not out.exists()


def test_nan_motion_weights_give_exit_2(motion_model_dir, features_file, tmp_path, capsys):
    model = poisoned_copy(motion_model_dir, tmp_path / "model", "denoiser.")
    out = tmp_path / "motion.npy"
    assert cli("animate", model, "--features", features_file, "--num-frames", "4", "--out", out) == 2
    assert "the generated motion contains" in one_error_line(capsys)
    assert not out.exists()
