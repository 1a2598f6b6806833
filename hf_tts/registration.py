"""Every Auto*/pipeline registration of the package, in one place.

transformers 5 has no plugin entry point, so `import hf_tts` calls `register_all()`. It is idempotent: a second
call does nothing. Imports happen inside the functions so that `hf_tts.registration` can be imported by any module
of the package without a cycle.
"""

from __future__ import annotations

_registered = False


def _register_models() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForTextToWaveform, AutoTokenizer

    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig
    from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.e2.modeling_e2 import E2TTSModel
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.models.f5.modeling_f5 import F5TTSModel
    from hf_tts.models.vocos.configuration_vocos import VocosConfig
    from hf_tts.models.vocos.modeling_vocos import VocosModel
    from hf_tts.tokenization_f5 import F5Tokenizer

    # Text-to-speech models: AutoModelForTextToWaveform is what transformers' text-to-speech pipeline loads.
    for config_class, model_class in ((F5TTSConfig, F5TTSModel), (E2TTSConfig, E2TTSModel)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForTextToWaveform.register(config_class, model_class, exist_ok=True)
        AutoTokenizer.register(config_class, tokenizer_class=F5Tokenizer, exist_ok=True)

    AutoConfig.register(VocosConfig.model_type, VocosConfig, exist_ok=True)
    AutoModel.register(VocosConfig, VocosModel, exist_ok=True)

    # The quantizer sub-config has its own model_type, so config.json round-trips it through AutoConfig.
    AutoConfig.register(VoiceQuantizerConfig.model_type, VoiceQuantizerConfig, exist_ok=True)
    AutoConfig.register(CFGMotionConfig.model_type, CFGMotionConfig, exist_ok=True)
    AutoModel.register(CFGMotionConfig, CFGMotionModel, exist_ok=True)


def _register_pipelines() -> None:
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForTextToWaveform, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.pipelines import (
        AUDIO_TO_MOTION_TASK,
        ZERO_SHOT_TTS_TASK,
        AudioToMotionPipeline,
        ZeroShotTextToSpeechPipeline,
    )
    from hf_tts.processing import F5FeatureExtractor, F5Processor

    for config_class in (F5TTSConfig, E2TTSConfig):
        AutoFeatureExtractor.register(config_class, F5FeatureExtractor, exist_ok=True)
        AutoProcessor.register(config_class, F5Processor, exist_ok=True)
    # "text-to-speech" is an alias of transformers' own text-to-audio task and cannot be overridden, so the
    # package's pipelines are custom tasks.
    PIPELINE_REGISTRY.register_pipeline(
        ZERO_SHOT_TTS_TASK,
        pipeline_class=ZeroShotTextToSpeechPipeline,
        pt_model=AutoModelForTextToWaveform,
        type="multimodal",
    )
    PIPELINE_REGISTRY.register_pipeline(
        AUDIO_TO_MOTION_TASK, pipeline_class=AudioToMotionPipeline, pt_model=AutoModel, type="audio"
    )


def is_registered() -> bool:
    return _registered


def register_all() -> None:
    """Register configs, models, tokenizers, processors and pipelines with transformers (once)."""
    global _registered
    if _registered:
        return
    _register_models()
    _register_pipelines()
    _registered = True
