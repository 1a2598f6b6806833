"""E2-TTS: the flat U-Net transformer backbone (UNetT) and `E2TTSModel`.

Parameter names equal upstream's `transformer.*` names under `backbone.`: layer i is the list
[skip_proj (second half only), attn_norm, attn, ff_norm, ff], so `backbone.layers.12.0.weight` is a skip projection
and `backbone.layers.0.1.g` an attention RMSNorm gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_tts.flow_matching import FlowMatchingBackbone, FlowMatchingTTSModel
from hf_tts.layers.attention import Attention, FeedForward
from hf_tts.layers.normalization import ScaledL2RMSNorm, ZeroInitLinear
from hf_tts.models.e2.configuration_e2 import E2TTSConfig


class UNetTLayer(GradientCheckpointingLayer, nn.ModuleList):
    """One UNetT layer, stored as upstream's ModuleList [skip_proj | None, attn_norm, attn, ff_norm, ff]: merge the
    U-Net skip (second half), then pre-RMSNorm attention and feed-forward with plain residuals."""

    def __init__(self, config: E2TTSConfig, is_second_half: bool):
        needs_skip_proj = is_second_half and config.skip_connect_type == "concat"
        super().__init__(
            [
                nn.Linear(config.dim * 2, config.dim, bias=False) if needs_skip_proj else None,
                ScaledL2RMSNorm(config.dim),
                Attention.from_config(config),
                ScaledL2RMSNorm(config.dim),
                FeedForward(config.dim, config.ff_mult, dropout=config.dropout),
            ]
        )

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        mask_keys: bool = False,
    ) -> torch.Tensor:
        skip_proj, attn_norm, attn, ff_norm, ff = self
        if skip is not None:
            x = skip_proj(torch.cat((x, skip), dim=-1)) if skip_proj is not None else x + skip
        x = attn(attn_norm(x), rope=rope, mask=mask, mask_keys=mask_keys) + x
        return ff(ff_norm(x)) + x


class UNetT(FlowMatchingBackbone):
    """Upstream `UNetT`: the time embedding is a prepended token (no adaLN); layer depth-1-i receives the hidden state
    that entered layer i (unless `skip_connect_type` is "none")."""

    per_sample_lengths = False

    def __init__(self, config: E2TTSConfig):
        super().__init__(config)
        half = config.depth // 2
        self.layers = nn.ModuleList([UNetTLayer(config, is_second_half=i >= half) for i in range(config.depth)])
        self.use_skips = config.skip_connect_type != "none"
        self.norm_out = ScaledL2RMSNorm(config.dim)
        self.proj_out = ZeroInitLinear(config.dim, config.mel_dim)

    def transform(
        self, h: torch.Tensor, t_emb: torch.Tensor, mask: torch.Tensor | None, mask_keys: bool
    ) -> torch.Tensor:
        h = torch.cat((t_emb.unsqueeze(1), h), dim=1)  # time is token 0 (rotary position 0)
        if mask is not None:
            mask = F.pad(mask, (1, 0), value=True)
        rope = self.rotary_embed(h.shape[1], device=h.device)
        half = len(self.layers) // 2
        skips = []
        for index, layer in enumerate(self.layers):
            skip = None
            if index < half:
                skips.append(h)
            elif self.use_skips:
                skip = skips.pop()
            h = layer(h, skip, rope, mask, mask_keys)
        return self.proj_out(self.norm_out(h)[:, 1:])


class E2TTSModel(FlowMatchingTTSModel):
    r"""E2-TTS (UNetT) flow-matching text-to-speech model producing log-mel frames; same interface as
    [`F5TTSModel`]."""

    config_class = E2TTSConfig
    backbone_class = UNetT
    _no_split_modules = ["UNetTLayer"]


__all__ = ["E2TTSModel", "UNetT", "UNetTLayer"]
