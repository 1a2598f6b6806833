"""Normalisation layers of F5-TTS / E2-TTS: adaLN-Zero modulation (DiT), x-transformers' scaled-L2 RMSNorm (E2) and
the eps RMSNorm used for the optional q/k normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroInitLinear(nn.Linear):
    """An nn.Linear that `config.init_adaln_zero` initialises to exactly zero (adaLN modulations and the final output
    projection, as in the DiT paper). Marked by type because transformers runs `_init_weights` per module that owns
    parameters: the zero-init has to happen on the Linear itself, after (and instead of) its default init."""


class AdaLayerNormZero(nn.Module):
    """DiT block modulation: `linear(SiLU(t))` -> shift/scale/gate for attention and for the feed-forward, in that
    chunk order. Returns the modulated attention input and the other four chunks."""

    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = ZeroInitLinear(dim, dim * 6)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroFinal(nn.Module):
    """Final DiT modulation before `proj_out`: scale first, then shift (the opposite of the block order)."""

    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = ZeroInitLinear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(emb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class ScaledL2RMSNorm(nn.Module):
    """x-transformers' RMSNorm: `x / max(||x||_2, 1e-12) * sqrt(dim) * g` (parameter name `g`, no eps inside a
    square root)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.g


class RMSNorm(nn.Module):
    """Root-mean-square norm with eps and a `weight` (upstream `modules.RMSNorm`, used for `qk_norm="rms_norm"`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return F.rms_norm(x, normalized_shape=(x.shape[-1],), weight=self.weight, eps=self.eps)


__all__ = ["AdaLayerNormZero", "AdaLayerNormZeroFinal", "RMSNorm", "ScaledL2RMSNorm", "ZeroInitLinear"]
