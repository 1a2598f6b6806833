"""Vocos configuration: mel features -> ConvNeXt backbone -> ISTFT head (`charactr/vocos-mel-24khz` layout)."""

from typing import ClassVar

from hf_tts.configuration_utils import HfTtsConfig, config_dataclass

PADDING_MODES = ("center", "same")


@config_dataclass
class VocosConfig(HfTtsConfig):
    r"""Configuration of [`VocosModel`].

    Defaults are `charactr/vocos-mel-24khz` (the vocoder every released F5-TTS / E2-TTS model uses). Field names
    follow upstream's `config.yaml` (`backbone.init_args`, `head.init_args`, `feature_extractor.init_args`).
    `feature_padding` / `istft_padding` are the `padding` of upstream's feature extractor and ISTFT head:
    "center" (torch.stft/istft `center=True`) or "same" (CNN-like, (win - hop) / 2 on each side).
    """

    model_type = "hf_tts_vocos"
    layer_count_fields: ClassVar[tuple[tuple[str, int, int], ...]] = (("num_layers", 1, 1),)

    architecture: str = "vocos-mel-24khz"
    # Mel features (upstream MelSpectrogramFeatures; log with clip 1e-7)
    sampling_rate: int = 24000
    n_mels: int = 100
    n_fft: int = 1024
    hop_length: int = 256
    feature_padding: str = "center"
    # Backbone (upstream VocosBackbone)
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    layer_scale_init_value: float | None = None
    layer_norm_eps: float = 1e-6
    # Head (upstream ISTFTHead; its window length is n_fft)
    istft_padding: str = "center"
    initializer_range: float = 0.02

    def validate_vocos(self) -> None:
        self._require_positive("sampling_rate", "n_mels", "n_fft", "hop_length", "dim", "intermediate_dim")
        self._require_positive("num_layers")
        for name in ("feature_padding", "istft_padding"):
            if getattr(self, name) not in PADDING_MODES:
                raise ValueError(f"{name} must be one of {PADDING_MODES}, got {getattr(self, name)!r}")
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even (the head predicts n_fft / 2 + 1 frequencies), got {self.n_fft}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must be >= 0, got {self.initializer_range!r}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.feature_padding == "same" and (self.n_fft // 2) % self.hop_length:
            raise ValueError(
                f"feature_padding 'same' needs n_fft / 2 ({self.n_fft // 2}) to be a multiple of hop_length "
                f"({self.hop_length})"
            )

    @property
    def layer_scale(self) -> float:
        """Initial layer-scale value of each ConvNeXt block (upstream: 1 / num_layers when not given)."""
        return self.layer_scale_init_value if self.layer_scale_init_value is not None else 1.0 / self.num_layers


__all__ = ["VocosConfig"]
