"""Vocos vocoder: ConvNeXt backbone + ISTFT head (charactr/vocos-mel-24khz layout)."""

from hf_tts._lazy import lazy_model_folder

__all__, __getattr__ = lazy_model_folder(__name__, configuration=("VocosConfig",), modeling=("VocosModel",))
