"""Every Auto*/pipeline registration of the package, in one place.

transformers 5 has no plugin entry point, so `import hf_tts` calls `register_all()`. It is idempotent: a second
call does nothing. Each family adds its lines to `_register_models` / `_register_pipelines` below.
"""

from __future__ import annotations

_registered = False


def _register_models() -> None:
    from transformers import AutoConfig, AutoModel

    from hf_tts.models.vocos.configuration_vocos import VocosConfig
    from hf_tts.models.vocos.modeling_vocos import VocosModel

    AutoConfig.register(VocosConfig.model_type, VocosConfig, exist_ok=True)
    AutoModel.register(VocosConfig, VocosModel, exist_ok=True)

    from transformers import AutoModelForTextToWaveform

    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.e2.modeling_e2 import E2TTSModel
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.models.f5.modeling_f5 import F5TTSModel

    for config_class, model_class in ((F5TTSConfig, F5TTSModel), (E2TTSConfig, E2TTSModel)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForTextToWaveform.register(config_class, model_class, exist_ok=True)

    from transformers import AutoTokenizer

    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.tokenization_f5 import F5Tokenizer

    for config_class in (F5TTSConfig, E2TTSConfig):
        AutoTokenizer.register(config_class, tokenizer_class=F5Tokenizer, exist_ok=True)

    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig
    from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel

    AutoConfig.register(VoiceQuantizerConfig.model_type, VoiceQuantizerConfig, exist_ok=True)
    AutoConfig.register(CFGMotionConfig.model_type, CFGMotionConfig, exist_ok=True)
    AutoModel.register(CFGMotionConfig, CFGMotionModel, exist_ok=True)


def _register_pipelines() -> None:
    from transformers import AutoFeatureExtractor, AutoModelForTextToWaveform, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.pipelines import ZERO_SHOT_TTS_TASK, ZeroShotTextToSpeechPipeline
    from hf_tts.processing import F5FeatureExtractor, F5Processor

    for config_class in (F5TTSConfig, E2TTSConfig):
        AutoFeatureExtractor.register(config_class, F5FeatureExtractor, exist_ok=True)
        AutoProcessor.register(config_class, F5Processor, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        ZERO_SHOT_TTS_TASK,
        pipeline_class=ZeroShotTextToSpeechPipeline,
        pt_model=AutoModelForTextToWaveform,
        type="multimodal",
    )

    from transformers import AutoModel

    from hf_tts.pipelines import AUDIO_TO_MOTION_TASK, AudioToMotionPipeline

    PIPELINE_REGISTRY.register_pipeline(
        AUDIO_TO_MOTION_TASK, pipeline_class=AudioToMotionPipeline, pt_model=AutoModel, type="audio"
    )


def register_all() -> None:
    """Register configs, models, tokenizers, processors and pipelines with transformers (once)."""
    global _registered
    if _registered:
        return
    _register_models()
    _register_pipelines()
    _registered = True
