"""cfg_motion model family: audio2photoreal's FiLM diffusion transformer with classifier-free guidance and a
GPT-SoVITS-style voice quantizer front end."""

# Names load on first use: importing the configuration (to read a config) must not import the modeling code.
from hf_tts._lazy import lazy_getattr

_PUBLIC_NAMES = {
    "CFGMotionConfig": "hf_tts.models.cfg_motion.configuration_cfg_motion",
    "VoiceQuantizerConfig": "hf_tts.models.cfg_motion.configuration_cfg_motion",
    "CFGMotionModel": "hf_tts.models.cfg_motion.modeling_cfg_motion",
}
__all__ = sorted(_PUBLIC_NAMES)
__getattr__ = lazy_getattr(__name__, _PUBLIC_NAMES)
