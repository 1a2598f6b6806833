"""Every Auto*/pipeline registration of the package, in one place, in parts.

transformers 5 has no plugin entry point, so the package registers itself (see `hf_tts._autoregister` for when),
one part per transformers Auto module, each when that module is imported:

- configuration_auto -> "configs" (AutoConfig);
- modeling_auto -> "models" (AutoModel, AutoModelForTextToWaveform; imports the modeling code and torch);
- tokenization_auto -> "tokenizers"; feature_extraction_auto -> "feature_extractors";
- processing_auto -> "processors" (transformers' processing machinery costs over a second to import);
- transformers.pipelines -> "pipelines" (the package's pipeline tasks; transformers' whole pipeline machinery).

So reading a config (`hf-tts merge`, `inspect`) pays for the config classes only, and `from transformers import
AutoModel` does not import processors or pipelines nobody asked for. Every part is idempotent (a second call does
nothing) and registers the parts it depends on first. Imports happen inside the functions so that
`hf_tts.registration` can be imported by any module of the package without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable

_registered: set[str] = set()


def _register_configs() -> None:
    from transformers import AutoConfig

    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.models.vocos.configuration_vocos import VocosConfig

    # The quantizer sub-config has its own model_type, so config.json round-trips it through AutoConfig.
    for config_class in (F5TTSConfig, E2TTSConfig, VocosConfig, VoiceQuantizerConfig, CFGMotionConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def _speech_configs() -> tuple[type, ...]:
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig

    return F5TTSConfig, E2TTSConfig


def _register_models() -> None:
    from transformers import AutoModel, AutoModelForTextToWaveform

    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig
    from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.e2.modeling_e2 import E2TTSModel
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig
    from hf_tts.models.f5.modeling_f5 import F5TTSModel
    from hf_tts.models.vocos.configuration_vocos import VocosConfig
    from hf_tts.models.vocos.modeling_vocos import VocosModel

    # Text-to-speech models: AutoModelForTextToWaveform is what transformers' text-to-speech pipeline loads.
    for config_class, model_class in ((F5TTSConfig, F5TTSModel), (E2TTSConfig, E2TTSModel)):
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForTextToWaveform.register(config_class, model_class, exist_ok=True)
    AutoModel.register(VocosConfig, VocosModel, exist_ok=True)
    AutoModel.register(CFGMotionConfig, CFGMotionModel, exist_ok=True)


def _register_tokenizers() -> None:
    from transformers import AutoTokenizer

    from hf_tts.tokenization_f5 import F5Tokenizer

    for config_class in _speech_configs():
        AutoTokenizer.register(config_class, tokenizer_class=F5Tokenizer, exist_ok=True)


def _register_feature_extractors() -> None:
    from transformers import AutoFeatureExtractor

    from hf_tts.processing import F5FeatureExtractor

    for config_class in _speech_configs():
        AutoFeatureExtractor.register(config_class, F5FeatureExtractor, exist_ok=True)


def _register_processors() -> None:
    # AutoProcessor.from_pretrained works without any pipeline, so processors are an Auto part of their own.
    from transformers import AutoProcessor

    from hf_tts.processing import F5Processor

    for config_class in _speech_configs():
        AutoProcessor.register(config_class, F5Processor, exist_ok=True)


def _register_pipelines() -> None:
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


# part -> (what it registers, the parts it needs first)
_PARTS: dict[str, tuple[Callable[[], None], tuple[str, ...]]] = {
    "configs": (_register_configs, ()),
    "models": (_register_models, ("configs",)),
    "tokenizers": (_register_tokenizers, ("configs",)),
    "feature_extractors": (_register_feature_extractors, ("configs",)),
    "processors": (_register_processors, ("tokenizers", "feature_extractors")),
    "pipelines": (_register_pipelines, ("models", "tokenizers", "feature_extractors", "processors")),
}
AUTO_CLASS_PARTS = ("configs", "models", "tokenizers", "feature_extractors", "processors")
# transformers module -> the part its import calls for
PART_OF_MODULE = {
    "transformers.models.auto.configuration_auto": "configs",
    "transformers.models.auto.modeling_auto": "models",
    "transformers.models.auto.tokenization_auto": "tokenizers",
    "transformers.models.auto.feature_extraction_auto": "feature_extractors",
    "transformers.models.auto.processing_auto": "processors",
    "transformers.pipelines": "pipelines",
}


def register(part: str) -> None:
    """Register one part (see the module docstring), after the parts it needs; once."""
    if part in _registered:
        return
    function, needs = _PARTS[part]
    for needed in needs:
        register(needed)
    function()
    _registered.add(part)


def registered_parts() -> frozenset[str]:
    return frozenset(_registered)


def register_auto_classes() -> None:
    """Register configs, models, tokenizers, feature extractors and processors with the Auto classes (once)."""
    for part in AUTO_CLASS_PARTS:
        register(part)


def register_all() -> None:
    """Every part now (imports transformers' pipelines): for callers that want everything in place at once."""
    register("pipelines")


def is_registered() -> bool:
    """Whether every part is registered."""
    return len(_registered) == len(_PARTS)
