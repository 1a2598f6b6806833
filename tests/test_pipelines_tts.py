"""`pipeline("zero-shot-text-to-speech")` (bare kwargs) and the built-in `pipeline("text-to-speech")`
(forward_params), from a folder and from a model object, on the converted f5_v1_tiny + vocos_tiny fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from speech_fixtures import f5_dir, reference_wave
from transformers import AutoModel, pipeline

from hf_tts.errors import InputError

OPTIONS = dict(ref_text="Some reference words", nfe_step=2, cfg_strength=2.0, sway_sampling_coef=-1.0, seed=3)


@pytest.fixture(scope="module")
def zero_shot():
    return pipeline("zero-shot-text-to-speech", model=str(f5_dir()), device="cpu")


def test_zero_shot_pipeline_gives_one_output_per_text(zero_shot):
    reference = {"array": reference_wave(), "sampling_rate": 24000}
    outputs = zero_shot(["Hello there.", "A second text."], ref_audio=reference, **OPTIONS)
    assert isinstance(outputs, list) and len(outputs) == 2
    inputs = zero_shot.model.get_processor()("A second text.", reference, OPTIONS["ref_text"])
    for output in outputs:
        assert output["sampling_rate"] == 24000
        assert output["audio"].dtype == np.float32 and output["audio"].ndim == 1
    # one chunk: (duration - ref_audio_len - 1) * hop samples
    assert len(outputs[1]["audio"]) == (int(inputs.duration[0]) - inputs.ref_frames - 1) * 256
    again = zero_shot("Hello there.", ref_audio=reference, **OPTIONS)
    np.testing.assert_array_equal(again["audio"], outputs[0]["audio"])  # seeded


def test_builtin_text_to_speech_pipeline_and_model_object_agree(zero_shot):
    expected = zero_shot("Hello there.", ref_audio=reference_wave(), **OPTIONS)["audio"]
    builtin = pipeline("text-to-speech", model=str(f5_dir()), device="cpu")
    result = builtin("Hello there.", forward_params=dict(ref_audio=reference_wave(), **OPTIONS))
    assert result["sampling_rate"] == 24000
    np.testing.assert_allclose(result["audio"], expected, atol=1e-6)

    model = AutoModel.from_pretrained(f5_dir(), dtype=torch.float32)
    from_object = pipeline("zero-shot-text-to-speech", model=model, device="cpu")
    np.testing.assert_allclose(
        from_object("Hello there.", ref_audio=reference_wave(), **OPTIONS)["audio"], expected, atol=1e-6
    )


def test_zero_shot_pipeline_fix_duration_speed_and_remove_silence(zero_shot):
    reference = reference_wave()
    ref_frames = zero_shot.model.get_processor()("Hi there.", reference, OPTIONS["ref_text"]).ref_frames
    fixed = zero_shot("Hello there.", ref_audio=reference, fix_duration=2.0, speed=0.5, remove_silence=True, **OPTIONS)
    # every chunk is int(2.0 * 24000 / 256) frames long, reference included (speed is then irrelevant)
    assert len(fixed["audio"]) <= (int(2.0 * 24000 / 256) - ref_frames - 1) * 256
    kept = zero_shot("Hello there.", ref_audio=reference, fix_duration=2.0, **OPTIONS)["audio"]
    assert len(kept) == (int(2.0 * 24000 / 256) - ref_frames - 1) * 256
    slower = zero_shot("Hello there.", ref_audio=reference, speed=0.5, **OPTIONS)["audio"]
    faster = zero_shot("Hello there.", ref_audio=reference, speed=2.0, **OPTIONS)["audio"]
    assert len(slower) > len(faster)


def test_builtin_text_to_speech_pipeline_with_a_model_object_and_from_a_repo_id(local_hub):
    from hf_tts.hub.push import push_folder

    options = dict(ref_audio=reference_wave(), **OPTIONS)
    model = AutoModel.from_pretrained(f5_dir(), dtype=torch.float32)
    processor = model.get_processor()
    # transformers needs a tokenizer for a model object; the processor keeps the raw text for `generate`
    from_object = pipeline("text-to-speech", model=model, tokenizer=processor.tokenizer, processor=processor)
    expected = from_object("Hello there.", forward_params=options)["audio"]
    push_folder(f5_dir(), "org/f5-speech")
    from_repo = pipeline("text-to-speech", model="org/f5-speech", device="cpu")
    outputs = from_repo(["Hello there.", "Bye."], forward_params=options)
    assert isinstance(outputs, list) and len(outputs) == 2
    assert outputs[0]["sampling_rate"] == 24000 and outputs[0]["audio"].dtype == np.float32
    np.testing.assert_allclose(outputs[0]["audio"], expected, atol=1e-6)
    with pytest.raises(InputError, match=r"processor=model.get_processor\(\) and tokenizer=processor.tokenizer"):
        pipeline("text-to-speech", model=model, tokenizer=processor.tokenizer)("Hi there.", forward_params=options)


def test_pipeline_bad_input(zero_shot):
    with pytest.raises(InputError, match="text to synthesize is empty"):
        zero_shot("", ref_audio=reference_wave(), **OPTIONS)
    with pytest.raises(InputError, match="no vocoder"):
        pipeline("zero-shot-text-to-speech", model=str(f5_dir(with_vocoder=False)), device="cpu")
