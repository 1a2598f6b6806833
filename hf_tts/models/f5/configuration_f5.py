"""F5-TTS configuration: DiT backbone (ConvNeXt text encoder, adaLN-Zero blocks) + flow matching."""

from typing import ClassVar

from hf_tts.configuration_utils import FlowMatchingTTSConfig, config_dataclass
from hf_tts.presets import F5_PRESETS


@config_dataclass
class F5TTSConfig(FlowMatchingTTSConfig):
    r"""Configuration of [`F5TTSModel`].

    Defaults are F5TTS_v1_Base; `F5TTSConfig.from_preset("F5TTS_Base")` gives the v0 model (same weights layout,
    different `text_mask_padding` / `pe_attn_head`, so the two are never interchangeable).
    `long_skip_connection` adds upstream's optional Linear(2*dim, dim) skip from the input embedding to the output.
    """

    model_type = "hf_tts_f5"
    presets: ClassVar[dict[str, dict]] = F5_PRESETS

    architecture: str = "F5TTS_v1_Base"
    text_dim: int | None = 512
    conv_layers: int = 4
    long_skip_connection: bool = False


__all__ = ["F5TTSConfig", "F5_PRESETS"]
