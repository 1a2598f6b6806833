"""cfg_motion model family: audio2photoreal's FiLM diffusion transformer with classifier-free guidance and a
GPT-SoVITS-style voice quantizer front end."""

from hf_tts._lazy import lazy_model_folder

__all__, __getattr__ = lazy_model_folder(
    __name__, configuration=("CFGMotionConfig", "VoiceQuantizerConfig"), modeling=("CFGMotionModel",)
)
