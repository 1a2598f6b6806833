"""F5-TTS: the DiT backbone (ConvNeXt-V2 text encoder, adaLN-Zero transformer blocks) and `F5TTSModel`.

Parameter names equal upstream's `transformer.*` names under `backbone.` (e.g.
`backbone.transformer_blocks.0.attn.to_q.weight`), so converted checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_tts.flow_matching import FlowMatchingBackbone, FlowMatchingTTSModel
from hf_tts.layers.attention import Attention, FeedForward
from hf_tts.layers.normalization import AdaLayerNormZero, AdaLayerNormZeroFinal, ZeroInitLinear
from hf_tts.models.f5.configuration_f5 import F5TTSConfig


class DiTBlock(GradientCheckpointingLayer):
    """adaLN-Zero transformer block: modulated LayerNorm -> attention (gated residual) -> modulated LayerNorm ->
    GELU-tanh feed-forward (gated residual)."""

    def __init__(self, config: F5TTSConfig):
        super().__init__()
        self.attn_norm = AdaLayerNormZero(config.dim)
        self.attn = Attention.from_config(config)
        self.ff_norm = nn.LayerNorm(config.dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(config.dim, config.ff_mult, dropout=config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        t_emb: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        mask_keys: bool = False,
    ) -> torch.Tensor:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(x, t_emb)
        x = x + gate_msa.unsqueeze(1) * self.attn(h, rope=rope, mask=mask, mask_keys=mask_keys)
        h = self.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * self.ff(h)


class DiT(FlowMatchingBackbone):
    """Upstream `DiT`: (noisy mel, cond mel, text ids, flow time) -> predicted flow (B, N, mel_dim)."""

    def __init__(self, config: F5TTSConfig):
        super().__init__(config)
        self.transformer_blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
        self.long_skip_connection = (
            nn.Linear(config.dim * 2, config.dim, bias=False) if config.long_skip_connection else None
        )
        self.norm_out = AdaLayerNormZeroFinal(config.dim)
        self.proj_out = ZeroInitLinear(config.dim, config.mel_dim)

    def transform(
        self, h: torch.Tensor, t_emb: torch.Tensor, mask: torch.Tensor | None, mask_keys: bool
    ) -> torch.Tensor:
        rope = self.rotary_embed(h.shape[1], device=h.device)
        residual = h
        for block in self.transformer_blocks:
            h = block(h, t_emb, rope, mask, mask_keys)
        if self.long_skip_connection is not None:
            h = self.long_skip_connection(torch.cat((h, residual), dim=-1))
        return self.proj_out(self.norm_out(h, t_emb))


class F5TTSModel(FlowMatchingTTSModel):
    r"""F5-TTS (DiT) flow-matching text-to-speech model producing log-mel frames.

    `backbone(...)` is upstream's transformer, `mel_spec(wave)` its vocos-type log-mel, `sample(...)` upstream's
    `CFM.sample` and `forward(mel, text, mel_lengths)` its training loss.
    """

    config_class = F5TTSConfig
    backbone_class = DiT
    _no_split_modules = ["DiTBlock"]


__all__ = ["DiT", "DiTBlock", "F5TTSModel"]
