"""Processor numbers against upstream `infer_process` formulas (f5-tts 1.1.20), audio loading and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from conftest import upstream_fixture
from transformers import AutoProcessor

from hf_tts.audio import load_audio
from hf_tts.errors import InputError
from hf_tts.processing import (
    F5FeatureExtractor,
    F5Processor,
    chunk_text,
    estimate_duration,
    max_chunk_bytes,
    normalize_reference_text,
    prompt_text,
)
from hf_tts.tokenization_f5 import F5Tokenizer

RATE = 24000


def tone(seconds: float, rms: float = 0.1, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sqrt(2) * rms * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def processor() -> F5Processor:
    tokenizer = F5Tokenizer(str(upstream_fixture("f5_vocab.txt")), tokenizer_type="pinyin")
    return F5Processor(F5FeatureExtractor(), tokenizer)


def test_reference_text_endings_as_upstream():
    assert normalize_reference_text("Hello") == "Hello. "
    assert normalize_reference_text("Hello.") == "Hello. "
    assert normalize_reference_text("Hello. ") == "Hello. "
    assert normalize_reference_text("你好。") == "你好。"
    assert normalize_reference_text("你好") == "你好. "
    # infer_batch_process adds one more space after a 1-byte last character
    assert prompt_text("Hello. ") == "Hello.  "
    assert prompt_text("你好。") == "你好。"


def test_chunking_and_duration_formulas():
    assert chunk_text("Hello world. How are you? Fine, thanks!", 20) == [
        "Hello world.",
        "How are you? Fine,",
        "thanks!",
    ]
    assert chunk_text("你好。世界！", 100) == ["你好。世界！"]
    # int(len(ref_text bytes) / ref_seconds * (22 - ref_seconds) * speed)
    assert max_chunk_bytes("Some words. ", 2.0) == 120
    assert max_chunk_bytes("Some words. ", 2.0, speed=0.5) == 60
    # ref_frames + int(ref_frames / ref_text bytes * gen bytes / speed); chunks under 10 bytes use speed 0.3
    assert estimate_duration(100, "Some words.  ", "Hello there.") == 100 + int(100 / 13 * 12)
    assert estimate_duration(100, "Some words.  ", "Hello there.", speed=2.0) == 100 + int(100 / 13 * 12 / 2)
    assert estimate_duration(100, "Some words.  ", "Hi.") == 100 + int(100 / 13 * 3 / 0.3)


def test_prepare_matches_upstream_numbers(processor):
    reference = tone(2.0, rms=0.05)
    inputs = processor("Hello world. How are you?", reference, "Some words")
    # 50 ms of silence appended (upstream's preprocess), then RMS measured and raised to 0.1
    samples = 48000 + 1200
    assert inputs.cond.shape == (1, samples)
    assert inputs.reference.rms == pytest.approx(0.05 * np.sqrt(48000 / samples), rel=1e-4)
    assert np.sqrt(np.mean(inputs.cond.numpy() ** 2)) == pytest.approx(0.1, rel=1e-4)
    assert inputs.ref_frames == samples // 256
    # chunk size int(12 / 2.05 * 19.95) = 116 bytes: one chunk; prompt "Some words.  " is 13 bytes
    assert inputs.chunks == ["Hello world. How are you?"]
    assert inputs.duration.tolist() == [192 + int(192 / 13 * 25)]
    expected_ids = processor.tokenizer.encode_batch(["Some words.  Hello world. How are you?"]).ids
    assert inputs.text.tolist() == expected_ids.tolist()


def test_long_text_is_split_into_chunks_sized_from_the_reference(processor):
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    inputs = processor(text, tone(2.0), "Some words", speed=0.5)
    limit = max_chunk_bytes("Some words. ", (48000 + 1200) / RATE, 0.5)
    assert len(inputs.chunks) > 1 and inputs.text.shape[0] == len(inputs.chunks) == inputs.cond.shape[0]
    assert " ".join(inputs.chunks) == text
    assert all(len(chunk.encode()) <= limit for chunk in inputs.chunks)


def test_audio_from_path_array_and_dict_is_mono_and_resampled(tmp_path):
    wave = tone(1.0, rate=48000)
    path = tmp_path / "stereo48k.wav"
    soundfile.write(path, np.stack([wave, wave], axis=1), 48000, subtype="FLOAT")
    from_path = load_audio(path, RATE)
    from_dict = load_audio({"array": np.stack([wave, wave]), "sampling_rate": 48000}, RATE)
    from_array = load_audio(wave, RATE, input_sampling_rate=48000)
    assert from_path.shape == from_dict.shape == from_array.shape == (RATE,)
    np.testing.assert_allclose(from_path, from_dict, atol=1e-6)
    np.testing.assert_allclose(from_array, from_dict, atol=1e-6)


def test_long_reference_is_clipped_at_a_silence_with_a_warning():
    silence = np.zeros(int(1.5 * RATE), dtype=np.float32)
    bursts = [tone(2.0)] * 5
    wave = np.concatenate([part for burst in bursts for part in (burst, silence)][:-1])  # 16 s
    with pytest.warns(UserWarning, match="clipped"):
        reference = F5FeatureExtractor().prepare_reference(wave)
    # pieces of 2.75, 3.5, 3.5 s are kept (with up to 1 s of their silence; shared silence split half and half):
    # the next would pass 12 s. The trailing 0.75 s of silence is trimmed and 50 ms appended.
    assert len(reference.wave) / RATE == pytest.approx(9.0 + 0.05, abs=0.02)


@pytest.mark.parametrize(
    ("audio", "ref_text", "text", "message"),
    [
        (np.zeros(2 * RATE, dtype=np.float32), "Words", "Hi there", "reference audio is silent"),
        (np.concatenate([tone(0.3), np.zeros(RATE, np.float32)]), "Words", "Hi there", "too short"),
        (None, "Words", "Hi there", "ref_audio is required"),
        ("missing.wav", "Words", "Hi there", "does not exist"),
        (tone(2.0), "  ", "Hi there", "ref_text\\) is empty.*ASR"),
        (tone(2.0), "Words", " ", "text to synthesize is empty"),
    ],
)
def test_bad_input_gets_a_specific_message(processor, audio, ref_text, text, message):
    with pytest.raises(InputError, match=message):
        processor(text, audio, ref_text)


def test_unreadable_reference_file(processor, tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(InputError, match="not readable audio"):
        processor("Hi there", str(path), "Words")


def test_unknown_characters_warn_once_and_map_to_the_filler(processor):
    with pytest.warns(UserWarning, match="'☃'") as record:
        inputs = processor("Snow ☃ man ☃.", tone(2.0), "Words")
    assert len([w for w in record if "vocabulary" in str(w.message)]) == 1
    assert inputs.unknown_tokens == ["☃"]
    assert 0 in inputs.text[0].tolist()


def test_processor_saves_and_loads_through_auto_processor(processor, tmp_path):
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig

    F5TTSConfig().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, F5Processor) and isinstance(loaded.feature_extractor, F5FeatureExtractor)
    assert loaded.feature_extractor.hop_length == 256 and loaded.feature_extractor.target_rms == 0.1
    assert (
        loaded("Hi there.", tone(2.0), "Words").duration.tolist()
        == processor("Hi there.", tone(2.0), "Words").duration.tolist()
    )
