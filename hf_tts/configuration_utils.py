"""The config base every `hf_tts` model config extends.

It carries the flags that decide behaviour across families:
- `architecture`: the upstream variant this config reproduces (e.g. "F5TTS_v1_Base", "E2TTS_Base", "face").
- `init_adaln_zero`: zero-initialise adaLN modulations and output projections (DiT paper) for weights that are not
  loaded from a checkpoint.
- `freeze_quantizer`: only meaningful for models with a voice quantizer (`has_quantizer = True`); any other model
  refuses it so a misplaced flag never passes silently.

Subclasses are declared with `@config_dataclass` (huggingface_hub's `@strict` plus one error type): field types
are checked at construction, `validate_*` methods run, and every failure, type or rule, is an `InputError` (a
ValueError) naming the config class, the field, the value and the rule, also when a `config.json` is loaded, where
the file is named too. Validation is complete at construction: every constraint a model build or forward relies on
is checked here, so a config that constructs always builds. Sizes are bounded (`MAX_CONFIG_SIZE`); the model size a
config implies is checked before a model is built (`hf_tts.modeling_utils.check_model_size`).
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from hf_tts.errors import InputError
from hf_tts.limits import MAX_CFG_STRENGTH, MAX_SAMPLING_STEPS, MAX_SWAY, MIN_SWAY

# The largest value any size or count field of a package config may hold (widths, depths, vocab sizes, FFT sizes,
# frame counts, sampling rates): 2**20. Released models stay below 30,000; the bound keeps a hostile config.json
# from overflowing tensor shapes. Whether a config's model fits memory is checked separately, from its parameter
# count (`hf_tts.modeling_utils.MAX_MODEL_PARAMETERS`).
MAX_CONFIG_SIZE = 1 << 20
# Most diffusion training steps a schedule may have (audio2photoreal: 1000). Sampling defaults stored in a config
# (`steps`, `cfg_strength`, `sway_sampling_coef`, `num_inference_steps`, `guidance_scale`) obey the same caps as
# the values a request passes (`hf_tts.limits`), so sampling with a config's defaults never asks for more.
MAX_DIFFUSION_STEPS = 10_000

ConfigClass = TypeVar("ConfigClass", bound=type)


def _describe_failure(config_class: type, error: BaseException) -> str:
    """One line from a strict-dataclass failure: the rule that broke (it names the field and value)."""
    cause = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"invalid {config_class.__name__}: {message}"


def config_dataclass(cls: ConfigClass) -> ConfigClass:
    """`@strict` for package configs, with every validation failure raised as an `InputError`.

    huggingface_hub's `@strict` raises `StrictDataclassFieldValidationError` (types) and
    `StrictDataclassClassValidationError` (`validate_*` rules), neither a ValueError; callers and the CLI expect an
    InputError (one line, exit 2). Construction and later field assignment are both translated.
    """
    cls = strict(cls)
    strict_init: Callable[..., None] = cls.__init__
    strict_setattr: Callable[[Any, str, Any], None] = cls.__setattr__

    @functools.wraps(strict_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            strict_init(self, *args, **kwargs)
        except InputError:
            raise
        except (StrictDataclassError, ValueError, TypeError) as error:
            # TypeError/ValueError: raised by our __post_init__ checks and by transformers' (e.g. a sub-config of the
            # wrong kind); the strict errors wrap the rule that names the field.
            raise InputError(_describe_failure(cls, error)) from error

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            strict_setattr(self, name, value)
        except StrictDataclassError as error:
            raise InputError(_describe_failure(cls, error)) from error

    cls.__init__ = __init__
    cls.__setattr__ = __setattr__
    return cls


@config_dataclass
class HfTtsConfig(PreTrainedConfig):
    model_type = "hf_tts_base"
    # Whether the model family has a voice quantizer that `freeze_quantizer` controls.
    has_quantizer: ClassVar[bool] = False
    # Layer-count fields, as (dotted path, smallest valid value, step): the model size grows by the same amount per
    # step of each, so `hf_tts.modeling_utils.estimate_model_size` builds small copies and extrapolates exactly.
    layer_count_fields: ClassVar[tuple[tuple[str, int, int], ...]] = ()
    # Int fields that may be negative or exceed MAX_CONFIG_SIZE (none by default).
    unbounded_int_fields: ClassVar[frozenset[str]] = frozenset()

    architecture: str = ""
    init_adaln_zero: bool = True
    freeze_quantizer: bool | None = None

    def __post_init__(self, **kwargs):
        # transformers stores unknown keys as attributes; a class-level setting (`presets`, `has_quantizer`, ...)
        # given in a config.json would shadow the class's own and change behaviour.
        own_settings = set(type(self).__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
        shadowing = sorted(name for name in kwargs if name in own_settings)
        if shadowing:
            raise InputError(
                f"{', '.join(shadowing)}: class-level setting(s) of {type(self).__name__}, not config fields; remove "
                "them from the config"
            )
        # Raised here (not in a validator) so callers get a plain ValueError, as the public contract says.
        if not type(self).has_quantizer and self.freeze_quantizer is not None:
            raise InputError(
                f"freeze_quantizer: {type(self).__name__} ({self.model_type}) has no voice quantizer, so "
                "freeze_quantizer cannot be set; remove it (only CFGMotionConfig has a quantizer)."
            )
        super().__post_init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any):
        """As transformers' `from_pretrained`, naming the loaded file in a validation error."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except InputError as error:
            if str(error).startswith(f"{pretrained_model_name_or_path}/"):
                raise
            raise InputError(
                f"{pretrained_model_name_or_path}/config.json: {error}; fix or regenerate the file"
            ) from error

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """As transformers' `from_dict`, naming the loaded file in a validation error (AutoConfig and
        `from_pretrained` pass the folder or repo id as `name_or_path`)."""
        source = kwargs.get("name_or_path") or config_dict.get("name_or_path") or config_dict.get("_name_or_path")
        try:
            return super().from_dict(config_dict, **kwargs)
        except InputError as error:
            if not source:
                raise
            raise InputError(f"{source}/config.json: {error}; fix or regenerate the file") from error

    def validate_numbers(self) -> None:
        """Every int field within [0, MAX_CONFIG_SIZE] and every float finite (fields of this config only)."""
        for name in self.__dataclass_fields__:
            if name in type(self).unbounded_int_fields or name not in _own_fields(type(self)):
                continue
            value = getattr(self, name)
            values = value if isinstance(value, (tuple, list)) else (value,)
            for item in values:
                if isinstance(item, bool):
                    continue
                if isinstance(item, int) and not 0 <= item <= MAX_CONFIG_SIZE:
                    raise ValueError(f"{name} must be in [0, {MAX_CONFIG_SIZE}], got {value!r}")
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"{name} must be a finite number, got {value!r}")

    def _require_positive(self, *names: str) -> None:
        """Raise a ValueError naming the first field in `names` that is not > 0."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")


@functools.cache
def _own_fields(config_class: type) -> frozenset[str]:
    """Fields declared by the package's configs (not transformers' PreTrainedConfig base fields)."""
    base = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    return frozenset(field.name for field in dataclasses.fields(config_class) if field.name not in base)


@config_dataclass
class FlowMatchingTTSConfig(HfTtsConfig):
    """Fields F5-TTS (DiT) and E2-TTS (UNetT) share: transformer size, text embedding, mel settings, training
    objective and sampling defaults. Names follow upstream's `model.arch` / `model.mel_spec` YAML keys where one
    exists (`n_mel_channels` is `mel_dim`, `target_sample_rate` is `sampling_rate`)."""

    model_type = "hf_tts_flow_matching"
    sub_configs_defaults = {"vocoder_config": SubConfigSpec(AutoConfig, model_type="hf_tts_vocos", optional=True)}
    # Presets: name -> field overrides (upstream's exact `model.arch` values). Filled in by each subclass.
    presets: ClassVar[dict[str, dict]] = {}
    # The input embedding's convolutional position embedding uses grouped convolutions (upstream: 16 groups).
    conv_position_groups: ClassVar[int] = 16
    layer_count_fields: ClassVar[tuple[tuple[str, int, int], ...]] = (
        ("depth", 1, 1),
        ("conv_layers", 0, 1),
        ("vocoder_config.num_layers", 1, 1),
    )

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
            "text_dim",
            "mel_dim",
            "sampling_rate",
            "n_fft",
            "hop_length",
            "win_length",
            "steps",
        )
        if self.dim % type(self).conv_position_groups:
            raise ValueError(
                f"dim must be a multiple of {type(self).conv_position_groups} (the grouped convolutions of the position "
                f"embedding), got {self.dim}"
            )
        if self.dim_head % 2:
            raise ValueError(f"dim_head must be even (rotary embedding rotates pairs of channels), got {self.dim_head}")
        if self.pe_attn_head is not None and not 1 <= self.pe_attn_head <= self.heads:
            raise ValueError(f"pe_attn_head must be None or in [1, heads={self.heads}], got {self.pe_attn_head}")
        if self.conv_layers and self.text_embed_dim % 2:
            raise ValueError(
                f"text_dim must be even when conv_layers > 0 (the sinusoidal text positions pair sin and cos), "
                f"got {self.text_embed_dim}"
            )
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.steps > MAX_SAMPLING_STEPS:
            raise ValueError(f"steps must be at most {MAX_SAMPLING_STEPS}, got {self.steps}")
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
        if len(self.frac_lengths_mask) != 2:
            raise ValueError(f"frac_lengths_mask must be a pair (low, high), got {self.frac_lengths_mask!r}")
        low, high = self.frac_lengths_mask
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"frac_lengths_mask must be (low, high) with 0 <= low <= high <= 1, got {self.frac_lengths_mask!r}"
            )
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")
        if not 0 <= self.cfg_strength <= MAX_CFG_STRENGTH:
            raise ValueError(f"cfg_strength must be in [0, {MAX_CFG_STRENGTH:g}], got {self.cfg_strength!r}")
        sway = self.sway_sampling_coef
        if sway is not None and not (math.isfinite(sway) and MIN_SWAY <= sway <= MAX_SWAY):
            raise ValueError(f"sway_sampling_coef must be None or in [{MIN_SWAY:g}, {MAX_SWAY:.4g}], got {sway!r}")
        self._validate_vocoder()

    def _validate_vocoder(self) -> None:
        """A carried vocoder must be a Vocos config that decodes this model's mel (what `attach_vocoder` checks)."""
        vocoder = self.vocoder_config
        if vocoder is None:
            return
        if getattr(vocoder, "model_type", None) != "hf_tts_vocos":
            raise ValueError(
                f"vocoder_config must be a Vocos config (model_type 'hf_tts_vocos'), got "
                f"{getattr(vocoder, 'model_type', type(vocoder).__name__)!r}"
            )
        pairs = {
            "n_mels/mel_dim": (vocoder.n_mels, self.mel_dim),
            "sampling_rate": (vocoder.sampling_rate, self.sampling_rate),
            "hop_length": (vocoder.hop_length, self.hop_length),
        }
        mismatched = [f"{name} {theirs} vs {ours}" for name, (theirs, ours) in pairs.items() if theirs != ours]
        if mismatched:
            raise ValueError(
                f"vocoder_config does not fit this model's mel: {', '.join(mismatched)} (vocoder vs model)"
            )

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embedding table (upstream: `text_dim`, defaulting to `mel_dim`)."""
        return self.text_dim if self.text_dim is not None else self.mel_dim

    @classmethod
    def from_preset(cls, name: str, **overrides):
        """Build the config of an upstream variant (e.g. "F5TTS_v1_Base"), with field overrides on top."""
        if name not in cls.presets:
            known = ", ".join(sorted(cls.presets))
            raise InputError(f"unknown {cls.__name__} preset {name!r}; known presets: {known}")
        fields = {"architecture": name, **cls.presets[name], **overrides}
        return cls(**fields)
