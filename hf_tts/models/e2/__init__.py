"""E2-TTS: UNetT backbone + conditional flow matching."""

# Names load on first use: importing the configuration (to read a config) must not import the modeling code.
from hf_tts._lazy import lazy_getattr

_PUBLIC_NAMES = {
    "E2_PRESETS": "hf_tts.models.e2.configuration_e2",
    "E2TTSConfig": "hf_tts.models.e2.configuration_e2",
    "E2TTSModel": "hf_tts.models.e2.modeling_e2",
}
__all__ = sorted(_PUBLIC_NAMES)
__getattr__ = lazy_getattr(__name__, _PUBLIC_NAMES)
