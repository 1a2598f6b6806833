"""`import hf_tts` registers every model type, tokenizer, processor and pipeline task with transformers, once."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModel, AutoModelForTextToWaveform
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY

import hf_tts
from hf_tts import registration

MODEL_TYPES = {
    "hf_tts_f5": hf_tts.F5TTSModel,
    "hf_tts_e2": hf_tts.E2TTSModel,
    "hf_tts_vocos": hf_tts.VocosModel,
    "hf_tts_cfg_motion": hf_tts.CFGMotionModel,
}


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_model_type_resolves_through_the_auto_classes(model_type):
    config = AutoConfig.for_model(model_type)
    assert type(config).model_type == model_type
    assert AutoModel._model_mapping[type(config)] is MODEL_TYPES[model_type]


def test_speech_models_have_text_to_waveform_tokenizer_and_processor():
    for config_class, model_class in ((hf_tts.F5TTSConfig, hf_tts.F5TTSModel), (hf_tts.E2TTSConfig, hf_tts.E2TTSModel)):
        assert AutoModelForTextToWaveform._model_mapping[config_class] is model_class
        assert TOKENIZER_MAPPING[config_class] is hf_tts.F5Tokenizer
        assert FEATURE_EXTRACTOR_MAPPING[config_class] is hf_tts.F5FeatureExtractor
        assert PROCESSOR_MAPPING[config_class] is hf_tts.F5Processor


def test_pipeline_tasks_are_registered_and_registration_is_idempotent():
    tasks = PIPELINE_REGISTRY.get_supported_tasks()
    assert "zero-shot-text-to-speech" in tasks and "audio-to-motion" in tasks
    registration.register_all()  # a second call is a no-op, not an "already registered" error
    assert PIPELINE_REGISTRY.get_supported_tasks() == tasks
