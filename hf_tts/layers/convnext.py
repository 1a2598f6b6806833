"""ConvNeXt-V2 block of F5-TTS' text encoder (no layer scale, no drop path)."""

from __future__ import annotations

import torch
from torch import nn


class GlobalResponseNorm(nn.Module):
    """GRN over the TIME axis (dim 1 of (B, N, C)), with upstream's 3-D (1, 1, C) `gamma`/`beta`."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, p=2, dim=1, keepdim=True)
        scale = norm / (norm.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * scale) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """x + pwconv2(GRN(GELU(pwconv1(LayerNorm(dwconv(x)))))) on (B, N, C); depthwise kernel 7."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.grn(self.act(self.pwconv1(self.norm(h))))
        return x + self.pwconv2(h)


__all__ = ["ConvNeXtV2Block", "GlobalResponseNorm"]
