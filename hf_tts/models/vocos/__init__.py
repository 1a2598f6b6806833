"""Vocos vocoder: ConvNeXt backbone + ISTFT head (charactr/vocos-mel-24khz layout)."""

from hf_tts.models.vocos.configuration_vocos import VocosConfig
from hf_tts.models.vocos.modeling_vocos import VocosModel

__all__ = ["VocosConfig", "VocosModel"]
