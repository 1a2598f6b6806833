"""Residual vector quantization with EMA codebooks (EnCodec / GPT-SoVITS design).

- `EuclideanCodebook`: nearest-code lookup; in training mode the codebook follows the data by exponential moving
  averages (Laplace-smoothed cluster sizes), is k-means initialised on the first training batch when `inited == 0`,
  and replaces dead codes (EMA cluster size below a threshold) with random vectors of the batch.
- `VectorQuantizer`: one codebook on channels-first input with the straight-through estimator and the commitment
  loss in training mode; in eval mode it is a pure lookup (no gradient path, zero loss, no buffer update).
- `ResidualVectorQuantizer`: `n_q` quantizers, each quantizing the residual of the previous ones.

Buffers (`inited`, `cluster_size`, `embed`, `embed_avg`) are persistent so checkpoints carry the learned codebooks.
Under `torch.distributed` the EMA statistics are summed over ranks and rank 0's k-means / replacement vectors are
broadcast; without an initialised process group everything runs locally (GPT-SoVITS' current code raises there).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sample_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    """`num` rows of `samples`: without replacement when there are enough, with replacement otherwise."""
    if samples.shape[0] >= num:
        indices = torch.randperm(samples.shape[0], device=samples.device)[:num]
    else:
        indices = torch.randint(0, samples.shape[0], (num,), device=samples.device)
    return samples[indices]


def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, D) rows. Returns (means (K, D), cluster sizes (K,)); empty clusters keep their mean."""
    means = _sample_rows(samples, num_clusters)
    counts = torch.zeros(num_clusters, dtype=samples.dtype, device=samples.device)
    for _ in range(num_iters):
        assignment = torch.cdist(samples, means).argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters).to(samples.dtype)
        sums = torch.zeros_like(means).index_add_(0, assignment, samples)
        means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], means)
    return means, counts


class EuclideanCodebook(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        kmeans_init: bool = True,
        kmeans_iters: int = 50,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        threshold_ema_dead_code: float = 2.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.decay = decay
        self.epsilon = epsilon
        self.threshold_ema_dead_code = threshold_ema_dead_code
        # 0 until k-means has run (1 from the start when k-means init is off), as upstream stores it.
        self.register_buffer("inited", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))
        self.reset_codebook()

    @torch.no_grad()
    def reset_codebook(self) -> None:
        """Fresh state: zeros awaiting k-means, or kaiming-uniform codes when k-means init is off."""
        self.inited.fill_(0.0 if self.kmeans_init else 1.0)
        self.cluster_size.zero_()
        if self.kmeans_init:
            self.embed.zero_()
        else:
            nn.init.kaiming_uniform_(self.embed)
        self.embed_avg.copy_(self.embed)

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each (..., D) row."""
        flat = rows.reshape(-1, self.dim)
        codes_t = self.embed.t()
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes_t + codes_t.pow(2).sum(0, keepdim=True)
        return distance.argmin(dim=-1).view(rows.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        embed, cluster_size = kmeans(flat, self.codebook_size, self.kmeans_iters)
        if _distributed():
            dist.broadcast(embed, src=0)
            dist.broadcast(cluster_size, src=0)
        self.embed.copy_(embed)
        self.embed_avg.copy_(embed)
        self.cluster_size.copy_(cluster_size)
        self.inited.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes.reshape(-1), self.codebook_size).to(flat.dtype)
        counts = onehot.sum(0)
        sums = flat.t() @ onehot
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums.t(), alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))
        self._expire_dead_codes(flat)

    @torch.no_grad()
    def _expire_dead_codes(self, flat: torch.Tensor) -> None:
        if self.threshold_ema_dead_code <= 0:
            return
        dead = self.cluster_size < self.threshold_ema_dead_code
        if not bool(dead.any()):
            return
        replacement = _sample_rows(flat, self.codebook_size)
        if _distributed():
            dist.broadcast(replacement, src=0)
        self.embed.copy_(torch.where(dead[:, None], replacement, self.embed))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) rows -> (quantized rows, codes); updates the codebook in training mode."""
        flat = rows.reshape(-1, self.dim)
        if self.training and self.inited.item() == 0:
            self._kmeans_init(flat.detach())
        codes = self.encode(rows)
        quantized = self.decode(codes)
        if self.training:
            self._ema_update(flat.detach(), codes)
        return quantized, codes


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, *, commitment_weight: float = 1.0, **codebook_kwargs) -> None:
        super().__init__()
        self.commitment_weight = commitment_weight
        self.codebook = EuclideanCodebook(dim, codebook_size, **codebook_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> codes (B, T)."""
        return self.codebook.encode(x.transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T) -> (B, D, T)."""
        return self.codebook.decode(codes).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, T) -> (quantized (B, D, T), codes (B, T), commitment loss (scalar))."""
        rows = x.transpose(1, 2)
        quantized, codes = self.codebook(rows)
        loss = rows.new_zeros(())
        if self.training:
            # Straight-through: the forward value is the code, the gradient flows to the input unchanged.
            quantized = rows + (quantized - rows).detach()
            if self.commitment_weight > 0:
                loss = F.mse_loss(quantized.detach(), rows) * self.commitment_weight
        return quantized.transpose(1, 2), codes, loss


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dim: int, n_q: int, codebook_size: int, **quantizer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(dim, codebook_size, **quantizer_kwargs) for _ in range(n_q))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, T) -> (quantized (B, D, T), codes (n_q, B, T), mean commitment loss over layers)."""
        residual = x
        quantized_sum = torch.zeros_like(x)
        all_codes, losses = [], []
        for layer in self.layers:
            quantized, codes, loss = layer(residual)
            residual = residual - quantized
            quantized_sum = quantized_sum + quantized
            all_codes.append(codes)
            losses.append(loss)
        return quantized_sum, torch.stack(all_codes), torch.stack(losses).mean()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> codes (n_q, B, T), without touching the codebooks."""
        residual = x
        all_codes = []
        for layer in self.layers:
            codes = layer.encode(residual)
            residual = residual - layer.decode(codes)
            all_codes.append(codes)
        return torch.stack(all_codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n_q' <= n_q, B, T) -> the sum of the first n_q' layers' codes (B, D, T)."""
        if codes.shape[0] > len(self.layers):
            raise ValueError(f"codes hold {codes.shape[0]} quantizer levels but the quantizer has {len(self.layers)}")
        return sum(layer.decode(level) for layer, level in zip(self.layers, codes))
