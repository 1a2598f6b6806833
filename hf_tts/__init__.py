"""hf_tts: F5-TTS, E2-TTS, Vocos and a CFG motion/voice transformer in the Hugging Face ecosystem.

`import hf_tts` registers every config, model, tokenizer, processor and pipeline with the transformers Auto classes
(once), so `AutoModel.from_pretrained(...)`, `pipeline(...)` and `Trainer(...)` work on the package's folders.
"""

__version__ = "0.1.0"

# The subpackage, which is callable: `hf_tts.merge(...)` runs `hf_tts.merge.merge(...)`.
from hf_tts import merge
from hf_tts import registration as _registration
from hf_tts.configuration_utils import HfTtsConfig
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.hub.cards import render_model_card, write_model_card
from hf_tts.hub.push import push_folder
from hf_tts.hub.server import LocalHubServer
from hf_tts.models.cfg_motion import CFGMotionConfig, CFGMotionModel
from hf_tts.models.e2 import E2TTSConfig, E2TTSModel
from hf_tts.models.f5 import F5TTSConfig, F5TTSModel
from hf_tts.models.vocos import VocosConfig, VocosModel
from hf_tts.pipelines import ZeroShotTextToSpeechPipeline
from hf_tts.processing import F5FeatureExtractor, F5Processor
from hf_tts.synthesis import SpeechOutput
from hf_tts.tokenization_f5 import F5Tokenizer
from hf_tts.training import (
    EMACallback,
    FlowMatchingDataCollator,
    FrameBucketBatchSampler,
    HfTtsTrainer,
    extend_vocabulary,
    prepare_tts_dataset,
)
from hf_tts.training.finetune import finetune

_registration.register_all()

__all__ = [
    "CFGMotionConfig",
    "CFGMotionModel",
    "CheckpointMismatchError",
    "EMACallback",
    "E2TTSConfig",
    "E2TTSModel",
    "F5TTSConfig",
    "F5TTSModel",
    "F5FeatureExtractor",
    "F5Processor",
    "F5Tokenizer",
    "FlowMatchingDataCollator",
    "FrameBucketBatchSampler",
    "HfTtsTrainer",
    "HfTtsConfig",
    "InputError",
    "LocalHubServer",
    "SpeechOutput",
    "VocosConfig",
    "VocosModel",
    "ZeroShotTextToSpeechPipeline",
    "__version__",
    "extend_vocabulary",
    "finetune",
    "merge",
    "push_folder",
    "render_model_card",
    "write_model_card",
    "prepare_tts_dataset",
]
