"""Merge formulas, one tensor at a time (mergekit's definitions, see reference/merge.md section 1.2).

Every function takes the sources' tensors as read-only views (they may be memory maps of the input files) and
returns a fresh tensor in the accumulator dtype: fp32, or fp64 when an input is fp64. No input is ever written to;
intermediate buffers are allocated here, so their number does not depend on how many sources there are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METHODS = ("linear", "slerp", "task_arithmetic", "ties")
# Methods that combine task vectors (source - base) and therefore need --base.
BASE_METHODS = ("task_arithmetic", "ties")
# mergekit's `normalize` defaults: weights are divided by their sum for linear and TIES, not for task arithmetic.
DEFAULT_NORMALIZE = {"linear": True, "slerp": False, "task_arithmetic": False, "ties": True}
# Above this |cos| two tensors are treated as colinear and SLERP falls back to linear interpolation (mergekit).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8


def accumulator_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def linear(
    stacked: torch.Tensor, weights: Sequence[float], normalize: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_i w_i x_i over the rows x_i of `stacked` (divided by sum_i w_i when `normalize`), in the accumulator
    dtype; written into `out` when given.

    One matrix-vector product instead of an accumulation per source: a merge is bound by per-slice overhead, and
    this is a single pass over the inputs whatever their number.
    """
    dtype = accumulator_dtype(stacked.dtype)
    divisor = math.fsum(weights) if normalize else 1.0
    coefficients = torch.tensor([weight / divisor for weight in weights], dtype=dtype)
    return torch.mv(stacked.to(dtype).T, coefficients, out=out)


def slerp(first: torch.Tensor, second: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from `first` (t=0) to `second` (t=1) over the whole flattened tensor.

    The angle comes from the unit-normalised copies; nearly colinear tensors (|cos| > 0.9995) are interpolated
    linearly, as mergekit does.
    """
    dtype = accumulator_dtype(first.dtype, second.dtype)
    v0 = first.to(dtype, copy=True)
    v1 = second.to(dtype, copy=True)
    norm0, norm1 = v0.norm().item(), v1.norm().item()
    dot = torch.dot(v0.flatten(), v1.flatten()).item()
    dot /= (norm0 if norm0 > SLERP_NORM_EPS else 1.0) * (norm1 if norm1 > SLERP_NORM_EPS else 1.0)
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return v0.mul_(1.0 - t).add_(v1, alpha=t)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return v0.mul_(math.sin((1.0 - t) * theta) / sin_theta).add_(v1, alpha=math.sin(t * theta) / sin_theta)


def task_arithmetic(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool, scale: float
) -> torch.Tensor:
    """b + lambda * sum_i w_i (x_i - b), the sum divided by sum_i w_i when `normalize`."""
    dtype = accumulator_dtype(base.dtype, *(t.dtype for t in tensors))
    accumulator = torch.zeros(base.shape, dtype=dtype)
    for tensor, weight in zip(tensors, weights):
        accumulator.add_(tensor.to(dtype, copy=True).sub_(base), alpha=weight)
    if normalize:
        accumulator.div_(math.fsum(weights))
    return accumulator.mul_(scale).add_(base)


def magnitude_prune(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density * numel) entries of largest |delta| (in place), zero the rest. Ties in |delta| are
    broken by position (stable sort), so the result is deterministic."""
    if density >= 1.0:
        return delta
    keep = int(density * delta.numel())
    flat = delta.view(-1)
    order = torch.argsort(flat.abs(), descending=True, stable=True)
    flat[order[keep:]] = 0
    return delta


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    normalize: bool,
    scale: float,
) -> torch.Tensor:
    """TIES-merging: prune each task vector to `density`, elect a sign per entry (sign of sum_i w_i delta_i, >= 0
    counting as +), keep only the weighted deltas that agree with it, sum them (divided by the sum of the agreeing
    weights when `normalize`, an empty sum dividing by 1) and add lambda times that to the base.

    Two passes over the sources (sign election, then the agreeing sum) keep memory at a few tensors for any number
    of sources.
    """
    dtype = accumulator_dtype(base.dtype, *(t.dtype for t in tensors))

    def weighted_delta(tensor: torch.Tensor, weight: float) -> torch.Tensor:
        return magnitude_prune(tensor.to(dtype, copy=True).sub_(base), density).mul_(weight)

    elected = torch.zeros(base.shape, dtype=dtype)
    for tensor, weight in zip(tensors, weights):
        elected.add_(weighted_delta(tensor, weight))
    elected = torch.where(elected >= 0, 1.0, -1.0).to(dtype)
    mixed = torch.zeros(base.shape, dtype=dtype)
    divisor = torch.zeros(base.shape, dtype=dtype)
    for tensor, weight in zip(tensors, weights):
        delta = weighted_delta(tensor, weight)
        agrees = delta.sign() == elected
        mixed.add_(delta.mul_(agrees))
        divisor.add_(agrees.to(dtype), alpha=weight)
    if normalize:
        divisor[divisor == 0] = 1.0
        mixed.div_(divisor)
    return mixed.mul_(scale).add_(base)
