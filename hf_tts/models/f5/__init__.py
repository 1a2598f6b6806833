"""F5-TTS: DiT backbone + conditional flow matching."""

# Names load on first use: importing the configuration (to read a config) must not import the modeling code.
from hf_tts._lazy import lazy_getattr

_PUBLIC_NAMES = {
    "F5_PRESETS": "hf_tts.models.f5.configuration_f5",
    "F5TTSConfig": "hf_tts.models.f5.configuration_f5",
    "F5TTSModel": "hf_tts.models.f5.modeling_f5",
}
__all__ = sorted(_PUBLIC_NAMES)
__getattr__ = lazy_getattr(__name__, _PUBLIC_NAMES)
