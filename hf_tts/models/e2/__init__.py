"""E2-TTS: UNetT backbone + conditional flow matching."""

from hf_tts._lazy import lazy_model_folder

__all__, __getattr__ = lazy_model_folder(
    __name__, configuration=("E2_PRESETS", "E2TTSConfig"), modeling=("E2TTSModel",)
)
