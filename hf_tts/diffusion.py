"""Gaussian diffusion schedule and the DDIM sampler step for x0-predicting models (improved-diffusion / MDM maths,
as audio2photoreal uses it).

- `betas`: "cosine" (Nichol & Dhariwal, s = 0.008, betas capped at 0.999) or "linear" (Ho et al., scaled to the
  step count).
- Respacing: `ddim_timesteps(T, n)` takes every k-th step with the integer stride k giving exactly n steps (upstream's
  `space_timesteps(T, "ddimN")`); `DiffusionSchedule.respaced(...)` rebuilds the betas so that the cumulative
  products at the kept steps are the original ones.
- Coefficients are computed in float64 and cast to float32 per step, as upstream's `_extract_into_tensor` does, so a
  port matches to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hf_tts.errors import InputError


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=np.float64,
    )


def linear_betas(num_steps: int) -> np.ndarray:
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


NOISE_SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


def ddim_timesteps(num_train_steps: int, num_inference_steps: int) -> list[int]:
    """Kept original steps, ascending: `range(0, T, k)` for the integer stride k that gives exactly n steps."""
    if num_inference_steps == num_train_steps:
        return list(range(num_train_steps))
    for stride in range(1, num_train_steps):
        kept = range(0, num_train_steps, stride)
        if len(kept) == num_inference_steps:
            return list(kept)
    valid = sorted({len(range(0, num_train_steps, k)) for k in range(1, num_train_steps)}, reverse=True)[:12]
    raise InputError(
        f"num_inference_steps={num_inference_steps} cannot be reached with an integer stride over "
        f"{num_train_steps} diffusion steps; valid values include {valid}"
    )


class DiffusionSchedule:
    """Cumulative noise levels of a (possibly respaced) schedule; `timesteps` are the original step numbers."""

    def __init__(self, betas: np.ndarray, timesteps: list[int] | None = None) -> None:
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.timesteps = list(range(len(betas))) if timesteps is None else timesteps

    @classmethod
    def create(cls, noise_schedule: str, num_train_steps: int) -> DiffusionSchedule:
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {sorted(NOISE_SCHEDULES)}, got {noise_schedule!r}")
        return cls(NOISE_SCHEDULES[noise_schedule](num_train_steps))

    def respaced(self, num_inference_steps: int) -> DiffusionSchedule:
        kept = ddim_timesteps(len(self.alphas_cumprod), num_inference_steps)
        kept_cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - kept_cumprod / np.append(1.0, kept_cumprod[:-1])
        return DiffusionSchedule(betas, kept)

    def _coefficient(self, values: np.ndarray, index: int, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values[index], dtype=torch.float64).to(device=like.device, dtype=torch.float32)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for per-sample original-step indices (B,); x (B, ...)."""
        cumprod = torch.from_numpy(self.alphas_cumprod).to(x0.device)[timesteps].float()
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return cumprod.sqrt().view(shape) * x0 + (1 - cumprod).sqrt().view(shape) * noise

    def ddim_step(
        self,
        x_t: torch.Tensor,
        pred_x0: torch.Tensor,
        index: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x_{t-1} from x_t and the model's x0 prediction at schedule position `index` (0 = least noisy)."""
        sqrt_recip = self._coefficient(np.sqrt(1.0 / self.alphas_cumprod), index, x_t)
        sqrt_recipm1 = self._coefficient(np.sqrt(1.0 / self.alphas_cumprod - 1), index, x_t)
        eps = (sqrt_recip * x_t - pred_x0) / sqrt_recipm1
        alpha_bar = self._coefficient(self.alphas_cumprod, index, x_t)
        alpha_bar_prev = self._coefficient(self.alphas_cumprod_prev, index, x_t)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = pred_x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if index > 0 and eta > 0:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            sample = sample + sigma * noise
        return sample
