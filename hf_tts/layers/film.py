"""FiLM-conditioned transformer layers (audio2photoreal's decoder) and the rotary embedding they share.

Upstream quirks reproduced on purpose (checkpoints depend on them):
- the rotary rotation is applied to the full `d_model` input of `nn.MultiheadAttention` (before its in-projection),
  to queries and keys only, with interleaved pairs; cross-attention memory is rotated with its own positions;
- FiLM modulates each sublayer's output: `x + (1 + scale) * h + shift`, with `(scale, shift)` from
  `Linear(Mish(t))`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotary_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies `1 / theta^(2i/dim)`, shape (dim // 2,)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))


class InterleavedRotaryEmbedding(nn.Module):
    """Rotary position embedding over interleaved feature pairs (lucidrains' `rotary_embedding_torch` layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # Deterministic, so not saved: `_init_weights` of the owning model refills it after `from_pretrained`.
        self.register_buffer("inv_freq", rotary_frequencies(dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (..., L, dim) by positions 0..L-1."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.inv_freq.dtype)
        angles = torch.repeat_interleave(positions[:, None] * self.inv_freq[None, :], 2, dim=-1).to(x.dtype)
        pairs = x.unflatten(-1, (-1, 2))
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * angles.cos() + rotated_half * angles.sin()


class DenseFiLM(nn.Module):
    """(B, d) conditioning -> (scale, shift), each (B, 1, d)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.linear(F.mish(cond)).unsqueeze(1).chunk(2, dim=-1)
        return scale, shift


def _modulate(hidden: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = film
    return (scale + 1) * hidden + shift


class _RotaryAttentionMixin:
    rotary: InterleavedRotaryEmbedding | None

    def _attend(self, attention: nn.MultiheadAttention, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        query = self.rotary(x) if self.rotary is not None else x
        key = self.rotary(memory) if self.rotary is not None else memory
        return attention(query, key, memory, need_weights=False)[0]


class RotaryEncoderLayer(_RotaryAttentionMixin, nn.Module):
    """Pre-LN transformer encoder layer with rotary queries/keys (audio2photoreal's face `cond_encoder`)."""

    def __init__(
        self, dim: int, heads: int, ff_size: int, dropout: float, rotary: InterleavedRotaryEmbedding | None
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ff_size)
        self.linear2 = nn.Linear(ff_size, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.dropout(self._attend(self.self_attn, normed, normed))
        return x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class FiLMDecoderLayer(_RotaryAttentionMixin, nn.Module):
    """Pre-LN decoder layer: self-attention, cross-attention to the conditioning tokens, optionally a second
    cross-attention to keyframe tokens, and a GELU feed-forward; each sublayer output is FiLM-modulated by `t`."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_size: int,
        dropout: float,
        rotary: InterleavedRotaryEmbedding | None,
        keyframe_attention: bool,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ff_size)
        self.linear2 = nn.Linear(ff_size, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.film1 = DenseFiLM(dim)
        self.film2 = DenseFiLM(dim)
        self.film3 = DenseFiLM(dim)
        if keyframe_attention:
            self.keyframe_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.norm_keyframe = nn.LayerNorm(dim)
            self.film_keyframe = DenseFiLM(dim)
        self.dropout = nn.Dropout(dropout)
        self.rotary = rotary

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, t: torch.Tensor, keyframe_memory: torch.Tensor | None = None
    ) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + _modulate(self.dropout(self._attend(self.self_attn, normed, normed)), self.film1(t))
        x = x + _modulate(self.dropout(self._attend(self.cross_attn, self.norm2(x), memory)), self.film2(t))
        if keyframe_memory is not None:
            attended = self._attend(self.keyframe_attn, self.norm_keyframe(x), keyframe_memory)
            x = x + _modulate(self.dropout(attended), self.film_keyframe(t))
        feed_forward = self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x)))))
        return x + _modulate(self.dropout(feed_forward), self.film3(t))
