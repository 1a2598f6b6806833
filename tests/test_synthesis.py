"""Batched long-form sampling, vocoding, cross-fade and the vocoder carried by an F5-TTS folder."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import soundfile
import torch
from speech_fixtures import f5_dir, reference_wave, vocos_dir
from transformers import AutoModel

from hf_tts.cli import main
from hf_tts.errors import InputError
from hf_tts.models.vocos.modeling_vocos import VocosModel
from hf_tts.synthesis import (
    CPU_BATCH_FRAMES,
    chunk_batches,
    cross_fade,
    join_chunks,
    sample_chunks,
    vocode_chunks,
)

LONG_TEXT = "The first sentence is here. A second one follows it. Then a third, short. And the last one!"
REF_TEXT = "Some reference words"


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(f5_dir(), dtype=torch.float32).eval()


def test_chunk_batches_longest_first_within_the_frame_budget():
    durations = [100, 300, 120, 250, 90]
    assert chunk_batches(durations, None) == [[1, 3, 2, 0, 4]]
    assert chunk_batches(durations, 1) == [[1], [3], [2], [0], [4]]  # a chunk over budget still gets a solve
    # 2 (CFG halves) x chunks x the batch's longest chunk <= 1024
    assert chunk_batches(durations, 1024) == [[1], [3, 2], [0, 4]]


@pytest.mark.parametrize("batch_frames", [None, 500, "auto"])
def test_batched_long_form_equals_sampling_each_chunk_alone(model, batch_frames):
    processor = model.get_processor()
    inputs = processor(LONG_TEXT, reference_wave(), REF_TEXT, speed=0.15)  # small chunks: several of them
    assert len(inputs.chunks) >= 2
    # shorter, different durations per chunk keep the test fast (speed 0.15 also stretches them)
    durations = [inputs.ref_frames + 40 - 15 * row for row in range(len(inputs.chunks))]
    inputs = dataclasses.replace(inputs, duration=torch.tensor(durations))
    total = int(inputs.duration.max())
    latents = torch.randn(len(inputs.chunks), total, model.config.mel_dim, generator=torch.Generator().manual_seed(0))
    options = dict(steps=3, cfg_strength=2.0, sway_sampling_coef=-1.0)
    steps_seen = []
    batched = sample_chunks(
        model,
        inputs,
        latents=latents,
        batch_frames=batch_frames,
        progress_callback=lambda *a: steps_seen.append(a),
        **options,
    )
    budget = CPU_BATCH_FRAMES if batch_frames == "auto" else batch_frames
    assert steps_seen[-1] == (3 * len(chunk_batches(durations, budget)) - 1, 3 * len(chunk_batches(durations, budget)))
    for row, mel in enumerate(batched):
        duration = int(inputs.duration[row])
        alone = model.sample(
            inputs.cond[row : row + 1],
            inputs.text[row : row + 1, : int((inputs.text[row] != -1).sum())],
            duration,
            latents=latents[row : row + 1, :duration],
            **options,
        )[0, inputs.ref_frames : duration]
        assert mel.shape == alone.shape == (duration - inputs.ref_frames, model.config.mel_dim)
        torch.testing.assert_close(mel, alone, atol=1e-4, rtol=0)


def test_vocoding_length_loudness_and_cross_fade(model):
    mels = [torch.randn(40, 100), torch.randn(30, 100)]
    quiet = vocode_chunks(model.vocoder, mels, reference_rms=0.05)
    loud = vocode_chunks(model.vocoder, mels, reference_rms=0.3)
    assert [len(w) for w in loud] == [39 * 256, 29 * 256]  # centred ISTFT: (frames - 1) * hop
    np.testing.assert_allclose(quiet[0], loud[0] * 0.5, atol=1e-6)  # scaled back to a quiet reference's RMS
    joined = cross_fade(loud, 24000)
    overlap = int(0.15 * 24000)
    assert len(joined) == len(loud[0]) + len(loud[1]) - overlap
    middle = len(loud[0]) - overlap // 2
    expected = loud[0][middle] * (1 - (overlap // 2) / (overlap - 1)) + loud[1][overlap // 2] * (
        (overlap // 2) / (overlap - 1)
    )
    assert joined[middle] == pytest.approx(expected, abs=1e-6)


def test_remove_silence_shrinks_silences_over_one_second_as_upstream():
    rate = 24000
    sound = (0.1 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)).astype(np.float32)  # 1 s at -23 dBFS

    def gap(seconds):
        return np.zeros(int(seconds * rate), np.float32)

    # upstream remove_silence_for_generated_wav: silences >= 1 s at -50 dBFS keep 0.5 s on each side
    wave = np.concatenate([sound, gap(3.0), sound, gap(0.8), sound])
    joined = join_chunks([wave], rate, remove_silence=True)
    expected = np.concatenate([sound, gap(0.5), gap(0.5), sound, gap(0.8), sound])
    np.testing.assert_array_equal(joined, expected)
    np.testing.assert_array_equal(join_chunks([wave], rate), wave)  # off by default


def test_folder_carries_the_vocoder_with_its_weights(model):
    vocos = VocosModel.from_pretrained(vocos_dir(), dtype=torch.float32)
    assert model.config.vocoder_config.model_type == "hf_tts_vocos"
    for name, tensor in vocos.state_dict().items():
        torch.testing.assert_close(model.vocoder.state_dict()[name], tensor, atol=0, rtol=0)
    mel = torch.randn(1, 100, 20)
    torch.testing.assert_close(model.vocoder.decode(mel), vocos.decode(mel), atol=0, rtol=0)


def test_without_a_vocoder_synthesis_says_how_to_attach_one(tmp_path):
    mel_only = AutoModel.from_pretrained(f5_dir(with_vocoder=False), dtype=torch.float32)
    assert mel_only.vocoder is None
    with pytest.raises(InputError, match="no vocoder.*hf-tts attach-vocoder"):
        mel_only.synthesize("Hello.", reference_wave(), REF_TEXT)
    out = tmp_path / "with_vocoder"
    assert main(["attach-vocoder", str(f5_dir(with_vocoder=False)), str(vocos_dir()), "--out", str(out)]) == 0
    attached = AutoModel.from_pretrained(out, dtype=torch.float32)
    assert isinstance(attached.vocoder, VocosModel)
    assert (out / "processor_config.json").is_file() and (out / "vocab.txt").is_file()
    speech = attached.synthesize("Hello.", reference_wave(), REF_TEXT, nfe_step=2, seed=0)
    assert speech.sampling_rate == 24000 and speech.audio.dtype == np.float32 and len(speech.audio) > 0
    # the card is rewritten for the new folder: it says the vocoder is carried and shows the speech pipeline
    card = (out / "README.md").read_text()
    assert "folder alone gives speech" in card and 'pipeline("zero-shot-text-to-speech"' in card
    assert "model.safetensors" in card  # the vocoder's weights, hashed in the provenance
    assert f'model_id = "./{out.name}"' in card


def test_a_vocoder_for_another_mel_is_refused(model):
    from hf_tts.models.vocos.configuration_vocos import VocosConfig

    other = VocosModel(VocosConfig(dim=8, intermediate_dim=16, num_layers=1, n_mels=80))
    with pytest.raises(InputError, match="n_mels 80 vs 100"):
        model.attach_vocoder(other)


# --- sampling precision (dtype="auto"), the mel plot, the vocoder folder check ---


def test_auto_dtype_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from hf_tts import synthesis

    monkeypatch.setattr(synthesis, "cpu_has_native_bf16", lambda: True)
    assert synthesis.resolve_sampling_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(synthesis, "cpu_has_native_bf16", lambda: False)
    assert synthesis.resolve_sampling_dtype("auto", "cpu") == torch.float32
    assert synthesis.resolve_sampling_dtype(None, "mps") == torch.float32
    assert synthesis.resolve_sampling_dtype("float32") == torch.float32
    assert synthesis.resolve_sampling_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(InputError, match="dtype must be auto, float32, bfloat16, float16 or a torch dtype"):
        synthesis.resolve_sampling_dtype("int8")
    with pytest.raises(InputError, match="dtype must be auto"):
        synthesis.resolve_sampling_dtype(torch.int64)


def test_cpu_bf16_detection_reads_the_cpu_flags():
    from hf_tts.synthesis import cpu_has_native_bf16

    with open("/proc/cpuinfo") as info:
        flags = next((line for line in info if line.startswith("flags")), "")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags.split() or "amx_bf16" in flags.split())


def test_default_dtype_samples_a_cached_copy_and_float32_is_exact(model):
    from hf_tts.synthesis import resolve_sampling_dtype, sampling_model

    options = dict(nfe_step=2, seed=0)
    default = model.synthesize("Hello there.", reference_wave(), REF_TEXT, **options)
    auto = resolve_sampling_dtype("auto", "cpu")
    explicit = model.synthesize("Hello there.", reference_wave(), REF_TEXT, dtype=auto, **options)
    np.testing.assert_array_equal(default.audio, explicit.audio)
    assert sampling_model(model, torch.float32) is model  # fp32 weights: no copy
    if auto != torch.float32:
        copy = sampling_model(model, auto)
        assert copy is sampling_model(model, auto) and copy.sampling_dtype == auto and copy.vocoder is None
        assert model.sampling_dtype == torch.float32 and model.vocoder is not None  # the model is untouched
        assert not any(name.startswith("_sampling") for name in model.state_dict())
        exact = model.synthesize("Hello there.", reference_wave(), REF_TEXT, dtype=torch.float32, **options)
        assert not torch.equal(exact.mel, default.mel)
        # the copy samples exactly as a model loaded with its sampler in that precision
        from hf_tts.synthesis import load_speech_model

        loaded = load_speech_model(f5_dir(), sampling_dtype=auto)
        again = loaded.synthesize("Hello there.", reference_wave(), REF_TEXT, dtype=auto, **options)
        torch.testing.assert_close(again.mel, default.mel, atol=0, rtol=0)


def test_load_speech_model_casts_only_the_sampler(tmp_path):
    from hf_tts.synthesis import load_speech_model

    model = load_speech_model(f5_dir(), sampling_dtype="bfloat16")
    assert model.sampling_dtype == torch.bfloat16 and model.vocoder.dtype == torch.float32
    speech = model.synthesize("Hi there.", reference_wave(), REF_TEXT, nfe_step=2, dtype="bfloat16")
    assert np.isfinite(speech.audio).all() and speech.audio.dtype == np.float32


def test_mel_plot_has_a_title_and_a_time_axis_in_seconds(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from hf_tts.synthesis import plot_mel

    seen = {}
    original = Figure.savefig

    def capture(self, *args, **kwargs):
        axes = self.axes[0]
        seen.update(title=axes.get_title(), xlabel=axes.get_xlabel(), xlim=axes.get_xlim())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    plot_mel(torch.zeros(100, 375), tmp_path / "mel.png", "speech.wav: generated mel spectrogram")
    assert seen["title"] == "speech.wav: generated mel spectrogram" and seen["xlabel"] == "time (s)"
    assert seen["xlim"] == pytest.approx((0.0, 375 * 256 / 24000))  # 4 s


def test_an_f5_folder_given_as_the_vocoder_is_refused(tmp_path):
    from hf_tts.synthesis import attach_vocoder_to_folder

    with pytest.raises(InputError, match="is not a Vocos folder .*model_type 'hf_tts_f5'"):
        attach_vocoder_to_folder(f5_dir(with_vocoder=False), f5_dir(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _synthesize_argv(folder, out, *extra: str) -> list[str]:
    reference = folder / "reference.wav"
    if not reference.exists():
        soundfile.write(reference, reference_wave(), 24000)
    return [
        "synthesize",
        str(f5_dir()),
        "--text",
        "Hello there.",
        "--ref-audio",
        str(reference),
        "--ref-text",
        REF_TEXT,
        "--out",
        str(folder / out),
        "--nfe-step",
        "2",
        "--seed",
        "0",
        *extra,
    ]


def test_the_synthesis_bar_shows_on_a_terminal_only_and_quiet_silences_it(tmp_path, capsys, monkeypatch):
    # huggingface_hub's tqdm with disable=None, as every bar of the package: captured stderr (logs, CI) gets none,
    # so an error stays one line; a terminal gets the bar; --quiet (huggingface_hub's switch) removes it.
    assert main(_synthesize_argv(tmp_path, "plain.wav")) == 0
    assert "synthesizing" not in capsys.readouterr().err
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)
    assert main(_synthesize_argv(tmp_path, "loud.wav")) == 0
    assert "synthesizing 1 chunk: 100%" in capsys.readouterr().err
    assert main(_synthesize_argv(tmp_path, "quiet.wav", "--quiet")) == 0
    assert "synthesizing" not in capsys.readouterr().err
    np.testing.assert_array_equal(soundfile.read(tmp_path / "loud.wav")[0], soundfile.read(tmp_path / "quiet.wav")[0])


def test_a_mistyped_model_folder_is_refused_before_any_load(tmp_path, capsys, monkeypatch):
    from hf_tts.synthesis import load_speech_model

    def no_load(*args, **kwargs):
        raise AssertionError("AutoModel.from_pretrained was reached: a Hub lookup with retries would follow")

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a Hub lookup could only fail slowly
    monkeypatch.setattr(AutoModel, "from_pretrained", no_load)
    monkeypatch.chdir(tmp_path)
    argv = _synthesize_argv(tmp_path, "speech.wav")
    argv[1] = "./typo"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "model folder ./typo does not exist" in err
    with pytest.raises(InputError, match="model folder ./typo does not exist"):
        load_speech_model("./typo")
    assert not (tmp_path / "speech.wav").exists()
