"""Processor numbers against upstream `infer_process` formulas (f5-tts 1.1.22), audio loading and bad input."""

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


# A 2 s tone reference: 48000 + 1200 (50 ms appended) samples = 2.05 s, ref_audio_len = 49200 // 256 = 192 frames.
# Expected values worked out by hand from upstream's formulas (f5-tts 1.1.20, utils_infer.py):
#   max_chars = int(ref_text_bytes / 2.05 * (22 - 2.05) * speed)     (ref text after the ". " rule)
#   duration  = 192 + int(192 / prompt_bytes * chunk_bytes / local_speed), local_speed 0.3 under 10 chunk bytes
UPSTREAM_CASES = [
    pytest.param(
        # "你好世界" has no ending: ". " is added (14 bytes), then one more space (1-byte last char): prompt 15 bytes.
        # max_chars int(14 / 2.05 * 19.95 * 0.25) = 34. Sentences split after ，。！ without needing a space:
        # 21 | 27 | 12 + 9 bytes (each over 34 with its neighbour, except the last two).
        "你好世界",
        "今天天气很好，我们去公园散步吧。明天见！再见。",
        0.25,
        ["今天天气很好，", "我们去公园散步吧。", "明天见！再见。"],
        [192 + int(192 / 15 * 21 / 0.25), 192 + int(192 / 15 * 27 / 0.25), 192 + int(192 / 15 * 21 / 0.25)],
        id="chinese-no-ending",
    ),
    pytest.param(
        # ends with "。": unchanged, no extra space (15 bytes); max_chars int(15 / 2.05 * 19.95 * 0.25) = 36
        "你好世界。",
        "今天天气很好，我们去公园散步吧。明天见！再见。",
        0.25,
        ["今天天气很好，", "我们去公园散步吧。", "明天见！再见。"],
        [192 + int(192 / 15 * 21 / 0.25), 192 + int(192 / 15 * 27 / 0.25), 192 + int(192 / 15 * 21 / 0.25)],
        id="chinese-full-stop",
    ),
    pytest.param(
        # "Hi!" is 3 bytes (< 10): upstream speaks it at speed 0.3 whatever the speed asked for
        "Some reference words",
        "Hi!",
        2.0,
        ["Hi!"],
        [192 + int(192 / 23 * 3 / 0.3)],
        id="very-short-text-ignores-speed",
    ),
    pytest.param(
        # "words." gets one space (22 bytes), the prompt another (23); max_chars int(22 / 2.05 * 19.95 * 0.3) = 64:
        # the first chunk packs four clauses (61 bytes), the last two do not fit after it
        "Some reference words.",
        "First sentence here. Second sentence, with a comma; and more: stuff! Last one?",
        0.3,
        ["First sentence here. Second sentence, with a comma; and more:", "stuff! Last one?"],
        [192 + int(192 / 23 * 61 / 0.3), 192 + int(192 / 23 * 16 / 0.3)],
        id="english-speed-0.3",
    ),
    pytest.param(
        # no punctuation: one sentence, never split inside, even over max_chars (int(22 / 2.05 * 19.95 * 0.2) = 42)
        "Some reference words",
        "no punctuation at all in this long run of words that goes on and on",
        0.2,
        ["no punctuation at all in this long run of words that goes on and on"],
        [192 + int(192 / 23 * 67 / 0.2)],
        id="text-without-punctuation",
    ),
]


@pytest.mark.parametrize(("ref_text", "text", "speed", "chunks", "durations"), UPSTREAM_CASES)
def test_chunks_and_durations_equal_upstream_hand_computed_values(processor, ref_text, text, speed, chunks, durations):
    inputs = processor(text, tone(2.0), ref_text, speed=speed)
    assert inputs.ref_frames == 192
    assert inputs.chunks == chunks
    assert inputs.duration.tolist() == durations


def upstream_1_1_22_fix_durations(fix_duration, chunks, ref_samples, hop=256, rate=24000):
    """f5-tts 1.1.22 `infer_batch_process`, copied line for line: fix_duration shared across chunks."""
    if fix_duration is not None and len(chunks) > 1:
        ref_audio_len_frames = ref_samples // hop
        ref_sec = ref_audio_len_frames * hop / rate
        target_total = fix_duration - ref_sec
        weights = [len(c.encode("utf-8")) for c in chunks]
        total_w = sum(weights)
        allocatable = target_total + 0.15 * (len(chunks) - 1)
        fix_durations = [ref_sec + allocatable * w / total_w for w in weights]
    else:
        fix_durations = [fix_duration] * len(chunks)
    return [int(fix_dur * rate / hop) for fix_dur in fix_durations]


def test_fix_duration_is_shared_across_chunks_as_upstream_1_1_22(processor):
    # the case: a 3 s reference (2.95 s + upstream's 50 ms of silence: 281 frames), two chunks,
    # fix_duration=8 -> upstream 1.1.22 gives 563 + 481 frames (1.1.20 gave both 750)
    text = "The first sentence is the longest one. The second is rather short."
    inputs = processor(text, tone(2.95), "Some words", speed=0.3, fix_duration=8.0)
    assert inputs.ref_frames == 281
    assert inputs.chunks == ["The first sentence is the longest one.", "The second is rather short."]
    assert inputs.duration.tolist() == [563, 481]
    assert upstream_1_1_22_fix_durations(8.0, inputs.chunks, len(inputs.reference.wave)) == [563, 481]
    # generated frames after the prompt, minus the 0.15 s cross-fade: 4.99 s of speech, as upstream
    generated = sum(int(total) - inputs.ref_frames for total in inputs.duration) * 256 - int(0.15 * RATE)
    assert round(generated / RATE, 2) == 4.99
    # one chunk keeps fix_duration whole: int(fix_duration * sr / hop)
    single = processor("Hello there.", tone(2.0), "Words", fix_duration=5.0)
    assert single.duration.tolist() == [int(5.0 * 24000 / 256)]


@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_fix_duration_shares_match_upstream_for_any_chunking(processor, chunks):
    text = " ".join(f"Sentence number {index} says {'more ' * index}words." for index in range(chunks))
    inputs = processor(text, tone(2.0), "Words", speed=0.1, fix_duration=20.0)
    assert len(inputs.chunks) == chunks
    assert inputs.duration.tolist() == upstream_1_1_22_fix_durations(20.0, inputs.chunks, len(inputs.reference.wave))


def test_fix_duration_not_longer_than_the_reference_is_refused(processor):
    # 2 s tone + 50 ms of silence = 192 frames = 2.05 s; fix_duration includes the reference
    with pytest.raises(InputError, match=r"fix_duration 1 s is not longer than the reference audio \(2\.05 s"):
        processor("Hello there.", tone(2.0), "Words", fix_duration=1.0)
    with pytest.raises(InputError, match=r"fix_duration 2\.048 s is not longer than the reference audio"):
        processor("Hello there.", tone(2.0), "Words", fix_duration=2.048)
    with pytest.raises(InputError, match=r"fix_duration \(seconds, reference included\) must be in \(0, 60\], got 0"):
        processor("Hello there.", tone(2.0), "Words", fix_duration=0)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


# References just over 12 s, lengths worked out by hand from upstream's pydub steps (split_on_silence keeping 1 s,
# pieces added while "kept > 6 s and kept + piece > 12 s" is false, long then short silences, then a hard cut at
# 12 s; edges trimmed at -42 dBFS; 50 ms appended). The same lengths came out of pydub 0.25.1 itself (to within its
# 2-sample shorter 50 ms silence).
CLIP_CASES = [
    # no silence anywhere: one 12.5 s piece, hard cut at 12 s
    pytest.param([tone(12.5)], 12.0, True, id="no-silence-hard-cut"),
    # 1.5 s silence after 7 s: pieces 0-7.75 | 7.75-13.5 s; the second would pass 12 s: kept 7.75 s, and the
    # 0.75 s of trailing silence is trimmed
    pytest.param([tone(7.0), silence(1.5), tone(5.0)], 7.0, True, id="long-silence"),
    # a 0.5 s silence only the second pass (100 ms, -40 dBFS) finds: pieces 0-7.25 | 7.25-12.5 s
    pytest.param([tone(7.0), silence(0.5), tone(5.0)], 7.0, True, id="short-silence-second-pass"),
    # the silence comes before 6 s: upstream never stops at it (kept must exceed 6 s first), so a hard cut at 12 s
    pytest.param([tone(5.0), silence(1.5), tone(6.0)], 12.0, True, id="early-silence-hard-cut"),
    # under 12 s: no clipping, but a 3 s interior silence still shrinks to 1 s + 1 s (keep_silence)
    pytest.param([tone(4.0), silence(3.0), tone(4.0)], 10.0, False, id="short-reference-long-silence"),
]


@pytest.mark.parametrize(("parts", "kept_seconds", "clipped"), CLIP_CASES)
def test_reference_clipping_matches_upstream(parts, kept_seconds, clipped):
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reference = F5FeatureExtractor().prepare_reference(np.concatenate(parts))
    assert len(reference.wave) == int((kept_seconds + 0.05) * RATE)
    assert reference.clipped is clipped
    assert len([w for w in record if "clipped" in str(w.message)]) == int(clipped)


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
    with pytest.warns(UserWarning, match="clipped") as record:
        reference = F5FeatureExtractor().prepare_reference(wave)
    message = str(record[0].message)
    # says what the kept transcript does and what to do about it
    assert "16.0 s long; it was clipped to 9.0 s" in message
    assert "whole transcript is kept" in message and "mumbled, repeated or cut words" in message
    assert "trim the recording to at most 12 s, or cut the reference text" in message
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
