"""E2-TTS: UNetT backbone + conditional flow matching."""

from hf_tts.models.e2.configuration_e2 import E2_PRESETS, E2TTSConfig
from hf_tts.models.e2.modeling_e2 import E2TTSModel

__all__ = ["E2_PRESETS", "E2TTSConfig", "E2TTSModel"]
