"""Streaming: `model.synthesize_stream`, `pipeline(..., stream=True)` and `hf-tts synthesize --stream` hand out each
chunk's cross-faded audio as soon as it is ready, and the pieces joined are exactly the non-streamed audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from speech_fixtures import f5_dir, reference_wave
from transformers import AutoModel, pipeline

from hf_tts.cli import main
from hf_tts.commands.synthesize import pcm16
from hf_tts.errors import InputError
from hf_tts.synthesis import CrossFader, cross_fade, stream_batches

TEXT = "The first sentence is here. A second one follows it. Then a third, short. And the fourth one! A fifth. The end."
REF_TEXT = "Some reference words"
# speed 0.1: short chunks; fix_duration 2.5 s shared by the chunks keeps them short to sample
OPTIONS = dict(nfe_step=2, seed=3, speed=0.1, fix_duration=2.5, dtype=torch.float32)


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(f5_dir(), dtype=torch.float32).eval()


def test_stream_batches_first_chunk_alone_then_text_order():
    assert stream_batches([300, 100, 120, 90], None) == [[0], [1, 2, 3]]
    # 2 (CFG halves) x chunks x the longest <= budget, consecutive chunks only
    assert stream_batches([300, 100, 120, 90, 200], 500) == [[0], [1, 2], [3], [4]]
    assert stream_batches([50], 1) == [[0]]
    assert stream_batches([], None) == []


def test_cross_fader_pieces_join_to_cross_fade():
    rng = np.random.default_rng(0)
    for _ in range(200):
        waves = [rng.standard_normal(rng.integers(1, 40)).astype(np.float32) for _ in range(rng.integers(1, 6))]
        fader = CrossFader(100)  # 15-sample overlap
        pieces = [fader.push(wave) for wave in waves] + [fader.flush()]
        np.testing.assert_array_equal(np.concatenate(pieces), cross_fade(waves, 100))


def test_stream_joined_equals_synthesize_exactly_in_fp32(model):
    whole = model.synthesize(TEXT, reference_wave(), REF_TEXT, **OPTIONS)
    assert len(whole.chunks) >= 3
    calls = []
    original = model.sample

    def counting_sample(cond, *args, **kwargs):
        calls.append(cond.shape[0])
        return original(cond, *args, **kwargs)

    model.sample = counting_sample
    try:
        stream = model.synthesize_stream(TEXT, reference_wave(), REF_TEXT, **OPTIONS)
        first = next(stream)
        # the first piece comes after one solve of the first chunk alone, before the others are sampled
        assert calls == [1] and first.chunk == 0 and first.text == whole.chunks[0] and len(first.audio) > 0
        pieces = [first, *stream]
    finally:
        del model.sample
    assert calls == [1, len(whole.chunks) - 1]  # the rest in one batched solve (all fit the CPU budget)
    assert [piece.chunk for piece in pieces] == [*range(len(whole.chunks)), -1]
    assert all(piece.sampling_rate == 24000 for piece in pieces)
    joined = np.concatenate([piece.audio for piece in pieces])
    np.testing.assert_array_equal(joined, whole.audio)


def test_stream_checks_everything_before_the_first_piece(model):
    with pytest.raises(InputError, match="text to synthesize is empty"):
        model.synthesize_stream(" ", reference_wave(), REF_TEXT)
    with pytest.raises(InputError, match="dtype must be auto"):
        model.synthesize_stream("Hi.", reference_wave(), REF_TEXT, dtype="int8")


def test_pipeline_stream_equals_pipeline_output():
    pipe = pipeline("zero-shot-text-to-speech", model=str(f5_dir()), device="cpu")
    options = dict(ref_audio=reference_wave(), ref_text=REF_TEXT, **OPTIONS)
    whole = pipe(TEXT, **options)["audio"]
    pieces = list(pipe(TEXT, stream=True, **options))
    assert len(pieces) >= 4 and all(piece["sampling_rate"] == 24000 for piece in pieces)
    np.testing.assert_array_equal(np.concatenate([piece["audio"] for piece in pieces]), whole)
    with pytest.raises(InputError, match="remove_silence needs the whole audio"):
        pipe(TEXT, stream=True, remove_silence=True, **options)
    with pytest.raises(InputError, match="stream=True takes one text"):
        pipe([TEXT, TEXT], stream=True, **options)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "reference.wav"
    soundfile.write(path, reference_wave(), 24000)
    return path


def _args(reference_file, out, *extra):
    args = ["synthesize", str(f5_dir()), "--text", TEXT, "--ref-audio", str(reference_file), "--ref-text", REF_TEXT]
    args += ["--out", str(out), "--nfe-step", "2", "--seed", "3", "--speed", "0.1", "--fix-duration", "2.5"]
    return [*args, "--dtype", "float32", *extra]


def test_cli_stream_writes_the_same_wav_and_raw_pcm_to_stdout(tmp_path, reference_file, capsysbinary):
    plain, streamed = tmp_path / "plain.wav", tmp_path / "streamed.wav"
    assert main(_args(reference_file, plain)) == 0
    assert main(_args(reference_file, streamed, "--stream")) == 0
    assert b"streamed" in capsysbinary.readouterr().out
    np.testing.assert_array_equal(soundfile.read(streamed, dtype="int16")[0], soundfile.read(plain, dtype="int16")[0])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plain.wav", "streamed.wav"]  # no staging left

    assert main(_args(reference_file, "-", "--stream")) == 0
    captured = capsysbinary.readouterr()
    audio = AutoModel.from_pretrained(f5_dir(), dtype=torch.float32).synthesize(
        TEXT, str(reference_file), REF_TEXT, **OPTIONS
    )
    assert captured.out == pcm16(audio.audio)  # nothing else on stdout: the summary goes to stderr
    assert b"16-bit PCM at 24000 Hz" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plot", "mel.png"], "--plot and --remove-silence need the whole audio"),
        (["--remove-silence"], "--plot and --remove-silence need the whole audio"),
    ],
)
def test_cli_stream_refusals(tmp_path, reference_file, capsys, extra, message):
    extra = [str(tmp_path / item) if item.endswith(".png") else item for item in extra]
    assert main(_args(reference_file, tmp_path / "out.wav", "--stream", *extra)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_stdout_needs_stream(tmp_path, reference_file, capsys):
    assert main(_args(reference_file, "-")) == 2
    assert "--out - (raw PCM to stdout) needs --stream" in capsys.readouterr().err
