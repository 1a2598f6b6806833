"""hf_tts: F5-TTS, E2-TTS, Vocos and a CFG motion/voice transformer in the Hugging Face ecosystem.

`import hf_tts` makes every config, model, tokenizer, processor and pipeline known to the transformers Auto classes,
so `AutoModel.from_pretrained(...)`, `pipeline(...)` and `Trainer(...)` work on the package's folders.

The import itself is light: public names load on first use, and the registration runs as soon as transformers'
Auto classes or pipelines are imported (right away if they already are; see `hf_tts._autoregister`). So `hf-tts
--help` and the registry server (`hf-tts hub serve`) never pay for torch or transformers, `import hf_tts,
transformers` costs what `import transformers` costs, and `import hf_tts; from transformers import AutoModel` works
as before.
"""

from __future__ import annotations

from hf_tts._lazy import lazy_getattr

__version__ = "0.1.0"

# Public name -> module that defines it.
_PUBLIC_NAMES = {
    "CFGMotionConfig": "hf_tts.models.cfg_motion",
    "CFGMotionModel": "hf_tts.models.cfg_motion",
    "CheckpointMismatchError": "hf_tts.errors",
    "EMACallback": "hf_tts.training",
    "E2TTSConfig": "hf_tts.models.e2",
    "E2TTSModel": "hf_tts.models.e2",
    "F5TTSConfig": "hf_tts.models.f5",
    "F5TTSModel": "hf_tts.models.f5",
    "F5FeatureExtractor": "hf_tts.processing",
    "F5Processor": "hf_tts.processing",
    "F5Tokenizer": "hf_tts.tokenization_f5",
    "FlowMatchingDataCollator": "hf_tts.training",
    "FrameBucketBatchSampler": "hf_tts.training",
    "HfTtsTrainer": "hf_tts.training",
    "HfTtsConfig": "hf_tts.configuration_utils",
    "InputError": "hf_tts.errors",
    "LocalHubServer": "hf_tts.registry.server",
    "SpeechOutput": "hf_tts.synthesis",
    "VocosConfig": "hf_tts.models.vocos",
    "VocosModel": "hf_tts.models.vocos",
    "ZeroShotTextToSpeechPipeline": "hf_tts.pipelines",
    "extend_vocabulary": "hf_tts.training",
    "finetune": "hf_tts.training.finetune",
    "push_folder": "hf_tts.hub.push",
    "render_model_card": "hf_tts.hub.cards",
    "write_model_card": "hf_tts.hub.cards",
    "prepare_tts_dataset": "hf_tts.training",
}
# Subpackages reachable as attributes; `hf_tts.merge(...)` calls the merge subpackage, which is callable.
_SUBPACKAGES = ("merge",)

__all__ = sorted([*_PUBLIC_NAMES, *_SUBPACKAGES, "__version__"])
__getattr__ = lazy_getattr(__name__, _PUBLIC_NAMES, _SUBPACKAGES)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


from hf_tts import _autoregister  # noqa: E402  (needs nothing above but keeps the public face first)

_autoregister.register_when_transformers_is_ready()
del _autoregister
