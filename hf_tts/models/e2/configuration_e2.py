"""E2-TTS configuration: flat U-Net transformer (UNetT, long skip connections, RMSNorm) + flow matching."""

from typing import ClassVar

from hf_tts.configuration_utils import FlowMatchingTTSConfig, config_dataclass
from hf_tts.presets import E2_PRESETS


@config_dataclass
class E2TTSConfig(FlowMatchingTTSConfig):
    r"""Configuration of [`E2TTSModel`]. Defaults are E2TTS_Base. `depth` must be even (the U-Net skips pair the
    first half of the layers with the second half); `skip_connect_type` is "concat" (upstream default), "add" or
    "none" (no U-Net skips)."""

    model_type = "hf_tts_e2"
    presets: ClassVar[dict[str, dict]] = E2_PRESETS
    # `depth` counts in pairs (a first-half layer and its second-half partner with the skip projection).
    layer_count_fields: ClassVar[tuple[tuple[str, int, int], ...]] = (
        ("depth", 2, 2),
        ("conv_layers", 0, 1),
        ("vocoder_config.num_layers", 1, 1),
    )

    architecture: str = "E2TTS_Base"
    depth: int = 24
    ff_mult: int = 4
    text_dim: int | None = None
    conv_layers: int = 0
    text_mask_padding: bool = False
    pe_attn_head: int | None = 1
    skip_connect_type: str = "concat"

    def validate_unet(self) -> None:
        if self.depth % 2:
            raise ValueError(f"depth must be even for the UNetT backbone, got {self.depth}")
        if self.skip_connect_type not in ("concat", "add", "none"):
            raise ValueError(f"skip_connect_type must be 'concat', 'add' or 'none', got {self.skip_connect_type!r}")


__all__ = ["E2TTSConfig", "E2_PRESETS"]
