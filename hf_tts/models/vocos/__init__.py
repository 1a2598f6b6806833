"""Vocos vocoder: ConvNeXt backbone + ISTFT head (charactr/vocos-mel-24khz layout)."""

# Names load on first use: importing the configuration (to read a config) must not import the modeling code.
from hf_tts._lazy import lazy_getattr

_PUBLIC_NAMES = {
    "VocosConfig": "hf_tts.models.vocos.configuration_vocos",
    "VocosModel": "hf_tts.models.vocos.modeling_vocos",
}
__all__ = sorted(_PUBLIC_NAMES)
__getattr__ = lazy_getattr(__name__, _PUBLIC_NAMES)
