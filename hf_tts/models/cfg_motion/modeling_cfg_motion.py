"""CFG motion model: audio2photoreal's FiLM diffusion transformer (voice -> face or body motion) with
classifier-free guidance done right, x0-prediction Gaussian diffusion with a DDIM sampler, windowed generation for
long conditioning, and optional voice front ends (GPT-SoVITS-style `ssl_proj` + residual VQ, a transformers speech
encoder for raw audio).

Classifier-free guidance: training replaces the conditioning of each sample, with probability `cond_drop_prob`, by
learned null embeddings (audio tokens + pooled FiLM vector with one draw, keyframes with an independent draw);
`cond_drop_prob=1` is the unconditional model. Sampling runs the conditional and unconditional halves in one
batched forward and returns `uncond + s * (cond - uncond)` per sample; samples with `s == 1` skip the
unconditional half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_tts.diffusion import DiffusionSchedule
from hf_tts.errors import InputError
from hf_tts.file_utils import check_finite
from hf_tts.layers.film import (
    DenseFiLM,
    FiLMDecoderLayer,
    InterleavedRotaryEmbedding,
    RotaryEncoderLayer,
    rotary_frequencies,
)
from hf_tts.layers.rvq import EuclideanCodebook, ResidualVectorQuantizer
from hf_tts.limits import MAX_GUIDANCE_SCALE, MAX_MOTION_FRAMES, MAX_SAMPLING_STEPS, check_number
from hf_tts.modeling_utils import HfTtsPreTrainedModel
from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig, VoiceQuantizerConfig

# Dilations of upstream's body post-conv stack (kernel 3 each); its receptive field is 1 + 2 * sum = 25 frames.
POST_CONV_DILATIONS = (1, 2, 3, 1, 2, 3)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) diffusion steps: [sin, cos] with frequencies exp(-i log(1e4) / (dim/2 - 1))."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=timesteps.device) * -(math.log(10000) / (half - 1)))
    angles = timesteps[:, None] * frequencies[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def keep_mask(cond_drop_prob: float | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli keep decision (True = keep the conditioning); exact at probabilities 0 and 1."""
    drop = torch.as_tensor(cond_drop_prob, dtype=torch.float32, device=device).expand(batch_size)
    if bool(((drop == 0) | (drop == 1)).all()):
        return drop == 0
    return torch.rand(batch_size, device=device) < 1 - drop


def frame_mask(mask: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """The (batch, frames) valid-frame mask, from that shape or upstream's (batch, 1, 1, frames) MDM layout."""
    if mask is None:
        return None
    if mask.dim() == 4 and mask.shape[1:3] == (1, 1):
        mask = mask[:, 0, 0]
    if tuple(mask.shape) != (batch, frames):
        raise InputError(
            f"mask must be (batch, frames) = ({batch}, {frames}) (or upstream's (batch, 1, 1, frames)), got shape "
            f"{tuple(mask.shape)}"
        )
    return mask


def check_keyframes(config: CFGMotionConfig, batch: int, frames: int, keyframes: torch.Tensor | None) -> None:
    """Raise an InputError unless `keyframes` (body models) is (batch, ceil(frames / keyframe_stride), nfeats)."""
    if keyframes is None:
        return
    if not config.use_keyframes:
        raise InputError(f"keyframes were given but the {config.architecture!r} model has no keyframe input")
    count = -(-frames // config.keyframe_stride)
    if tuple(keyframes.shape) != (batch, count, config.nfeats):
        raise InputError(
            f"keyframes must be (batch, ceil(frames / {config.keyframe_stride}), {config.nfeats}) = "
            f"({batch}, {count}, {config.nfeats}) for {frames} frames, got shape {tuple(keyframes.shape)}"
        )


class CFGMotionDenoiser(nn.Module):
    """audio2photoreal's `FiLMTransformer`: predicts the clean motion x0 from noisy motion, the diffusion step, the
    conditioning features and (body) the 1 fps keyframes."""

    def __init__(self, config: CFGMotionConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.latent_dim
        self.rotary = InterleavedRotaryEmbedding(dim)
        self.time_mlp = nn.Linear(dim, 4 * dim)
        self.to_time_cond = nn.Linear(4 * dim, dim)
        self.to_time_tokens = nn.Linear(4 * dim, 2 * dim)
        self.null_cond_embed = nn.Parameter(torch.randn(1, config.max_cond_len, dim))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, dim))
        self.norm_cond = nn.LayerNorm(dim)
        self.input_projection = nn.Linear(config.nfeats, dim)
        self.cond_projection = nn.Linear(config.cond_feature_dim, dim)
        self.cond_encoder = nn.ModuleList(
            RotaryEncoderLayer(dim, config.heads, config.ff_size, config.dropout, self.rotary)
            for _ in range(config.cond_encoder_layers)
        )
        self.pooled_cond_projection = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        if config.use_keyframes:
            self.null_keyframe_embed = nn.Parameter(torch.randn(1, config.max_keyframes, dim))
            self.keyframe_projection = nn.Linear(config.nfeats, dim)
            self.keyframe_norm = nn.LayerNorm(dim)
        self.decoder_layers = nn.ModuleList(
            FiLMDecoderLayer(dim, config.heads, config.ff_size, config.dropout, self.rotary, config.use_keyframes)
            for _ in range(config.layers)
        )
        self.final_layer = nn.Linear(dim, config.nfeats)
        if config.post_conv:
            hidden = max(256, config.nfeats)
            widths = [config.nfeats, hidden] + [config.nfeats] * len(POST_CONV_DILATIONS)
            self.post_convs = nn.ModuleList(
                nn.Conv1d(widths[i], widths[i + 1], kernel_size=3, dilation=d)
                for i, d in enumerate(POST_CONV_DILATIONS)
            )
            self.final_conv = nn.Conv1d(config.nfeats, config.nfeats, kernel_size=1)
        # Upstream's `init_weight` (xavier-normal, zero bias) covers these; the rest keep PyTorch's default init.
        xavier_modules = [self.decoder_layers, self.cond_encoder, self.final_layer]
        if config.post_conv:
            xavier_modules.append(self.post_convs)
        for group in xavier_modules:
            for module in group.modules():
                module._xavier_init = True
        # FiLM generators: zero-initialised (identity modulation) when config.init_adaln_zero.
        for module in self.modules():
            if isinstance(module, DenseFiLM):
                module.linear._film_generator = True

    def _check_inputs(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int,
        cond_features: torch.Tensor,
        keyframes: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raise an InputError on inconsistent inputs; return the (B,) timesteps and the (B, T) mask."""
        config = self.config
        if x.dim() != 3 or x.shape[-1] != config.nfeats:
            raise InputError(f"x must be (batch, frames, {config.nfeats}) motion, got shape {tuple(x.shape)}")
        batch, frames = x.shape[:2]
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch)
        if cond_features.dim() != 3 or cond_features.shape[-1] != config.cond_feature_dim:
            raise InputError(
                f"cond_features must be (batch, length, {config.cond_feature_dim}), got shape "
                f"{tuple(cond_features.shape)}: the feature width must equal the config's cond_feature_dim"
            )
        if cond_features.shape[0] != batch or timesteps.shape != (batch,):
            raise InputError(
                f"batch sizes differ: x has {batch}, cond_features {cond_features.shape[0]}, timesteps "
                f"{tuple(timesteps.shape)} (expected ({batch},))"
            )
        if bool(((timesteps < 0) | (timesteps >= config.diffusion_steps)).any()):
            raise InputError(
                f"timesteps must be diffusion steps in [0, {config.diffusion_steps}), got {timesteps.tolist()}"
            )
        if cond_features.shape[1] > config.max_cond_len:
            raise InputError(
                f"cond_features has {cond_features.shape[1]} frames but the denoiser takes at most max_cond_len="
                f"{config.max_cond_len}; use generate(), which splits long conditioning into windows"
            )
        check_keyframes(config, batch, frames, keyframes)
        if config.use_keyframes and frames > config.max_window_frames:
            raise InputError(
                f"{frames} frames need more than max_keyframes={config.max_keyframes} keyframe slots; use generate(), "
                "which splits long sequences into windows"
            )
        return timesteps, frame_mask(mask, batch, frames)

    def _keyframe_tokens(
        self,
        keyframes: torch.Tensor | None,
        mask: torch.Tensor | None,
        frames: int,
        cond_drop_prob: float | torch.Tensor,
        reference: torch.Tensor,
    ) -> torch.Tensor:
        batch = reference.shape[0]
        count = -(-frames // self.config.keyframe_stride)
        null_tokens = self.null_keyframe_embed[:, :count].to(reference.dtype).expand(batch, -1, -1)
        if keyframes is None:
            return null_tokens
        if mask is not None:
            # Keyframes inside padding are unknown: zero them as upstream does (without editing the caller's tensor).
            known = mask[:, :: self.config.keyframe_stride, None].bool()
            keyframes = torch.where(known, keyframes, torch.zeros((), dtype=keyframes.dtype, device=keyframes.device))
        tokens = self.keyframe_norm(self.keyframe_projection(keyframes))
        keep = keep_mask(cond_drop_prob, batch, reference.device)
        return torch.where(keep[:, None, None], tokens, null_tokens)

    def _post_convs(self, output: torch.Tensor) -> torch.Tensor:
        hidden = F.pad(output.transpose(1, 2), (2 * sum(POST_CONV_DILATIONS), 0))
        for conv in self.post_convs:
            update = F.leaky_relu(conv(hidden), negative_slope=0.2)
            # Upstream keys this dropout on its data split; here it follows train()/eval().
            update = F.dropout(update, self.config.post_conv_dropout, training=self.training)
            if update.shape[1] == hidden.shape[1]:
                hidden = (hidden[:, :, -update.shape[-1] :] + update) / 2.0
            else:
                hidden = update
        return self.final_conv(hidden).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int,
        cond_features: torch.Tensor,
        keyframes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cond_drop_prob: float | torch.Tensor = 0.0,
    ) -> torch.Tensor:
        """Predicted x0 (B, T, nfeats) from noisy motion x (B, T, nfeats), original diffusion steps (B,) (or one step
        for the whole batch), conditioning (B, L, cond_feature_dim), body keyframes (B, ceil(T / stride), nfeats) and
        a (B, T) bool mask of valid frames. `cond_drop_prob` (a float or per-sample (B,) tensor) replaces the
        conditioning by the null embeddings: 0 = conditional, 1 = unconditional."""
        timesteps, mask = self._check_inputs(x, timesteps, cond_features, keyframes, mask)
        batch, frames = x.shape[:2]
        hidden = self.input_projection(x)
        keep = keep_mask(cond_drop_prob, batch, x.device)
        # Dropped samples take the null embeddings; the conditioning path runs on the kept samples only (the
        # unconditional half of guided sampling costs no cond projection / cond encoder).
        null_tokens = self.null_cond_embed[:, : cond_features.shape[1]].to(x.dtype)
        cond_tokens = null_tokens.expand(batch, -1, -1)
        cond_hidden = self.null_cond_hidden.to(x.dtype).expand(batch, -1)
        kept = torch.nonzero(keep).flatten()
        if kept.numel():
            kept_tokens = self.cond_projection(cond_features[kept])
            for layer in self.cond_encoder:
                kept_tokens = layer(kept_tokens)
            cond_tokens = cond_tokens.index_copy(0, kept, kept_tokens)
            cond_hidden = cond_hidden.index_copy(0, kept, self.pooled_cond_projection(kept_tokens.mean(dim=1)))

        time_hidden = F.mish(self.time_mlp(timestep_embedding(timesteps, self.config.latent_dim).to(x.dtype)))
        film_cond = self.to_time_cond(time_hidden) + cond_hidden
        time_tokens = self.to_time_tokens(time_hidden).view(batch, 2, -1)
        memory = self.norm_cond(torch.cat((cond_tokens, time_tokens), dim=1))
        keyframe_memory = None
        if self.config.use_keyframes:
            keyframe_memory = self._keyframe_tokens(keyframes, mask, frames, cond_drop_prob, hidden)

        for layer in self.decoder_layers:
            hidden = layer(hidden, memory, film_cond, keyframe_memory)
        output = self.final_layer(hidden)
        if self.config.post_conv:
            output = self._post_convs(output)
        return output


class VoiceQuantizer(nn.Module):
    """GPT-SoVITS' semantic front end: `ssl_proj` then residual VQ, on channels-first SSL features (B, D, T)."""

    def __init__(self, config: VoiceQuantizerConfig) -> None:
        super().__init__()
        self.ssl_proj = nn.Conv1d(config.ssl_dim, config.ssl_dim, kernel_size=config.stride, stride=config.stride)
        self.quantizer = ResidualVectorQuantizer(
            config.ssl_dim,
            config.n_q,
            config.bins,
            commitment_weight=config.commitment_weight,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            decay=config.decay,
            epsilon=config.epsilon,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
        )

    def forward(self, ssl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, T50) -> (quantized (B, D, T'), codes (n_q, B, T'), commitment loss)."""
        return self.quantizer(self.ssl_proj(ssl))

    def encode(self, ssl: torch.Tensor) -> torch.Tensor:
        """Semantic tokens (n_q, B, T') without touching the codebooks."""
        return self.quantizer.encode(self.ssl_proj(ssl))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.decode(codes)


@dataclass
class CFGMotionOutput(ModelOutput):
    """`loss` = x0 MSE + lambda_vel * velocity MSE + commitment loss (trainable quantizer only)."""

    loss: torch.Tensor | None = None
    x0_loss: torch.Tensor | None = None
    velocity_loss: torch.Tensor | None = None
    commitment_loss: torch.Tensor | None = None
    pred_x0: torch.Tensor | None = None


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over valid frames and all features (upstream's `masked_l2`), averaged over the batch."""
    weights = mask.to(prediction.dtype)[..., None]
    per_sample = ((prediction - target) ** 2 * weights).flatten(1).sum(1)
    valid = weights.flatten(1).sum(1).clamp(min=1) * prediction.shape[-1]
    return (per_sample / valid).mean()


class CFGMotionPreTrainedModel(HfTtsPreTrainedModel):
    config_class = CFGMotionConfig
    base_model_prefix = "cfg_motion"
    main_input_name = "cond_features"
    # forward's loss is a mean; keep Trainer's gradient-accumulation scaling.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            if getattr(module, "_film_generator", False) and config.init_adaln_zero:
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            elif getattr(module, "_xavier_init", False) and config.init_xavier:
                init.xavier_normal_(module.weight)
                init.zeros_(module.bias)
            else:
                module.reset_parameters()
        elif isinstance(module, nn.MultiheadAttention):
            # in_proj is a raw parameter the default init never touches: xavier-uniform as PyTorch builds it.
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, InterleavedRotaryEmbedding):
            init.copy_(module.inv_freq, rotary_frequencies(module.dim))
        elif isinstance(module, EuclideanCodebook):
            init.constant_(module.inited, 0.0 if module.kmeans_init else 1.0)
            init.zeros_(module.cluster_size)
            if module.kmeans_init:
                init.zeros_(module.embed)
            else:
                init.kaiming_uniform_(module.embed)
            init.copy_(module.embed_avg, module.embed)
        elif isinstance(module, CFGMotionDenoiser):
            init.normal_(module.null_cond_embed)
            init.normal_(module.null_cond_hidden)
            if config.use_keyframes:
                init.normal_(module.null_keyframe_embed)


class CFGMotionModel(CFGMotionPreTrainedModel):
    r"""Voice -> motion diffusion model. `model.denoiser(...)` is the x0 predictor, `model.generate(...)` samples
    motion with DDIM and classifier-free guidance, `model(...)` returns the training loss first (for `Trainer`).
    Optional front ends: `model.voice_quantizer` (config.quantizer.enabled) and `model.audio_encoder`
    (config.audio_encoder); with `freeze_quantizer` / `freeze_audio_encoder` they are frozen in every sense
    (no gradients, eval mode through `train()`, run under no_grad, absent from `optimizer_param_groups()`)."""

    def __init__(self, config: CFGMotionConfig) -> None:
        super().__init__(config)
        self.denoiser = CFGMotionDenoiser(config)
        self.voice_quantizer = VoiceQuantizer(config.quantizer) if config.quantizer.enabled else None
        self.audio_encoder = AutoModel.from_config(config.audio_encoder) if config.audio_encoder is not None else None
        self.schedule = DiffusionSchedule.create(config.noise_schedule, config.diffusion_steps)
        self.post_init()
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The front ends the config freezes."""
        frozen = []
        if self.voice_quantizer is not None and self.config.freeze_quantizer:
            frozen.append(self.voice_quantizer)
        if self.audio_encoder is not None and self.config.freeze_audio_encoder:
            frozen.append(self.audio_encoder)
        return frozen

    def train(self, mode: bool = True) -> CFGMotionModel:
        super().train(mode)
        # Frozen front ends never train: no EMA codebook updates, no dropout, no straight-through path. The
        # requires_grad flags are (re)set here too because `from_pretrained` replaces the parameters and then calls
        # eval(), which lands here.
        for module in self.frozen_modules():
            module.eval()
            module.requires_grad_(False)
        return self

    def optimizer_param_groups(self, weight_decay: float = 0.0) -> list[dict]:
        """AdamW-style groups of the trainable parameters (frozen ones excluded): weights with `weight_decay`,
        biases, norms and null embeddings without."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            (decay if parameter.dim() >= 2 and "null_" not in name else no_decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def _run_front_end(self, module: nn.Module, frozen: bool, *inputs: torch.Tensor):
        if frozen:
            with torch.no_grad():
                return module(*inputs)
        return module(*inputs)

    def encode_conditioning(
        self, cond_features: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Denoiser conditioning (B, L, cond_feature_dim) from precomputed features (B, L, C) or raw audio
        (B, samples) at `config.audio_sampling_rate`; returns (features, commitment loss, semantic codes or None)."""
        if (cond_features is None) == (audio is None):
            raise InputError("give exactly one of cond_features (precomputed features) or audio (raw waveform)")
        if audio is not None:
            if self.audio_encoder is None:
                raise InputError(
                    "this model has no audio encoder (config.audio_encoder is None): pass precomputed cond_features"
                )
            if audio.dim() != 2:
                raise InputError(f"audio must be (batch, samples) mono waveforms, got shape {tuple(audio.shape)}")
            encoded = self._run_front_end(self.audio_encoder, self.config.freeze_audio_encoder, audio)
            cond_features = encoded.last_hidden_state
        zero = cond_features.new_zeros(())
        if self.voice_quantizer is None:
            return cond_features, zero, None
        ssl_dim = self.config.quantizer.ssl_dim
        if cond_features.dim() != 3 or cond_features.shape[-1] != ssl_dim:
            raise InputError(
                f"the voice quantizer takes (batch, frames, {ssl_dim}) SSL features, got shape "
                f"{tuple(cond_features.shape)}"
            )
        quantized, codes, commitment = self._run_front_end(
            self.voice_quantizer, self.config.freeze_quantizer, cond_features.transpose(1, 2)
        )
        return quantized.transpose(1, 2), commitment, codes

    def forward(
        self,
        motion: torch.Tensor,
        cond_features: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        keyframes: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        cond_drop_prob: float | None = None,
        return_loss: bool = True,
    ) -> CFGMotionOutput:
        """Diffusion training loss for clean `motion` (B, T, nfeats) with a (B, T) valid-frame `mask`. Steps are
        drawn uniformly and the conditioning dropped with `config.cond_drop_prob` in training mode (0 in eval mode)
        unless given. Body models without `keyframes` use the ground-truth motion every `keyframe_stride` frames,
        as upstream's data loader does."""
        if motion.dim() != 3 or motion.shape[-1] != self.config.nfeats:
            raise InputError(f"motion must be (batch, frames, {self.config.nfeats}), got shape {tuple(motion.shape)}")
        batch, frames = motion.shape[:2]
        cond, commitment, _ = self.encode_conditioning(cond_features, audio)
        mask = frame_mask(mask, batch, frames)
        if mask is None:
            mask = torch.ones(batch, frames, dtype=torch.bool, device=motion.device)
        if self.config.use_keyframes and keyframes is None:
            keyframes = motion[:, :: self.config.keyframe_stride]
        if timesteps is None:
            timesteps = torch.randint(0, self.config.diffusion_steps, (batch,), device=motion.device)
        if noise is None:
            noise = torch.randn_like(motion)
        if cond_drop_prob is None:
            cond_drop_prob = self.config.cond_drop_prob if self.training else 0.0
        noisy = self.schedule.add_noise(motion, noise, timesteps)
        pred_x0 = self.denoiser(noisy, timesteps, cond, keyframes, mask, cond_drop_prob=cond_drop_prob)
        x0_loss = masked_mse(pred_x0, motion, mask)
        velocity_loss = masked_mse(pred_x0.diff(dim=1), motion.diff(dim=1), mask[:, 1:])
        loss = x0_loss + self.config.lambda_vel * velocity_loss + commitment
        return CFGMotionOutput(
            loss=loss, x0_loss=x0_loss, velocity_loss=velocity_loss, commitment_loss=commitment, pred_x0=pred_x0
        )

    def _guidance_scales(self, guidance_scale: float | Sequence[float] | torch.Tensor | None, batch: int):
        value = self.config.guidance_scale if guidance_scale is None else guidance_scale
        scales = torch.as_tensor(value, dtype=torch.float32, device=self.device).flatten()
        if scales.numel() == 1:
            scales = scales.expand(batch)
        if scales.numel() != batch:
            raise InputError(f"guidance_scale has {scales.numel()} values for a batch of {batch}")
        if not bool(scales.isfinite().all()):
            raise InputError(f"guidance_scale must be finite, got {scales.tolist()}")
        if bool((scales < 0).any()):
            raise InputError(f"guidance_scale must be >= 0, got {scales.tolist()}")
        if bool((scales > MAX_GUIDANCE_SCALE).any()):
            raise InputError(f"guidance_scale must be at most {MAX_GUIDANCE_SCALE:g}, got {scales.tolist()}")
        return scales

    def guided_x0(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond_features: torch.Tensor,
        scales: torch.Tensor,
        keyframes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classifier-free guided x0: `uncond + s * (cond - uncond)` per sample, both halves in one forward; samples
        with s == 1 are computed conditionally only."""
        guided = torch.nonzero(scales != 1).flatten()
        if guided.numel() == 0:
            return self.denoiser(x, timesteps, cond_features, keyframes, mask, cond_drop_prob=0.0)
        batch = x.shape[0]

        def stack(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else torch.cat((tensor, tensor[guided]))

        drop = torch.cat((torch.zeros(batch, device=x.device), torch.ones(guided.numel(), device=x.device)))
        both = self.denoiser(
            stack(x), stack(timesteps), stack(cond_features), stack(keyframes), stack(mask), cond_drop_prob=drop
        )
        cond, uncond = both[:batch], both[batch:]
        scale = scales[guided].to(cond.dtype)[:, None, None]
        return cond.index_copy(0, guided, uncond + scale * (cond[guided] - uncond))

    def _sample_window(
        self,
        cond_features: torch.Tensor,
        latents: torch.Tensor,
        scales: torch.Tensor,
        keyframes: torch.Tensor | None,
        mask: torch.Tensor | None,
        schedule: DiffusionSchedule,
        eta: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        x = latents
        pred_x0 = latents
        for index in reversed(range(len(schedule.timesteps))):
            timesteps = torch.full((x.shape[0],), schedule.timesteps[index], device=x.device, dtype=torch.long)
            pred_x0 = self.guided_x0(x, timesteps, cond_features, scales, keyframes, mask)
            x = schedule.ddim_step(x, pred_x0, index, eta=eta, generator=generator)
        # Upstream's DDIM loop returns the last x0 prediction, not the last sample.
        return pred_x0

    def _windows(self, frames: int, cond_len: int) -> tuple[list[tuple[int, int, int, int]], int]:
        """(frame start, frame end, cond start, cond end) of windows covering a long sequence, and their overlap in
        frames. Conditioning maps to motion proportionally (cond frame = motion frame * cond_len / frames)."""
        config = self.config
        ratio = cond_len / frames
        window = min(config.max_window_frames, int(config.max_cond_len / ratio))
        overlap = min(config.window_overlap, window // 2)
        if config.use_keyframes:
            window -= window % config.keyframe_stride
            overlap -= overlap % config.keyframe_stride
        if window <= overlap or window <= 0:
            raise InputError(
                f"conditioning of {cond_len} frames for {frames} motion frames is too dense to fit max_cond_len="
                f"{config.max_cond_len} into a window"
            )
        windows, start = [], 0
        while True:
            end = min(start + window, frames)
            cond_start = int(start * ratio)
            cond_end = min(cond_len, cond_start + config.max_cond_len, max(cond_start + 1, math.ceil(end * ratio)))
            windows.append((start, end, cond_start, cond_end))
            if end >= frames:
                return windows, overlap
            start += window - overlap

    @torch.no_grad()
    def generate(
        self,
        cond_features: torch.Tensor | None = None,
        num_frames: int | None = None,
        guidance_scale: float | Sequence[float] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        keyframes: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        *,
        audio: torch.Tensor | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample motion (B, num_frames, nfeats) with DDIM (`num_inference_steps`, default config) and classifier-free
        guidance (`guidance_scale`: one value or one per sample; default per architecture). `latents` replaces the
        initial noise. Conditioning longer than `max_cond_len` (or motion longer than `max_keyframes *
        keyframe_stride` frames) is generated in windows overlapping by `window_overlap` frames, blended linearly
        across each overlap. With `audio` (B, samples) the number of frames defaults to its duration."""
        config = self.config
        if audio is not None and num_frames is None:
            num_frames = round(audio.shape[-1] / config.audio_sampling_rate * config.fps)
        if num_frames is None:
            raise InputError("num_frames is required with cond_features (audio sets it from its length)")
        # Input checks before any work: a length within the cap (motion memory grows with it), conditioning that
        # holds numbers (NaN conditioning gives all-NaN motion) and at least one frame of it.
        check_number("num_frames", num_frames, 1, MAX_MOTION_FRAMES, integer=True)
        steps = config.num_inference_steps if num_inference_steps is None else num_inference_steps
        check_number("num_inference_steps", steps, None, None, integer=True)
        if steps <= 0:
            raise InputError(f"num_inference_steps must be >= 1, got {steps}")
        if num_inference_steps is not None and steps > MAX_SAMPLING_STEPS:
            raise InputError(f"num_inference_steps must be at most {MAX_SAMPLING_STEPS}, got {steps}")
        for name, given in (("cond_features", cond_features), ("audio", audio)):
            if given is not None:
                check_finite(given, name)
        cond, _, _ = self.encode_conditioning(cond_features, audio)
        if cond.dim() != 3 or cond.shape[-1] != config.cond_feature_dim or cond.shape[1] == 0:
            raise InputError(
                f"cond_features must be (batch, length >= 1, {config.cond_feature_dim}), got shape {tuple(cond.shape)}"
            )
        batch = cond.shape[0]
        scales = self._guidance_scales(guidance_scale, batch)
        shape = (batch, num_frames, config.nfeats)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        mask = frame_mask(mask, batch, num_frames)
        check_keyframes(config, batch, num_frames, keyframes)
        schedule = self.schedule.respaced(steps)
        eta = config.ddim_eta if eta is None else eta

        if cond.shape[1] <= config.max_cond_len and num_frames <= config.max_window_frames:
            return self._sample_window(cond, latents, scales, keyframes, mask, schedule, eta, generator)

        output = torch.zeros(shape, device=cond.device, dtype=cond.dtype)
        total_weight = torch.zeros(num_frames, device=cond.device, dtype=cond.dtype)
        windows, overlap = self._windows(num_frames, cond.shape[1])
        for position, (start, end, cond_start, cond_end) in enumerate(windows):
            stride = config.keyframe_stride
            window_keyframes = None if keyframes is None else keyframes[:, start // stride : -(-end // stride)]
            window_mask = None if mask is None else mask[:, start:end]
            sample = self._sample_window(
                cond[:, cond_start:cond_end],
                latents[:, start:end],
                scales,
                window_keyframes,
                window_mask,
                schedule,
                eta,
                generator,
            )
            weight = torch.ones(end - start, device=cond.device, dtype=cond.dtype)
            ramp_length = min(overlap, end - start)
            ramp = torch.arange(1, ramp_length + 1, device=cond.device, dtype=cond.dtype) / (ramp_length + 1)
            if position > 0 and ramp_length:
                weight[:ramp_length] = torch.minimum(weight[:ramp_length], ramp)
            if position < len(windows) - 1 and ramp_length:
                weight[-ramp_length:] = torch.minimum(weight[-ramp_length:], ramp.flip(0))
            output[:, start:end] += sample * weight[None, :, None]
            total_weight[start:end] += weight
        return output / total_weight[None, :, None]


__all__ = ["CFGMotionModel", "CFGMotionPreTrainedModel", "CFGMotionOutput", "CFGMotionDenoiser", "VoiceQuantizer"]
