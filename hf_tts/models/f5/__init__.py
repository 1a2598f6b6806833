"""F5-TTS: DiT backbone + conditional flow matching."""

from hf_tts.models.f5.configuration_f5 import F5_PRESETS, F5TTSConfig
from hf_tts.models.f5.modeling_f5 import F5TTSModel

__all__ = ["F5_PRESETS", "F5TTSConfig", "F5TTSModel"]
