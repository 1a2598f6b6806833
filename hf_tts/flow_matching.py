"""Conditional flow matching for F5-TTS / E2-TTS: the training loss, fixed-grid ODE sampling (euler, midpoint),
upstream's EPSS time grid, sway sampling, classifier-free guidance in one packed batch, the backbone parts both
families share and the model base `FlowMatchingTTSModel` that `F5TTSModel` and `E2TTSModel` extend.

Semantics follow upstream `CFM` (f5-tts 1.1.20); see the method docstrings for the few deliberate differences.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_tts.audio import LogMelSpectrogram
from hf_tts.configuration_utils import FlowMatchingTTSConfig
from hf_tts.errors import InputError
from hf_tts.layers.convnext import GlobalResponseNorm
from hf_tts.layers.embeddings import InputEmbedding, TextEmbedding, TimestepEmbedding, text_ids_from_inputs
from hf_tts.layers.normalization import RMSNorm, ScaledL2RMSNorm, ZeroInitLinear
from hf_tts.layers.rotary import RotaryEmbedding
from hf_tts.limits import MAX_CHUNK_SECONDS
from hf_tts.modeling_utils import HfTtsPreTrainedModel
from hf_tts.synthesis import SpeechSynthesisMixin, check_sampling_options

# Upstream's Empirically Pruned Step Sampling grids (in 1/32 units) for low step counts.
EPSS_TIMESTEPS: dict[int, list[int]] = {
    5: [0, 2, 4, 8, 16, 32],
    6: [0, 2, 4, 6, 8, 16, 32],
    7: [0, 2, 4, 6, 8, 16, 24, 32],
    10: [0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32],
    12: [0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32],
    16: [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32],
}
ODE_METHODS = ("euler", "midpoint")


class _ConfigDefault:
    """Marks a `sample()` argument whose default comes from the config (so that None can mean "disabled")."""

    def __repr__(self) -> str:
        return "<config default>"


CONFIG_DEFAULT = _ConfigDefault()


def lens_to_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) lengths -> (B, length) bool mask, True on the first `lengths[b]` positions."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def random_span_mask(lengths: torch.Tensor, frac_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Upstream's `mask_from_frac_lengths`: per sample a span of `int(frac * len)` frames at a uniform start."""
    span = (frac_lengths * lengths).long()
    start = ((lengths - span) * torch.rand_like(frac_lengths)).long().clamp(min=0)
    positions = torch.arange(length, device=lengths.device)[None, :]
    return (positions >= start[:, None]) & (positions < (start + span)[:, None])


def time_grid(
    steps: int,
    use_epss: bool = True,
    sway_sampling_coef: float | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The (steps + 1,) ODE time grid: the EPSS grid when `use_epss` and one exists for `steps`, uniform otherwise,
    then sway sampling `t + s * (cos(pi/2 t) - 1 + t)` unless `sway_sampling_coef` is None."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if use_epss and steps in EPSS_TIMESTEPS:
        grid = (1 / 32) * torch.tensor(EPSS_TIMESTEPS[steps], device=device, dtype=dtype)
    else:
        grid = torch.linspace(0, 1, steps + 1, device=device, dtype=dtype)
    if sway_sampling_coef is not None:
        grid = grid + sway_sampling_coef * (torch.cos(torch.pi / 2 * grid) - 1 + grid)
    return grid


def solve_ode(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    grid: torch.Tensor,
    method: str = "euler",
    progress_callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate dy/dt = velocity(t, y) over `grid` with one fixed step per interval, exactly as torchdiffeq's
    fixed-grid `euler` / `midpoint` solvers; returns y at grid[-1]. `progress_callback(i, n)` runs after step i
    (0-based) of n. No host synchronisation happens inside the loop."""
    if method not in ODE_METHODS:
        raise InputError(f"method must be one of {', '.join(ODE_METHODS)}, got {method!r}")
    total = grid.shape[0] - 1
    y = y0
    for index in range(total):
        t0 = grid[index]
        dt = grid[index + 1] - t0
        if method == "euler":
            dy = dt * velocity(t0, y)
        else:
            half_dt = 0.5 * dt
            y_mid = y + velocity(t0, y) * half_dt
            dy = dt * velocity(t0 + half_dt, y_mid)
        y = y + dy
        if progress_callback is not None:
            progress_callback(index, total)
    return y


class FlowMatchingBackbone(nn.Module):
    """What the DiT (F5) and UNetT (E2) backbones share: time, text and input embeddings and the rotary table.

    Subclasses implement `transform(h, t_emb, mask, mask_keys)`: the transformer stack from the input embedding to
    the predicted flow.
    `per_sample_lengths`: F5 (upstream 1.1.10+) limits the text embedding and the convolutional position embedding
    to each sample's `mask` length; E2 embeds text for the padded length and convolves unmasked, as upstream.
    """

    per_sample_lengths: ClassVar[bool] = True

    def __init__(self, config: FlowMatchingTTSConfig):
        super().__init__()
        self.attn_mask_enabled = config.attn_mask_enabled
        self.time_embed = TimestepEmbedding(config.dim)
        self.text_embed = TextEmbedding(
            config.text_num_embeds,
            config.text_embed_dim,
            mask_padding=config.text_mask_padding,
            conv_layers=config.conv_layers,
        )
        self.input_embed = InputEmbedding(config.mel_dim, config.text_embed_dim, config.dim)
        self.rotary_embed = RotaryEmbedding(config.dim_head)

    def embed_text(
        self,
        text: torch.Tensor,
        seq_len: int,
        mask: torch.Tensor | None = None,
        drop_text: bool | torch.Tensor = False,
        cfg_infer: bool = False,
    ) -> torch.Tensor:
        """Text embedding aligned to `seq_len` frames; with `cfg_infer`, the conditional and the dropped-text
        embeddings stacked on the batch axis (2B). It depends on neither x nor t, so sampling computes it once."""
        valid = mask if self.per_sample_lengths else None
        if cfg_infer:
            return torch.cat(
                (self.text_embed(text, seq_len, valid), self.text_embed(text, seq_len, valid, drop_text=True))
            )
        return self.text_embed(text, seq_len, valid, drop_text=drop_text)

    def embed_text_isolated(
        self, text: torch.Tensor, lengths: torch.Tensor, seq_len: int, cfg_infer: bool = False
    ) -> torch.Tensor:
        """`embed_text` of each sample alone, at its own length `lengths[b]`, zero-padded to `seq_len` frames.

        The ConvNeXt text blocks normalise over time (GRN), so in a padded batch a short sample's embedding depends
        on how far it is padded (upstream behaves the same); embedding each sample alone removes that dependence.
        With `cfg_infer`, the conditional rows come first, then the dropped-text rows, as `embed_text` stacks them."""
        rows = [
            F.pad(self.embed_text(text[b : b + 1], length, cfg_infer=cfg_infer), (0, 0, 0, seq_len - length))
            for b, length in enumerate(lengths.tolist())
        ]
        if not cfg_infer:
            return torch.cat(rows)
        return torch.cat([row[:1] for row in rows] + [row[1:] for row in rows])

    def embed_inputs(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor | float,
        mask: torch.Tensor | None,
        drop_audio_cond: bool | torch.Tensor,
        drop_text: bool | torch.Tensor,
        cfg_infer: bool,
        text_embed: torch.Tensor | None,
        isolate_samples: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (input embedding (B', N, dim), time embedding (B', dim), mask (B', N) or None), B' = 2B with
        `cfg_infer` (conditional first, then audio and text dropped)."""
        batch, seq_len = x.shape[:2]
        time = torch.as_tensor(time, device=x.device, dtype=x.dtype)
        if time.ndim == 0:
            time = time.repeat(batch)
        t_emb = self.time_embed(time)
        if text_embed is None:
            text_embed = self.embed_text(text, seq_len, mask, drop_text=drop_text, cfg_infer=cfg_infer)
        if cfg_infer:
            x = torch.cat((x, x))
            cond = torch.cat((cond, torch.zeros_like(cond)))
            t_emb = torch.cat((t_emb, t_emb))
            mask = torch.cat((mask, mask)) if mask is not None else None
            drop_audio_cond = False
        conv_mask = mask if self.per_sample_lengths or isolate_samples else None
        h = self.input_embed(x, cond, text_embed, drop_audio_cond=drop_audio_cond, mask=conv_mask)
        return h, t_emb, mask

    def transform(
        self, h: torch.Tensor, t_emb: torch.Tensor, mask: torch.Tensor | None, mask_keys: bool
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor | float,
        mask: torch.Tensor | None = None,
        drop_audio_cond: bool | torch.Tensor = False,
        drop_text: bool | torch.Tensor = False,
        cfg_infer: bool = False,
        text_embed: torch.Tensor | None = None,
        isolate_samples: bool = False,
    ) -> torch.Tensor:
        """Predicted flow (B, N, mel_dim) of upstream's transformer.

        x, cond (B, N, mel_dim); text (B, T) ids padded with -1; time (B,) or scalar; mask (B, N) valid frames.
        drop_* are bools or (B,) bool tensors. `cfg_infer` returns the packed (2B, N, mel_dim) batch: conditional,
        then audio and text dropped. `text_embed` is a precomputed `embed_text(...)` for the same inputs.
        `isolate_samples`: padded frames reach no valid frame (attention keys and both position convolutions are
        masked whatever `config.attn_mask_enabled` says); pass an `embed_text_isolated(...)` text embedding with it.
        """
        h, t_emb, mask = self.embed_inputs(
            x, cond, text, time, mask, drop_audio_cond, drop_text, cfg_infer, text_embed, isolate_samples
        )
        return self.transform(h, t_emb, mask, self.attn_mask_enabled or isolate_samples)


@dataclass
class FlowMatchingOutput(ModelOutput):
    """Output of `FlowMatchingTTSModel.forward`.

    loss: mean squared error between predicted and target flow over the masked span (all mel channels).
    prediction: (B, N, mel_dim) predicted flow.
    span_mask: (B, N) bool, the random span the model had to infill (the loss region).
    """

    loss: torch.FloatTensor | None = None
    prediction: torch.FloatTensor | None = None
    span_mask: torch.BoolTensor | None = None


class FlowMatchingTTSModel(SpeechSynthesisMixin, HfTtsPreTrainedModel):
    """Base of F5TTSModel / E2TTSModel: `backbone` (parameter names = upstream's `transformer.*`), `mel_spec`,
    `sample()` (upstream `CFM.sample`) and a training `forward` returning the flow-matching loss first."""

    config_class = FlowMatchingTTSConfig
    backbone_class: ClassVar[type[FlowMatchingBackbone]]
    main_input_name = "mel"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # forward() returns a per-batch mean and takes no `num_items_in_batch`: Trainer must divide by the number of
    # gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: FlowMatchingTTSConfig):
        super().__init__(config)
        self.backbone = self.backbone_class(config)
        self.mel_spec = LogMelSpectrogram(
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            n_mels=config.mel_dim,
            sampling_rate=config.sampling_rate,
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # A local folder whose weights do not fit its config gets one clear sentence, not a load report.
        from hf_tts.models.checkpoint_check import check_pretrained_folder

        path, config = pretrained_model_name_or_path, kwargs.get("config")
        if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
            if not isinstance(config, FlowMatchingTTSConfig):
                config = cls.config_class.from_pretrained(path)
            check_pretrained_folder(path, cls, config)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Upstream's PyTorch default init; inside transformers' init pass torch.nn.init is guarded, so
        # reset_parameters() never touches weights loaded from a checkpoint.
        if isinstance(module, ZeroInitLinear) and self.config.init_adaln_zero:
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding, nn.LayerNorm)):
            module.reset_parameters()
        elif isinstance(module, GlobalResponseNorm):
            init.zeros_(module.gamma)
            init.zeros_(module.beta)
        elif isinstance(module, ScaledL2RMSNorm):
            init.ones_(module.g)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, (RotaryEmbedding, LogMelSpectrogram)):
            # non-persistent buffers: from_pretrained leaves them as uninitialised memory
            module.reset_buffers()

    # ---------------------------------------------------------------- training

    def draw_condition_drops(self, batch_size: int) -> tuple[bool | torch.Tensor, bool | torch.Tensor]:
        """Classifier-free-guidance dropout decisions (drop_audio_cond, drop_text).

        Audio cond is dropped with `audio_drop_prob`; independently, both are dropped with `cond_drop_prob`.
        `config.cfg_drop_per_sample=True` draws a (B,) decision per sample (torch RNG); False draws one decision for
        the whole batch with Python's `random.random()`, exactly as upstream.
        """
        config = self.config
        if config.cfg_drop_per_sample:
            drop_audio = torch.rand(batch_size, device=self.device) < config.audio_drop_prob
            drop_all = torch.rand(batch_size, device=self.device) < config.cond_drop_prob
            return drop_audio | drop_all, drop_all
        drop_audio = random.random() < config.audio_drop_prob
        drop_all = random.random() < config.cond_drop_prob
        return drop_audio or drop_all, drop_all

    def forward(
        self,
        mel: torch.Tensor,
        text: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> FlowMatchingOutput | tuple:
        """Flow-matching loss of upstream `CFM.forward`: mel (B, N, mel_dim), text (B, T) ids padded with -1,
        mel_lengths (B,) valid frames (default: all N). A random span of 70-100% of each sample is infilled from
        noise at a uniform flow time; the rest is the audio prompt. The padding mask is passed to the backbone.

        Instead of `text`, what the tokenizer returns is accepted (`input_ids` padded with its pad id,
        config.text_num_embeds, and `attention_mask`), turned into upstream's -1 padded ids first, so
        `model(mel=mel, **tokenizer(texts, padding=True, return_tensors="pt"))` trains exactly as the -1 padded ids
        do."""
        text = text_ids_from_inputs(text, input_ids, attention_mask, self.config.text_num_embeds)
        if mel.ndim != 3 or mel.shape[-1] != self.config.mel_dim:
            raise InputError(f"mel must have shape (batch, frames, {self.config.mel_dim}), got {tuple(mel.shape)}")
        batch, seq_len = mel.shape[:2]
        text = text.to(mel.device)
        if mel_lengths is None:
            mel_lengths = torch.full((batch,), seq_len, device=mel.device, dtype=torch.long)
        mel_lengths = mel_lengths.to(mel.device)
        mask = lens_to_mask(mel_lengths, seq_len)

        low, high = self.config.frac_lengths_mask
        frac_lengths = torch.zeros(batch, device=mel.device).float().uniform_(low, high)
        span_mask = random_span_mask(mel_lengths, frac_lengths, seq_len) & mask

        x1 = mel
        x0 = torch.randn_like(x1)
        time = torch.rand(batch, dtype=mel.dtype, device=mel.device)
        t = time[:, None, None]
        noisy = (1 - t) * x0 + t * x1
        flow = x1 - x0
        cond = torch.where(span_mask[..., None], torch.zeros_like(x1), x1)

        drop_audio_cond, drop_text = self.draw_condition_drops(batch)
        prediction = self.backbone(
            noisy, cond, text, time, mask=mask, drop_audio_cond=drop_audio_cond, drop_text=drop_text
        )
        loss = F.mse_loss(prediction, flow, reduction="none")[span_mask].mean()
        output = FlowMatchingOutput(loss=loss, prediction=prediction, span_mask=span_mask)
        return output if return_dict else output.to_tuple()

    # ---------------------------------------------------------------- sampling

    def _text_ids(self, text: torch.Tensor | list[list[int]], batch: int) -> torch.Tensor:
        if isinstance(text, (list, tuple)):
            if not all(isinstance(ids, (list, tuple)) for ids in text):
                raise InputError(
                    "text must be a (batch, tokens) id tensor or a list of id lists; tokenize strings first"
                )
            text = pad_sequence(
                [torch.tensor(ids, dtype=torch.long) for ids in text], batch_first=True, padding_value=-1
            )
        if not isinstance(text, torch.Tensor) or text.ndim != 2 or text.dtype.is_floating_point:
            raise InputError("text must be an integer tensor of shape (batch, tokens) padded with -1")
        if text.shape[0] != batch:
            raise InputError(f"text has batch size {text.shape[0]} but cond has {batch}")
        return text.to(self.device)

    def _initial_noise(
        self,
        duration: torch.Tensor,
        total: int,
        seed: int | None,
        latents: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        mel_dim = self.config.mel_dim
        if latents is not None:
            batch = duration.shape[0]
            if (
                latents.ndim != 3
                or latents.shape[0] != batch
                or latents.shape[2] != mel_dim
                or latents.shape[1] < total
            ):
                raise InputError(
                    f"latents must have shape ({batch}, >= {total}, {mel_dim}) (batch, longest duration, mel "
                    f"channels), got {tuple(latents.shape)}"
                )
            latents = latents[:, :total].to(device=self.device, dtype=dtype)
            # frames past each sample's duration are zero, as upstream pads its per-sample noise
            return latents.masked_fill(~lens_to_mask(duration, total)[..., None], 0.0)
        generator = None if seed is None else torch.Generator(self.device)
        noise = []
        for frames in duration.tolist():
            if generator is not None:  # upstream re-seeds before every sample's draw
                generator.manual_seed(seed)
            noise.append(torch.randn(frames, mel_dim, generator=generator, device=self.device, dtype=dtype))
        return pad_sequence(noise, batch_first=True)

    @property
    def sampling_dtype(self) -> torch.dtype:
        """The precision `sample()` runs in: the backbone's weights' (the vocoder and the mel front end may differ,
        see `hf_tts.synthesis.load_speech_model(sampling_dtype=...)`)."""
        return next(self.backbone.parameters()).dtype

    def compiled_backbone(self) -> Callable[..., torch.Tensor]:
        """The backbone compiled for inference with `torch.compile` (inductor, dynamic shapes, frozen weights: on
        CPU the linear layers run as prepacked oneDNN kernels). Cached; recompiled when a weight was replaced or
        changed in place, since freezing bakes the weights into the compiled code."""
        from hf_tts.synthesis import weights_signature

        weights = weights_signature(self.backbone)
        cached = self.__dict__.get("_compiled_backbone")
        if cached is None or cached[0] != weights:
            compiled = torch.compile(self.backbone, dynamic=True, options={"freezing": True})
            # a plain attribute, not a submodule: the compiled wrapper must stay out of state_dict()
            self.__dict__["_compiled_backbone"] = cached = (weights, compiled)
        return cached[1]

    @torch.inference_mode()
    def sample(
        self,
        cond: torch.Tensor,
        text: torch.Tensor | list[list[int]] | None = None,
        duration: int | torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        steps: int | None = None,
        cfg_strength: float | None = None,
        sway_sampling_coef: float | None | _ConfigDefault = CONFIG_DEFAULT,
        method: str | None = None,
        use_epss: bool | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        lens: torch.Tensor | None = None,
        no_ref_audio: bool = False,
        isolate_samples: bool = False,
        progress_callback: Callable[[int, int], None] | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """Generate mel frames after an audio prompt; returns (B, N, mel_dim) including the prompt frames.

        cond: waveform (B, samples) at `config.sampling_rate` or mel (B, frames, mel_dim); text: (B, T) vocab ids
        padded with -1 (prompt text + text to speak); duration: total frames (int or (B,)), raised to at least
        max(text length, prompt length) + 1 per sample as upstream; lens: (B,) prompt lengths in frames (default:
        the whole cond). steps / cfg_strength / sway_sampling_coef / method / use_epss default to the config's
        sampling settings (`sway_sampling_coef=None` disables sway). seed: re-seed before each sample's
        `randn(duration_b, mel_dim)` (upstream's noise); latents (B, >= N, mel_dim) replaces the noise.
        no_ref_audio: zero the prompt audio (its `lens` frames still count as prompt and come back as zeros), as
        upstream's flag. Instead of `text`, the tokenizer's `input_ids` (padded with its pad id) and
        `attention_mask` are accepted, as in `forward`.

        With several samples, each is masked to its own duration exactly as upstream's `CFM.sample` masks it (attention
        keys only when `config.attn_mask_enabled`), so batched results equal upstream's batched results.
        `isolate_samples=True` instead makes every sample independent of the others: each text is embedded alone
        and padded frames reach no valid frame, so each sample equals sampling it alone (long-form synthesis uses
        this to sample all chunks in one batch).

        `compile=True` runs the backbone through `torch.compile` (see `compiled_backbone`): the first call per input
        layout pays a compilation (tens of seconds on CPU), later calls run faster and agree with eager within 1e-5.
        """
        if duration is None:
            raise InputError("sample needs `duration`: the total number of mel frames, prompt included")
        text = text_ids_from_inputs(text, input_ids, attention_mask, self.config.text_num_embeds)
        config = self.config
        sway_given = None if isinstance(sway_sampling_coef, _ConfigDefault) else sway_sampling_coef
        check_sampling_options(steps, cfg_strength, sway_given, seed)
        steps = config.steps if steps is None else steps
        cfg_strength = config.cfg_strength if cfg_strength is None else cfg_strength
        if isinstance(sway_sampling_coef, _ConfigDefault):
            sway_sampling_coef = config.sway_sampling_coef
        method = config.ode_method if method is None else method
        use_epss = config.use_epss if use_epss is None else use_epss
        device, dtype = self.device, self.sampling_dtype

        if cond.ndim == 2:
            cond = self.mel_spec(cond.to(device)).transpose(1, 2)
        elif cond.ndim != 3 or cond.shape[-1] != config.mel_dim:
            raise InputError(
                f"cond must be a waveform (batch, samples) or a mel (batch, frames, {config.mel_dim}), "
                f"got shape {tuple(cond.shape)}"
            )
        cond = cond.to(device=device, dtype=dtype)
        batch, cond_len = cond.shape[:2]
        text = self._text_ids(text, batch)
        if lens is None:
            lens = torch.full((batch,), cond_len, device=device, dtype=torch.long)
        lens = torch.as_tensor(lens, device=device, dtype=torch.long)
        duration = torch.as_tensor(duration, device=device, dtype=torch.long).expand(batch)
        if lens.shape != (batch,):
            raise InputError(f"lens must have shape ({batch},), got {tuple(lens.shape)}")

        # at least the prompt (or the text) plus one frame, so something is generated
        duration = torch.maximum(torch.maximum((text != -1).sum(dim=-1), lens) + 1, duration)
        total = int(duration.max())
        max_frames = int(MAX_CHUNK_SECONDS * config.sampling_rate / config.hop_length)
        if total > max_frames:
            raise InputError(
                f"duration of {total} frames ({total * config.hop_length / config.sampling_rate:.0f} s, prompt included) "
                f"is more than the {max_frames} frames ({MAX_CHUNK_SECONDS:g} s) one solve may generate; sample "
                "shorter pieces"
            )
        cond = F.pad(cond, (0, 0, 0, total - cond_len))
        if no_ref_audio:
            cond = torch.zeros_like(cond)
        cond_mask = lens_to_mask(lens, total)[..., None]
        step_cond = torch.where(cond_mask, cond, torch.zeros_like(cond))
        mask = lens_to_mask(duration, total) if batch > 1 else None

        y0 = self._initial_noise(duration, total, seed, latents, dtype)
        # The grid stays in fp32 for half-precision models: in bf16, cos(pi/2 t) rounds to 1 for the first steps of a
        # 32-step sway grid, which collapses them onto t = 0 (upstream's bf16 grid has the same fault).
        grid = time_grid(
            steps, use_epss, sway_sampling_coef, device=device, dtype=torch.promote_types(dtype, torch.float32)
        )
        use_cfg = cfg_strength >= 1e-5
        isolate_samples = isolate_samples and batch > 1
        if isolate_samples:
            text_embed = self.backbone.embed_text_isolated(text, duration, total, cfg_infer=use_cfg)
        else:
            text_embed = self.backbone.embed_text(text, total, mask, cfg_infer=use_cfg)
        backbone = self.compiled_backbone() if compile else self.backbone

        def velocity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            pred = backbone(
                y,
                step_cond,
                text,
                t.to(dtype),
                mask=mask,
                cfg_infer=use_cfg,
                text_embed=text_embed,
                isolate_samples=isolate_samples,
            )
            if not use_cfg:
                return pred
            pred, null_pred = pred.chunk(2, dim=0)
            return pred + (pred - null_pred) * cfg_strength

        was_training = self.training
        self.eval()  # no dropout while sampling, as upstream; the caller's mode is restored afterwards
        try:
            sampled = solve_ode(velocity, y0, grid, method=method, progress_callback=progress_callback)
        finally:
            self.train(was_training)
        return torch.where(cond_mask, cond, sampled)


__all__ = [
    "CONFIG_DEFAULT",
    "EPSS_TIMESTEPS",
    "FlowMatchingBackbone",
    "FlowMatchingOutput",
    "FlowMatchingTTSModel",
    "lens_to_mask",
    "random_span_mask",
    "solve_ode",
    "time_grid",
]
