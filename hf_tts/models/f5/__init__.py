"""F5-TTS: DiT backbone + conditional flow matching."""

from hf_tts._lazy import lazy_model_folder

__all__, __getattr__ = lazy_model_folder(
    __name__, configuration=("F5_PRESETS", "F5TTSConfig"), modeling=("F5TTSModel",)
)
