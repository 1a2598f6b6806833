"""Rotary position embedding as x-transformers' `RotaryEmbedding` (GPT-J interleaved pairs), which F5-TTS and E2-TTS
use. Tables are computed in fp32 from the config, once per forward, and shared by every attention layer."""

from __future__ import annotations

import torch
from torch import nn


def rotary_inv_freq(dim: int, base: float = 10000.0, device: torch.device | None = None) -> torch.Tensor:
    """x-transformers' inverse frequencies `1 / base^(2i/dim)` in fp32 (dim/2 values)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) tables of shape (seq_len, dim), each frequency repeated for its interleaved pair.

    `inv_freq` is a non-persistent fp32 buffer (never saved; the owning model's `_init_weights` refills it via
    `reset_buffers()` after `from_pretrained`). If the model was cast to half precision, fp32 values are recomputed so
    positions never go through a low-precision product.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.base = base
        self.register_buffer("inv_freq", rotary_inv_freq(dim, base), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        if self.inv_freq.device.type != "meta":
            self.inv_freq.copy_(rotary_inv_freq(self.dim, self.base))

    def forward(self, seq_len: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32:
            inv_freq = rotary_inv_freq(self.dim, self.base, device=inv_freq.device)
        positions = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq).repeat_interleave(2, dim=-1)
        if device is not None:
            freqs = freqs.to(device)
        return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading `cos.shape[-1]` channels of `x` (..., seq, head_dim) in interleaved pairs
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); computed in fp32, returned in x's dtype."""
    rot_dim = cos.shape[-1]
    # One complex product per pair, (x0 + i x1) * (cos + i sin), is bit-identical to the real formula and, being a
    # single kernel that also makes q/k contiguous for attention, measurably faster on CPU (README, Benchmarks).
    pairs = torch.view_as_complex(x[..., :rot_dim].float().unflatten(-1, (-1, 2)))
    out = torch.view_as_real(pairs * torch.complex(cos[..., ::2], sin[..., ::2])).flatten(-2).to(x.dtype)
    if rot_dim == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rot_dim:]), dim=-1)


__all__ = ["RotaryEmbedding", "apply_rotary", "rotary_inv_freq"]
