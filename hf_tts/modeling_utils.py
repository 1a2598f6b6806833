"""The model base every `hf_tts` model extends.

One place for behaviour all families share on top of `transformers.PreTrainedModel` (for example, the Hub push
that uploads the package's generated model card in the same commit as the weights).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from hf_tts.configuration_utils import HfTtsConfig


class HfTtsPreTrainedModel(PreTrainedModel):
    config_class = HfTtsConfig
    base_model_prefix = "model"
