"""hf_tts: F5-TTS, E2-TTS, Vocos and a CFG motion/voice transformer in the Hugging Face ecosystem.

`import hf_tts` registers every config, model, tokenizer, processor and pipeline with the transformers Auto classes
(once), so `AutoModel.from_pretrained(...)`, `pipeline(...)` and `Trainer(...)` work on the package's folders.
"""

__version__ = "0.1.0"

from hf_tts import registration as _registration
from hf_tts.configuration_utils import HfTtsConfig
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.models.cfg_motion import CFGMotionConfig, CFGMotionModel
from hf_tts.models.e2 import E2TTSConfig, E2TTSModel
from hf_tts.models.f5 import F5TTSConfig, F5TTSModel
from hf_tts.models.vocos import VocosConfig, VocosModel
from hf_tts.pipelines import ZeroShotTextToSpeechPipeline
from hf_tts.processing import F5FeatureExtractor, F5Processor
from hf_tts.synthesis import SpeechOutput
from hf_tts.tokenization_f5 import F5Tokenizer

# Bound after the subpackage import on purpose: `hf_tts.merge(...)` is the merge function, while
# `from hf_tts.merge import ...` still reaches the subpackage through sys.modules.
from hf_tts.merge import merge

_registration.register_all()

__all__ = [
    "CFGMotionConfig",
    "CFGMotionModel",
    "CheckpointMismatchError",
    "E2TTSConfig",
    "E2TTSModel",
    "F5TTSConfig",
    "F5TTSModel",
    "F5FeatureExtractor",
    "F5Processor",
    "F5Tokenizer",
    "HfTtsConfig",
    "InputError",
    "SpeechOutput",
    "VocosConfig",
    "VocosModel",
    "ZeroShotTextToSpeechPipeline",
    "__version__",
    "merge",
]
