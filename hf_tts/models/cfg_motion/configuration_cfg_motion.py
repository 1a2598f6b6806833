"""CFG motion configuration: audio2photoreal's FiLM diffusion transformer (face or body) with its diffusion, sampler,
classifier-free guidance, long-conditioning windows, and the optional voice front ends (a GPT-SoVITS-style voice
quantizer and a transformers speech encoder for raw audio)."""

import math
from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig

from hf_tts.configuration_utils import MAX_CONFIG_SIZE, MAX_DIFFUSION_STEPS, HfTtsConfig, config_dataclass
from hf_tts.limits import MAX_GUIDANCE_SCALE, MAX_SAMPLING_STEPS
from hf_tts.presets import CFG_MOTION_ARCHITECTURES


@config_dataclass
class VoiceQuantizerConfig(PreTrainedConfig):
    r"""GPT-SoVITS' semantic front end: `ssl_proj` (Conv1d kernel 2 stride 2 at "25hz", 1x1 at "50hz") followed by a
    residual VQ with EMA codebooks. Defaults are GPT-SoVITS' (768-d HuBERT features, 1 x 1024 codes)."""

    model_type = "hf_tts_voice_quantizer"
    base_config_key = "quantizer"

    enabled: bool = False
    ssl_dim: int = 768
    n_q: int = 1
    bins: int = 1024
    semantic_frame_rate: str = "25hz"
    decay: float = 0.99
    epsilon: float = 1e-5
    kmeans_init: bool = True
    kmeans_iters: int = 50
    threshold_ema_dead_code: float = 2.0
    commitment_weight: float = 1.0

    def validate_quantizer(self) -> None:
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError(
                f"quantizer.semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}"
            )
        for name in ("ssl_dim", "n_q", "bins", "kmeans_iters"):
            if not 0 < getattr(self, name) <= MAX_CONFIG_SIZE:
                raise ValueError(f"quantizer.{name} must be in [1, {MAX_CONFIG_SIZE}], got {getattr(self, name)!r}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"quantizer.decay must be in (0, 1), got {self.decay!r}")
        for name in ("epsilon", "threshold_ema_dead_code", "commitment_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"quantizer.{name} must be a finite number >= 0, got {value!r}")
        if self.epsilon == 0:
            raise ValueError("quantizer.epsilon must be > 0 (it keeps the EMA codebook update from dividing by zero)")

    @property
    def stride(self) -> int:
        """Input (50 Hz) frames per quantized frame."""
        return 2 if self.semantic_frame_rate == "25hz" else 1


@config_dataclass
class CFGMotionConfig(HfTtsConfig):
    r"""Configuration of [`CFGMotionModel`].

    `architecture` ("face" or "body") fills every field left at None with upstream's value for that variant
    (`CFG_MOTION_ARCHITECTURES`); any field can be overridden.

    - Denoiser: `nfeats`, `latent_dim`, `ff_size`, `layers`, `heads`, `dropout`, `cond_feature_dim` (width of
      `cond_features`), `cond_encoder_layers`, `use_keyframes`, `post_conv`.
    - Lengths: `max_cond_len` conditioning frames (upstream: 1998 = 20 s of 100 Hz features) and `max_keyframes`
      keyframes every `keyframe_stride` motion frames at `fps`; longer inputs are generated in windows of
      `max_keyframes * keyframe_stride` frames overlapping by `window_overlap` frames, blended linearly.
    - Diffusion: `diffusion_steps`, `noise_schedule`, x0 prediction, loss = masked x0 MSE + `lambda_vel` x velocity
      MSE; training drops the conditioning with probability `cond_drop_prob` per sample.
    - Sampling: DDIM with `ddim_eta`, `num_inference_steps` respaced steps, classifier-free `guidance_scale`.
    - Init: `init_xavier` (upstream's xavier-normal init of decoder, cond encoder, output and post convs);
      `init_adaln_zero` zero-initialises the FiLM generators so every FiLM starts as the identity.
    - Voice front ends: `quantizer` ([`VoiceQuantizerConfig`]; `freeze_quantizer` freezes it), and `audio_encoder`
      (any transformers speech encoder config, e.g. Wav2Vec2 or HuBERT, as a dict with its `model_type`) that turns
      raw audio at `audio_sampling_rate` into conditioning features; `freeze_audio_encoder` freezes it.
    """

    model_type = "hf_tts_cfg_motion"
    has_quantizer: ClassVar[bool] = True
    sub_configs: ClassVar[dict] = {"quantizer": VoiceQuantizerConfig, "audio_encoder": AutoConfig}
    layer_count_fields: ClassVar[tuple[tuple[str, int, int], ...]] = (
        ("layers", 1, 1),
        ("cond_encoder_layers", 0, 1),
        ("quantizer.n_q", 1, 1),
        ("audio_encoder.num_hidden_layers", 1, 1),
    )

    architecture: str = "body"
    init_adaln_zero: bool = False
    nfeats: int | None = None
    latent_dim: int | None = None
    ff_size: int = 1024
    layers: int | None = None
    heads: int = 8
    dropout: float = 0.1
    cond_feature_dim: int | None = None
    cond_encoder_layers: int | None = None
    use_keyframes: bool | None = None
    post_conv: bool | None = None
    post_conv_dropout: float = 0.2
    max_cond_len: int = 1998
    keyframe_stride: int = 30
    max_keyframes: int = 20
    fps: int = 30
    window_overlap: int = 60
    cond_drop_prob: float = 0.2
    diffusion_steps: int = 1000
    noise_schedule: str = "cosine"
    prediction_type: str = "x0"
    lambda_vel: float = 0.0
    num_inference_steps: int = 100
    ddim_eta: float = 0.0
    guidance_scale: float | None = None
    init_xavier: bool = True
    quantizer: dict | VoiceQuantizerConfig | None = None
    audio_encoder: dict | PreTrainedConfig | None = None
    audio_sampling_rate: int = 16000
    freeze_audio_encoder: bool = True

    def __post_init__(self, **kwargs):
        if self.architecture not in CFG_MOTION_ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {sorted(CFG_MOTION_ARCHITECTURES)}, got {self.architecture!r}"
            )
        for name, value in CFG_MOTION_ARCHITECTURES[self.architecture].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.quantizer is None:
            self.quantizer = VoiceQuantizerConfig()
        elif isinstance(self.quantizer, dict):
            self.quantizer = VoiceQuantizerConfig(**self.quantizer)
        if isinstance(self.audio_encoder, dict):
            fields = dict(self.audio_encoder)
            if "model_type" not in fields:
                raise ValueError("audio_encoder must name its transformers model_type, e.g. {'model_type': 'wav2vec2'}")
            self.audio_encoder = AutoConfig.for_model(fields.pop("model_type"), **fields)
        # GPT-SoVITS ships `freeze_quantizer: true` in every s2 config; an unset flag means the same here.
        if self.freeze_quantizer is None:
            self.freeze_quantizer = True
        super().__post_init__(**kwargs)

    def validate_cfg_motion(self) -> None:
        self._require_positive(
            "nfeats", "latent_dim", "ff_size", "layers", "heads", "cond_feature_dim", "max_cond_len", "fps"
        )
        self._require_positive("keyframe_stride", "max_keyframes", "diffusion_steps", "num_inference_steps")
        self._require_positive("audio_sampling_rate")
        if self.diffusion_steps > MAX_DIFFUSION_STEPS:
            raise ValueError(f"diffusion_steps must be at most {MAX_DIFFUSION_STEPS}, got {self.diffusion_steps}")
        if self.num_inference_steps > MAX_SAMPLING_STEPS:
            raise ValueError(
                f"num_inference_steps must be at most {MAX_SAMPLING_STEPS}, got {self.num_inference_steps}"
            )
        if not _reachable_ddim_steps(self.diffusion_steps, self.num_inference_steps):
            raise ValueError(
                f"num_inference_steps={self.num_inference_steps} cannot be reached with an integer stride over "
                f"diffusion_steps={self.diffusion_steps} (DDIM respacing); use a divisor-like count such as "
                f"{self.diffusion_steps // 10 or 1}"
            )
        if self.latent_dim % self.heads:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be divisible by heads ({self.heads})")
        if self.latent_dim % 2:
            raise ValueError(f"latent_dim must be even for the rotary embedding, got {self.latent_dim}")
        if self.cond_encoder_layers < 0:
            raise ValueError(f"cond_encoder_layers must be >= 0, got {self.cond_encoder_layers}")
        for name in ("cond_drop_prob", "dropout", "post_conv_dropout", "ddim_eta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.prediction_type != "x0":
            raise ValueError(
                f"prediction_type must be 'x0' (the only target upstream trains), got {self.prediction_type!r}"
            )
        if self.noise_schedule not in ("cosine", "linear"):
            raise ValueError(f"noise_schedule must be 'cosine' or 'linear', got {self.noise_schedule!r}")
        if not 0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE:g}], got {self.guidance_scale!r}")
        if self.lambda_vel < 0:
            raise ValueError(f"lambda_vel must be >= 0, got {self.lambda_vel!r}")
        if not 0 <= self.window_overlap < self.max_window_frames:
            raise ValueError(
                f"window_overlap must be in [0, {self.max_window_frames}) frames, got {self.window_overlap}"
            )
        if self.use_keyframes and self.window_overlap % self.keyframe_stride:
            raise ValueError(
                f"window_overlap ({self.window_overlap}) must be a multiple of keyframe_stride ({self.keyframe_stride}) "
                "so that windows stay aligned with the keyframes"
            )
        if self.quantizer.enabled and self.quantizer.ssl_dim != self.cond_feature_dim:
            raise ValueError(
                f"quantizer.ssl_dim ({self.quantizer.ssl_dim}) must equal cond_feature_dim ({self.cond_feature_dim}): "
                "the quantized features are the denoiser's conditioning"
            )
        if self.audio_encoder is not None:
            hidden = getattr(self.audio_encoder, "hidden_size", None)
            wanted = self.quantizer.ssl_dim if self.quantizer.enabled else self.cond_feature_dim
            if hidden != wanted:
                raise ValueError(
                    f"audio_encoder hidden_size ({hidden}) must equal "
                    f"{'quantizer.ssl_dim' if self.quantizer.enabled else 'cond_feature_dim'} ({wanted})"
                )

    @property
    def max_window_frames(self) -> int:
        """Longest motion sequence generated in one pass (upstream: 20 keyframes x 30 frames = 20 s at 30 fps)."""
        return self.max_keyframes * self.keyframe_stride


def _reachable_ddim_steps(train_steps: int, inference_steps: int) -> bool:
    """Whether `hf_tts.diffusion.ddim_timesteps(train_steps, inference_steps)` exists: `range(0, T, k)` has
    ceil(T / k) entries, which only falls as k grows, so the one stride to try is k = ceil(T / n), with k < T."""
    if inference_steps == train_steps:
        return True
    if not 0 < inference_steps < train_steps:
        return False
    stride = -(-train_steps // inference_steps)
    return stride < train_steps and -(-train_steps // stride) == inference_steps


__all__ = ["CFGMotionConfig", "VoiceQuantizerConfig", "CFG_MOTION_ARCHITECTURES"]
