"""cfg_motion model family: audio2photoreal's FiLM diffusion transformer with classifier-free guidance and a
GPT-SoVITS-style voice quantizer front end."""

from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig
from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel

__all__ = ["CFGMotionConfig", "CFGMotionModel", "VoiceQuantizerConfig"]
