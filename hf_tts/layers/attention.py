"""Self-attention (PyTorch SDPA, rotary on all or the first `pe_attn_head` heads) and the GELU-tanh feed-forward of
F5-TTS / E2-TTS. Parameter names follow upstream (`to_q`, `to_k`, `to_v`, `to_out.0`, `ff.0.0`, `ff.2`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_tts.layers.normalization import RMSNorm
from hf_tts.layers.rotary import apply_rotary


class Attention(nn.Module):
    """Multi-head self-attention.

    `mask` (B, N) marks valid frames: padded output rows are zeroed; padded keys are excluded only when
    `mask_keys=True` (upstream's `attn_mask_enabled`; released models attend to padding).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dropout: float = 0.0,
        qk_norm: str | None = None,
        pe_attn_head: int | None = None,
    ):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.pe_attn_head = pe_attn_head
        inner_dim = heads * dim_head
        self.to_q = nn.Linear(dim, inner_dim)
        self.to_k = nn.Linear(dim, inner_dim)
        self.to_v = nn.Linear(dim, inner_dim)
        if qk_norm == "rms_norm":
            self.q_norm = RMSNorm(dim_head, eps=1e-6)
            self.k_norm = RMSNorm(dim_head, eps=1e-6)
        elif qk_norm is None:
            self.q_norm = self.k_norm = None
        else:
            raise ValueError(f"qk_norm must be None or 'rms_norm', got {qk_norm!r}")
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim), nn.Dropout(dropout)])

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.pe_attn_head is None:
            return apply_rotary(x, *rope)
        # v0 checkpoints: rotary on the first pe_attn_head heads only (upstream's emulation of its early bug)
        head = self.pe_attn_head
        return torch.cat((apply_rotary(x[:, :head], *rope), x[:, head:]), dim=1)

    @classmethod
    def from_config(cls, config) -> Attention:
        """The attention of an F5 / E2 transformer block (`dim`, `heads`, `dim_head`, `dropout`, `qk_norm`,
        `pe_attn_head` fields of a `FlowMatchingTTSConfig`)."""
        return cls(
            config.dim,
            config.heads,
            config.dim_head,
            dropout=config.dropout,
            qk_norm=config.qk_norm,
            pe_attn_head=config.pe_attn_head,
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        mask_keys: bool = False,
    ) -> torch.Tensor:
        batch = x.shape[0]
        query, key, value = (
            proj(x).view(batch, -1, self.heads, self.dim_head).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        if rope is not None:
            query, key = self._rotate(query, rope), self._rotate(key, rope)
        attn_mask = mask[:, None, None, :] if mask_keys and mask is not None else None
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * self.dim_head)
        out = self.to_out[1](self.to_out[0](out))
        if mask is not None:
            out = out.masked_fill(~mask[..., None], 0.0)
        return out


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> Dropout -> Linear, stored as upstream's `ff = Seq(Seq(Linear, GELU), Dropout, Linear)`."""

    def __init__(self, dim: int, mult: float, dropout: float = 0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU(approximate="tanh")),
            nn.Dropout(dropout),
            nn.Linear(inner_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


__all__ = ["Attention", "FeedForward"]
