"""The config base every `hf_tts` model config extends.

It carries the flags that decide behaviour across families:
- `architecture`: the upstream variant this config reproduces (e.g. "F5TTS_v1_Base", "E2TTS_Base", "face").
- `init_adaln_zero`: zero-initialise adaLN modulations and output projections (DiT paper) for weights that are not
  loaded from a checkpoint.
- `freeze_quantizer`: only meaningful for models with a voice quantizer (`has_quantizer = True`); any other model
  refuses it so a misplaced flag never passes silently.

Subclasses are `@strict` dataclasses: field types are checked at construction and `validate_*` methods run.
"""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class HfTtsConfig(PreTrainedConfig):
    model_type = "hf_tts_base"
    # Whether the model family has a voice quantizer that `freeze_quantizer` controls.
    has_quantizer: ClassVar[bool] = False

    architecture: str = ""
    init_adaln_zero: bool = True
    freeze_quantizer: bool | None = None

    def __post_init__(self, **kwargs):
        # Raised here (not in a validator) so callers get a plain ValueError, as the public contract says.
        if not self.has_quantizer and self.freeze_quantizer is not None:
            raise ValueError(
                f"freeze_quantizer: {type(self).__name__} ({self.model_type}) has no voice quantizer, so "
                "freeze_quantizer cannot be set; remove it (only CFGMotionConfig has a quantizer)."
            )
        super().__post_init__(**kwargs)

    def _require_positive(self, *names: str) -> None:
        """Raise a ValueError naming the first field in `names` that is not > 0."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")


@strict
class FlowMatchingTTSConfig(HfTtsConfig):
    """Fields F5-TTS (DiT) and E2-TTS (UNetT) share: transformer size, text embedding, mel settings, training
    objective and sampling defaults. Names follow upstream's `model.arch` / `model.mel_spec` YAML keys where one
    exists (`n_mel_channels` is `mel_dim`, `target_sample_rate` is `sampling_rate`)."""

    model_type = "hf_tts_flow_matching"
    sub_configs_defaults = {"vocoder_config": SubConfigSpec(AutoConfig, model_type="hf_tts_vocos", optional=True)}
    # Presets: name -> field overrides (upstream's exact `model.arch` values). Filled in by each subclass.
    presets: ClassVar[dict[str, dict]] = {}

    # Transformer
    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    dropout: float = 0.1
    qk_norm: str | None = None
    pe_attn_head: int | None = None
    attn_mask_enabled: bool = False
    # Text embedding: ids are vocab indices (0..text_num_embeds-1); the table has text_num_embeds + 1 rows (0 = filler)
    text_num_embeds: int = 2545
    text_dim: int | None = None
    conv_layers: int = 0
    text_mask_padding: bool = True
    tokenizer_type: str = "pinyin"
    # Mel spectrogram (upstream's vocos-type log-mel)
    mel_dim: int = 100
    sampling_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    mel_spec_type: str = "vocos"
    # Flow-matching training objective
    sigma: float = 0.0
    audio_drop_prob: float = 0.3
    cond_drop_prob: float = 0.2
    cfg_drop_per_sample: bool = True
    frac_lengths_mask: tuple[float, float] | list[float] = (0.7, 1.0)
    # Sampling defaults
    steps: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float | None = -1.0
    ode_method: str = "euler"
    use_epss: bool = True
    # The vocoder the folder carries (a VocosConfig), so one repo id gives speech; None: mel only.
    vocoder_config: dict | PreTrainedConfig | None = None

    def validate_flow_matching(self) -> None:
        self._require_positive(
            "dim",
            "depth",
            "heads",
            "dim_head",
            "ff_mult",
            "text_num_embeds",
            "mel_dim",
            "sampling_rate",
            "n_fft",
            "hop_length",
            "win_length",
            "steps",
        )
        if self.qk_norm not in (None, "rms_norm"):
            raise ValueError(f"qk_norm must be None or 'rms_norm', got {self.qk_norm!r}")
        if self.tokenizer_type not in ("pinyin", "char"):
            raise ValueError(f"tokenizer_type must be 'pinyin' or 'char', got {self.tokenizer_type!r}")
        if self.mel_spec_type != "vocos":
            raise ValueError(
                f"mel_spec_type {self.mel_spec_type!r} is not supported: only 'vocos' (the released models' mel); "
                "bigvgan-mel models need a bigvgan vocoder that this package does not ship"
            )
        if self.ode_method not in ("euler", "midpoint"):
            raise ValueError(f"ode_method must be 'euler' or 'midpoint', got {self.ode_method!r}")
        for name in ("audio_drop_prob", "cond_drop_prob", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        low, high = self.frac_lengths_mask
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"frac_lengths_mask must be (low, high) with 0 <= low <= high <= 1, got {self.frac_lengths_mask!r}"
            )
        if self.cfg_strength < 0:
            raise ValueError(f"cfg_strength must be >= 0, got {self.cfg_strength!r}")

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embedding table (upstream: `text_dim`, defaulting to `mel_dim`)."""
        return self.text_dim if self.text_dim is not None else self.mel_dim

    @classmethod
    def from_preset(cls, name: str, **overrides):
        """Build the config of an upstream variant (e.g. "F5TTS_v1_Base"), with field overrides on top."""
        if name not in cls.presets:
            known = ", ".join(sorted(cls.presets))
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; known presets: {known}")
        fields = {"architecture": name, **cls.presets[name], **overrides}
        return cls(**fields)
