"""hf_tts: F5-TTS, E2-TTS, Vocos and a CFG motion/voice transformer in the Hugging Face ecosystem.

`import hf_tts` registers every config, model, tokenizer, processor and pipeline with the transformers Auto classes
(once), so `AutoModel.from_pretrained(...)`, `pipeline(...)` and `Trainer(...)` work on the package's folders.
"""

__version__ = "0.1.0"

from hf_tts import registration as _registration
from hf_tts.configuration_utils import HfTtsConfig
from hf_tts.errors import CheckpointMismatchError, InputError

_registration.register_all()

__all__ = ["CheckpointMismatchError", "HfTtsConfig", "InputError", "__version__"]
