"""Every Auto*/pipeline registration of the package, in one place, in two parts.

transformers 5 has no plugin entry point, so the package registers itself (see `hf_tts._autoregister` for when):
- `register_auto_classes()`: configs, models, tokenizers, feature extractors and processors with the Auto classes.
  It runs when transformers' Auto modules are imported.
- `register_pipelines()`: the package's pipeline tasks. It imports `transformers.pipelines` (and through it
  transformers' whole pipeline machinery), so it runs only once that module is imported anyway: `import hf_tts;
  from transformers import AutoModel` does not pay for pipelines nobody asked for.
Both are idempotent (a second call does nothing). Imports happen inside the functions so that
`hf_tts.registration` can be imported by any module of the package without a cycle.
"""

from __future__ import annotations

_auto_classes_registered = False
_pipelines_registered = False


def register_auto_classes() -> None:
    """Register configs, models, tokenizers, feature extractors and processors with the Auto classes (once)."""
    global _auto_classes_registered
    if _auto_classes_registered:
        return
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForTextToWaveform,
        AutoProcessor,
        AutoTokenizer,
    )

    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig
    from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.e2.modeling_e2 import E2TTSModel
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.models.f5.modeling_f5 import F5TTSModel
    from hf_tts.models.vocos.configuration_vocos import VocosConfig
    from hf_tts.models.vocos.modeling_vocos import VocosModel
    from hf_tts.processing import F5FeatureExtractor, F5Processor
    from hf_tts.tokenization_f5 import F5Tokenizer

    # Text-to-speech models: AutoModelForTextToWaveform is what transformers' text-to-speech pipeline loads.
    # AutoProcessor.from_pretrained works without any pipeline, so processors belong here too.
    for config_class, model_class in ((F5TTSConfig, F5TTSModel), (E2TTSConfig, E2TTSModel)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForTextToWaveform.register(config_class, model_class, exist_ok=True)
        AutoTokenizer.register(config_class, tokenizer_class=F5Tokenizer, exist_ok=True)
        AutoFeatureExtractor.register(config_class, F5FeatureExtractor, exist_ok=True)
        AutoProcessor.register(config_class, F5Processor, exist_ok=True)

    AutoConfig.register(VocosConfig.model_type, VocosConfig, exist_ok=True)
    AutoModel.register(VocosConfig, VocosModel, exist_ok=True)

    # The quantizer sub-config has its own model_type, so config.json round-trips it through AutoConfig.
    AutoConfig.register(VoiceQuantizerConfig.model_type, VoiceQuantizerConfig, exist_ok=True)
    AutoConfig.register(CFGMotionConfig.model_type, CFGMotionConfig, exist_ok=True)
    AutoModel.register(CFGMotionConfig, CFGMotionModel, exist_ok=True)
    _auto_classes_registered = True


def register_pipelines() -> None:
    """Register the package's pipeline tasks (once), after the Auto classes they load with."""
    global _pipelines_registered
    if _pipelines_registered:
        return
    register_auto_classes()
    from transformers import AutoModel, AutoModelForTextToWaveform
    from transformers.pipelines import PIPELINE_REGISTRY

    from hf_tts.pipelines import (
        AUDIO_TO_MOTION_TASK,
        ZERO_SHOT_TTS_TASK,
        AudioToMotionPipeline,
        ZeroShotTextToSpeechPipeline,
    )

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
    _pipelines_registered = True


def auto_classes_registered() -> bool:
    return _auto_classes_registered


def pipelines_registered() -> bool:
    return _pipelines_registered


def is_registered() -> bool:
    """Whether everything is registered (both parts)."""
    return _auto_classes_registered and _pipelines_registered


def register_all() -> None:
    """Both parts now (imports transformers' pipelines): for callers that want everything in place at once."""
    register_pipelines()
