"""Merge formulas, one tensor at a time: mergekit's definitions (reference/merge.md section 1.2, mergekit 0.1.5's
`merge_methods/*.py` and `sparsify.py`), computed so that memory does not depend on the number of sources.

Every function takes the sources' tensors as read-only views (they may be memory maps of the input files) and
returns a fresh tensor in the accumulator dtype: fp32, or fp64 when an input is fp64. No input is ever written to;
the few buffers are allocated here, one or a handful per tensor, however many sources there are: sources are visited
one after another and folded into accumulators (the TIES sign election keeps the positive and negative sums apart,
so the elected side is known without a second visit). Norms and dot products are summed in fp64 over chunks.

Pruning thresholds come from a selection (numpy's introselect, linear time) instead of a full sort; where several
entries tie exactly on a threshold, all of them are kept (TIES, SCE) or dropped (breadcrumbs' upper cut), where
mergekit keeps an arbitrary subset of them. That is the only way results differ from mergekit beyond rounding.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hf_tts.errors import InputError

# Methods with TIES' sign election.
CONSENSUS_METHODS = frozenset({"ties", "dare_ties", "breadcrumbs_ties", "della"})
# How each task-vector method prunes before combining.
SPARSIFICATION = {
    "task_arithmetic": None,
    "ties": "magnitude",
    "dare_linear": "random",
    "dare_ties": "random",
    "breadcrumbs": "outliers",
    "breadcrumbs_ties": "outliers",
    "della": "della",
    "della_linear": "della",
}
# Above this |cos| two tensors are treated as colinear and SLERP falls back to linear interpolation (mergekit).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8
# Elements per chunk of the fp64 reductions and scratch buffers: 256 KiB of fp64 per operand, so a chunk stays in the
# core's L2 cache between the passes over it (1M-element chunks measured 1.3x-2x slower for model_stock and SLERP).
REDUCE_CHUNK = 1 << 15
RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor: norms below this are not rescaled


@dataclass(frozen=True)
class MergeParameters:
    """The recipe's method parameters, resolved (every default explicit)."""

    normalize: bool
    scale: float = 1.0  # lambda
    density: float = 1.0
    rescale: bool = False
    gamma: float = 0.01
    epsilon: float = 0.15
    t: float | None = None
    select_topk: float = 1.0
    filter_wise: bool = False
    max_iter: int = 10
    tol: float = 1e-5
    eps: float = 1e-8
    nuslerp_flatten: bool = True
    nuslerp_row_wise: bool = False
    seed: int | None = None


def accumulator_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def is_elementwise(method: str, parameters: MergeParameters) -> bool:
    """Whether each output element depends only on the same element of the inputs (then tensors merge in slices).
    SLERP-like methods need whole-tensor angles, pruning needs whole-tensor rankings, rescaling whole-tensor norms."""
    if method in ("linear", "task_arithmetic", "nearswap"):
        return True
    return method == "ties" and parameters.density >= 1.0


# ---------------------------------------------------------------------------------------------------- reductions


def _chunks(numel: int) -> range:
    return range(0, numel, REDUCE_CHUNK)


def dot64(first: torch.Tensor, second: torch.Tensor) -> float:
    """sum(first * second) accumulated in fp64 (fp32 sums over tens of millions of elements drift by 1e-4)."""
    a, b = first.reshape(-1), second.reshape(-1)
    return math.fsum(
        torch.dot(a[i : i + REDUCE_CHUNK].double(), b[i : i + REDUCE_CHUNK].double()).item() for i in _chunks(a.numel())
    )


def sumsq64(tensor: torch.Tensor) -> float:
    flat = tensor.reshape(-1)
    return math.fsum(
        torch.linalg.vector_norm(flat[i : i + REDUCE_CHUNK], dtype=torch.float64).square().item()
        for i in _chunks(flat.numel())
    )


def norm64(tensor: torch.Tensor) -> float:
    return math.sqrt(sumsq64(tensor))


def l1_64(tensor: torch.Tensor) -> float:
    flat = tensor.reshape(-1)
    return math.fsum(
        torch.linalg.vector_norm(flat[i : i + REDUCE_CHUNK], ord=1, dtype=torch.float64).item()
        for i in _chunks(flat.numel())
    )


def _combine(pairs: Sequence[tuple[float, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """sum_i c_i x_i, each chunk computed in fp64 and rounded once to `dtype` (for SLERP's 1e-6 bound). The chunk
    buffer is fp64 and the in-place adds promote each x_i exactly, so no fp64 copy of an input is made."""
    shape = pairs[0][1].shape
    flats = [(coefficient, tensor.reshape(-1)) for coefficient, tensor in pairs]
    numel = flats[0][1].numel()
    out = torch.empty(numel, dtype=dtype)
    buffer = torch.empty(min(REDUCE_CHUNK, numel), dtype=torch.float64)
    for i in _chunks(numel):
        chunk = buffer[: min(REDUCE_CHUNK, numel - i)]
        (first_coefficient, first), *rest = flats
        chunk.copy_(first[i : i + REDUCE_CHUNK]).mul_(first_coefficient)
        for coefficient, flat in rest:
            chunk.add_(flat[i : i + REDUCE_CHUNK], alpha=coefficient)
        out[i : i + REDUCE_CHUNK] = chunk
    return out.view(shape)


def seeded_generator(seed: int | None, key: str, index: int) -> torch.Generator:
    """A generator for one (tensor, source) pair: the random draws do not depend on which thread merges which tensor
    or in what order, so a seeded merge gives the same bytes every time."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# ---------------------------------------------------------------------------------------------------- elementwise


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


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """b + lambda * sum_i w_i (x_i - b), the sum divided by sum_i w_i when `normalize`, in the accumulator dtype;
    written (flat) into `out` when given.

    The offsets come from one subtraction and are combined by one matrix-vector product with the coefficients
    lambda w_i / sum: a sliced merge is bound by its calls per slice (two merge threads share the GIL), not by the
    arithmetic.
    """
    dtype = accumulator_dtype(base.dtype, *(t.dtype for t in tensors))
    divisor = math.fsum(weights) if normalize else 1.0
    coefficients = torch.tensor([scale * weight / divisor for weight in weights], dtype=dtype)
    flat_base = base.reshape(-1).to(dtype)
    sources = tensors if isinstance(tensors, torch.Tensor) else torch.stack(list(tensors))
    offsets = sources.reshape(len(weights), -1).to(dtype) - flat_base
    return torch.mv(offsets.T, coefficients, out=out).add_(flat_base).reshape(base.shape)


def nearswap(base: torch.Tensor, tensor: torch.Tensor, t: float) -> torch.Tensor:
    """w = clamp(t / max(|b - x|, 1e-6), 0, 1); w x + (1 - w) b: entries where the source is within t of the base
    take the source, farther ones move towards the base."""
    dtype = accumulator_dtype(base.dtype, tensor.dtype)
    b = base.to(dtype)
    x = tensor.to(dtype)
    weight = (b - x).abs_().clamp_(min=1e-6)
    torch.div(torch.tensor(t, dtype=dtype), weight, out=weight).clamp_(0.0, 1.0)
    # lerp: b + w (x - b) in one pass (the same value as w x + (1 - w) b, to rounding).
    return torch.lerp(b, x, weight)


# ---------------------------------------------------------------------------------------------------- spherical


def slerp(first: torch.Tensor, second: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from `first` (t=0) to `second` (t=1) over the whole flattened tensor.

    The angle comes from fp64 norms and dot product; nearly colinear tensors (|cos| > 0.9995) are interpolated
    linearly, as mergekit does. The combination is formed in fp64 and rounded once.
    """
    dtype = accumulator_dtype(first.dtype, second.dtype)
    norm0, norm1, dot = _pair_statistics(first, second)
    dot /= (norm0 if norm0 > SLERP_NORM_EPS else 1.0) * (norm1 if norm1 > SLERP_NORM_EPS else 1.0)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return _combine([(1.0 - t, first), (t, second)], dtype)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return _combine(
        [(math.sin((1.0 - t) * theta) / sin_theta, first), (math.sin(t * theta) / sin_theta, second)], dtype
    )


def _vectors(tensor: torch.Tensor, row_wise: bool) -> torch.Tensor:
    """A 2-D (vectors, length) view: vectors along the last dimension, or along the first with `row_wise`."""
    if tensor.dim() < 2:
        return tensor.reshape(1, -1)
    if row_wise:
        tensor = tensor.transpose(0, -1)
    return tensor.reshape(-1, tensor.shape[-1])


def nuslerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None,
    flatten: bool,
    row_wise: bool,
) -> torch.Tensor:
    """mergekit's NuSLERP: t = w2 / (w1 + w2) (0.5 when the sum is below 1e-6); SLERP of the two sources (of their
    task vectors when there is a base, added back), over the flattened tensor or per row / column vector; a
    colinear pair (1 - cos^2 <= 1e-16) is interpolated linearly. No 0.9995 threshold, unlike `slerp`."""
    total = math.fsum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    dtype = accumulator_dtype(*(x.dtype for x in tensors), *((base.dtype,) if base is not None else ()))
    if flatten:
        return _nuslerp_flat(tensors[0], tensors[1], base, t, dtype)
    v0, v1 = (x.to(dtype) if base is None else x.to(dtype) - base.to(dtype) for x in tensors)
    shape = v0.shape
    a, b = _vectors(v0, row_wise), _vectors(v1, row_wise)
    rows = max(1, REDUCE_CHUNK // max(a.shape[1], 1))
    result = torch.empty_like(a)
    for start in range(0, a.shape[0], rows):
        x, y = a[start : start + rows].double(), b[start : start + rows].double()
        nx_t = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        ny_t = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
        dot_t = (x * y).sum(-1, keepdim=True)
        cos = (dot_t / nx_t.clamp(min=1e-7) / ny_t.clamp(min=1e-7)).clamp(-1.0, 1.0)
        colinear = (1.0 - cos.square()) <= 1e-16
        theta = torch.acos(torch.where(colinear, 0.0, cos))
        sin_theta = torch.sin(theta)
        spherical = (torch.sin((1.0 - t) * theta) * x + torch.sin(t * theta) * y) / torch.where(
            colinear, 1.0, sin_theta
        )
        result[start : start + rows] = torch.where(colinear, (1.0 - t) * x + t * y, spherical)
    if row_wise and len(shape) >= 2:
        result = result.reshape(v0.transpose(0, -1).shape).transpose(0, -1)
    result = result.reshape(shape)
    return result if base is None else result.add_(base.to(dtype))


def _pair_statistics(
    first: torch.Tensor, second: torch.Tensor, base: torch.Tensor | None = None
) -> tuple[float, float, float]:
    """|v0|, |v1| and v0 . v1 of v_i = x_i - b (v_i = x_i without a base): one pass in fp64 chunks, so no task
    vector or fp64 copy of a whole input is made."""
    x, y = first.reshape(-1), second.reshape(-1)
    b = base.reshape(-1) if base is not None else None
    squares_x, squares_y, products = [], [], []
    buffers = torch.empty(2, min(REDUCE_CHUNK, x.numel()), dtype=torch.float64)
    for i in _chunks(x.numel()):
        u, v = buffers[:, : min(REDUCE_CHUNK, x.numel() - i)]
        u.copy_(x[i : i + REDUCE_CHUNK])
        v.copy_(y[i : i + REDUCE_CHUNK])
        if b is not None:  # the fp64 buffers promote the base exactly
            u.sub_(b[i : i + REDUCE_CHUNK])
            v.sub_(b[i : i + REDUCE_CHUNK])
        squares_x.append(torch.dot(u, u).item())
        squares_y.append(torch.dot(v, v).item())
        products.append(torch.dot(u, v).item())
    return math.sqrt(math.fsum(squares_x)), math.sqrt(math.fsum(squares_y)), math.fsum(products)


def _nuslerp_flat(
    first: torch.Tensor, second: torch.Tensor, base: torch.Tensor | None, t: float, dtype: torch.dtype
) -> torch.Tensor:
    """NuSLERP over the whole flattened tensor: c0 v0 + c1 v1 (+ b) = c0 x0 + c1 x1 (+ (1 - c0 - c1) b), formed in
    fp64 and rounded once."""
    norm_x, norm_y, product = _pair_statistics(first, second, base)
    cos = min(1.0, max(-1.0, product / max(norm_x, 1e-7) / max(norm_y, 1e-7)))
    if 1.0 - cos * cos <= 1e-16:  # colinear: linear interpolation
        c0, c1 = 1.0 - t, t
    else:
        theta = math.acos(cos)
        c0, c1 = math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    pairs = [(c0, first), (c1, second)]
    if base is not None:
        pairs.append((1.0 - c0 - c1, base))
    return _combine(pairs, dtype)


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None,
    normalize: bool,
    eps: float,
    key: str,
) -> torch.Tensor:
    """mergekit's Multi-SLERP: v_i = x_i (- b); unit vectors u_i = v_i / (|v_i| + eps); m = sum_i w_i u_i (weights
    divided by their sum when `normalize`); result = m / |m| * sum_i w_i |v_i| (+ b).

    mergekit also projects the u_i onto the tangent space at m/|m| and maps their weighted sum back, but that sum is
    identically zero (sum_i w_i (u_i - (u_i . m/|m|) m/|m|) = m - |m| m/|m|), so the exponential map returns m/|m|;
    it is left out. Two sources whose weighted unit vectors cancel (|m| < eps) are averaged linearly, more refuse.
    """
    if len(tensors) == 1:
        return tensors[0].to(accumulator_dtype(tensors[0].dtype), copy=True)
    dtype = accumulator_dtype(*(x.dtype for x in tensors), *((base.dtype,) if base is not None else ()))
    total = math.fsum(weights) if normalize else 1.0
    coefficients = [weight / total for weight in weights]

    def vector(x: torch.Tensor) -> torch.Tensor:
        """v = x - b, or x itself (read only) without a base."""
        return x.to(dtype) if base is None else x.to(dtype).sub(base)

    # Each task vector is made once: its norm, then its share of the mean.
    norms = []
    mean = torch.zeros(tensors[0].shape, dtype=dtype)
    for x, coefficient in zip(tensors, coefficients):
        v = vector(x)
        norms.append(norm64(v))
        mean.add_(v, alpha=coefficient / (norms[-1] + eps))
        del v
    mean_norm = norm64(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise InputError(
                f"multislerp: the weighted unit vectors of tensor {key!r} cancel out (antipodal sources whose weights "
                "balance); change the weights"
            )
        result = vector(tensors[0]).mul(coefficients[0]).add_(vector(tensors[1]), alpha=coefficients[1])
    else:
        scale = math.fsum(c * n for c, n in zip(coefficients, norms))
        result = mean.mul_(math.cos(eps) * scale / mean_norm)
    return result if base is None else result.add_(base.to(dtype))


def karcher(tensors: Sequence[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """mergekit's Karcher mean: the Riemannian mean of the unit directions u_i = x_i / |x_i| (equal weights
    alpha_i = 1/n over every input, the base included; per-source weights are ignored, as in mergekit), by up to
    `max_iter` steps m <- exp_m(sum_i alpha_i theta_i / sin(theta_i) (u_i - cos(theta_i) m)), stopping when the step
    is below `tol`; scaled by sum_i alpha_i |x_i|. Inputs with |x_i| <= tol are left out of the direction.

    Each step is a linear combination of the inputs, so the u_i are never stored: two buffers, any number of inputs.
    """
    dtype = accumulator_dtype(*(x.dtype for x in tensors))
    count = len(tensors)
    alphas = [1.0 / count] * count
    norms = [norm64(x) for x in tensors]
    scale = math.fsum(alpha * norm for alpha, norm in zip(alphas, norms))
    valid = [index for index, norm in enumerate(norms) if norm > tol]
    if not valid:
        return torch.zeros(tensors[0].shape, dtype=dtype)
    total = math.fsum(alphas[index] for index in valid)
    weights = {index: alphas[index] / total for index in valid}
    mean = torch.zeros(tensors[0].shape, dtype=dtype)
    for index in valid:
        mean.add_(tensors[index].to(dtype), alpha=weights[index] / norms[index])
    mean_norm = norm64(mean)
    if mean_norm < tol:
        mean = tensors[valid[0]].to(dtype, copy=True).div_(norms[valid[0]])
    else:
        mean.div_(mean_norm)
    tangent = torch.empty_like(mean)
    for _ in range(max_iter):
        tangent.zero_()
        mean_coefficient = 0.0
        for index in valid:
            cos = min(1.0, max(-1.0, dot64(mean, tensors[index]) / norms[index]))
            theta = math.acos(cos)
            if theta < tol:
                continue
            factor = weights[index] * theta / math.sin(theta)
            tangent.add_(tensors[index].to(dtype), alpha=factor / norms[index])
            mean_coefficient += factor * cos
        tangent.sub_(mean, alpha=mean_coefficient)
        tangent_norm = norm64(tangent)
        if tangent_norm < tol:
            break
        mean.mul_(math.cos(tangent_norm)).add_(tangent, alpha=math.sin(tangent_norm) / tangent_norm)
        unit_norm = norm64(mean)
        if unit_norm > tol:
            mean.div_(unit_norm)
    return mean.mul_(scale)


# ---------------------------------------------------------------------------------------------------- task vectors


def _order_statistics(values: torch.Tensor, positions: Sequence[int], in_place: bool = False) -> list[float]:
    """The entries at `positions` (0-based) of the flat tensor `values` sorted in ascending order, in linear time
    (numpy's introselect; NaN counts as largest). `in_place` leaves `values` reordered instead of copying it once.
    torch.kthvalue would also build an int64 index of the whole tensor, twice the size of fp32 values: with two
    merge threads pruning 6.3M-element task vectors, that index was 100 MB of TIES's peak memory."""
    array = values.reshape(-1).numpy()
    if in_place:
        array.partition(positions)
    else:
        array = np.partition(array, positions)
    return [array[position].item() for position in positions]


def sparsify(
    delta: torch.Tensor,
    method: str | None,
    parameters: MergeParameters,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Prune one task vector in place (and rescale it to its L1 norm with `rescale`), as mergekit's `sparsify`:

    - magnitude (TIES): keep the k = max(1, int(density n)) entries of largest |delta|;
    - random (DARE): keep each entry with probability density;
    - outliers (breadcrumbs): drop the int(gamma n) largest |delta| and the smallest, keeping int(density n) (fewer
      outliers dropped when density + gamma > 1);
    - della: per row (along dimension 1; a 1-D tensor is one row), keep entry j with probability
      density - epsilon + 2 epsilon r_j / (n_row - 1), r_j its rank by |delta| from 0 (smallest).
    Rescaling multiplies the kept entries by |delta|_1 / |kept|_1 (both at least 1e-7, else unchanged).
    """
    density = parameters.density
    if method is None or density >= 1.0 or delta.numel() == 0:
        return delta
    before = l1_64(delta) if parameters.rescale else 0.0
    flat = delta.view(-1)
    numel = flat.numel()
    if method == "magnitude":
        magnitude = flat.abs()
        (threshold,) = _order_statistics(magnitude, [numel - max(1, int(density * numel))], in_place=True)
        flat.mul_(torch.abs(flat, out=magnitude) >= threshold)
    elif method == "outliers":
        kept = int(density * numel)
        dropped_top = int(parameters.gamma * numel)
        dropped_bottom = max(0, numel - kept - dropped_top)
        if kept == 0:
            flat.zero_()
        else:
            magnitude = flat.abs()
            lowest_kept, lowest_dropped = dropped_bottom, dropped_bottom + kept  # positions in ascending order
            cuts = [position for position in (lowest_kept, lowest_dropped) if 0 < position < numel]
            thresholds = dict(zip(cuts, _order_statistics(magnitude, cuts, in_place=True)))
            torch.abs(flat, out=magnitude)
            keep = torch.ones(numel, dtype=torch.bool)
            if lowest_kept in thresholds:
                keep &= magnitude >= thresholds[lowest_kept]
            if lowest_dropped in thresholds:
                keep &= magnitude < thresholds[lowest_dropped]
            flat.mul_(keep)
    elif method == "random":
        # In chunks: the generator draws in order, so this is the same mask as one draw over the whole tensor.
        # fp32 draws (24 random bits, ample for a keep probability) cost less than fp64 ones: DARE 8% faster.
        for i in _chunks(numel):
            piece = flat[i : i + REDUCE_CHUNK]
            piece.mul_(torch.rand(piece.numel(), generator=generator, dtype=torch.float32) < density)
    elif method == "della":
        rows = delta.view(1, -1) if delta.dim() < 2 else delta  # ranked along dimension 1, as mergekit does
        # Rows are ranked independently, so blocks of them are pruned one after another (the draws stay in order).
        step = max(1, REDUCE_CHUNK // max(math.prod(rows.shape[1:]), 1))
        for start in range(0, rows.shape[0], step):
            _della_prune(rows[start : start + step], parameters, generator)
    else:  # pragma: no cover (the plan validates method names)
        raise ValueError(method)
    if parameters.rescale:
        after = l1_64(delta)
        if before >= RESCALE_EPS and after >= RESCALE_EPS:
            delta.mul_(before / after)
    return delta


def _della_prune(rows: torch.Tensor, parameters: MergeParameters, generator: torch.Generator | None) -> None:
    """DELLA's pruning of a block of rows in place: entry j of a row is kept with probability density - epsilon +
    2 epsilon r_j / (n_row - 1), r_j its rank by magnitude along dimension 1 (0 for the smallest)."""
    length = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1)
    positions = torch.arange(length).view(1, length, *([1] * (rows.dim() - 2))).expand_as(order).contiguous()
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    del order, positions
    # A row of one entry has no spread of ranks: it is kept with probability density (mergekit fails there).
    rank_norm = ranks.to(torch.float64).div_(length - 1) if length > 1 else torch.full(ranks.shape, 0.5)
    probabilities = rank_norm.mul_(2 * parameters.epsilon).add_(parameters.density - parameters.epsilon)
    rows.mul_(torch.rand(rows.shape, generator=generator, dtype=torch.float64) < probabilities)


def task_vector_merge(
    method: str,
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    parameters: MergeParameters,
    key: str,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic (task_arithmetic, ties, dare_*, breadcrumbs*, della*):
    delta_i = sparsify(x_i - b); d_i = w_i delta_i.
    Without consensus: mixed = sum_i d_i, divided by sum_i w_i (1 if below 1e-8) when `normalize`.
    With consensus: s = sign(sum_i d_i) (>= 0 is +); mixed = sum_i d_i [sign d_i = s], divided by
    sum_i w_i [sign d_i = s] (1 where that is 0) when `normalize`.
    Result: b + lambda * mixed.

    Each task vector is made and pruned once. The sign election keeps the positive and negative parts (and their
    weights) apart, so the sum of the agreeing side needs no second visit of the sources.
    """
    dtype = accumulator_dtype(base.dtype, *(x.dtype for x in tensors))
    sparsification = SPARSIFICATION[method]
    consensus = method in CONSENSUS_METHODS
    b = base.to(dtype)
    delta = torch.empty(base.shape, dtype=dtype)
    if consensus:
        positive, negative = torch.zeros_like(delta), torch.zeros_like(delta)
        positive_weight = torch.zeros_like(delta) if parameters.normalize else None
        negative_weight = torch.zeros_like(delta) if parameters.normalize else None
    else:
        mixed = torch.zeros_like(delta)
    for index, (tensor, weight) in enumerate(zip(tensors, weights)):
        torch.sub(tensor.to(dtype), b, out=delta)
        generator = seeded_generator(parameters.seed, key, index) if sparsification in ("random", "della") else None
        sparsify(delta, sparsification, parameters, generator)
        delta.mul_(weight)
        if not consensus:
            mixed.add_(delta)
            continue
        positive.add_(delta.clamp(min=0))
        negative.add_(delta.clamp(max=0))
        if positive_weight is not None:
            positive_weight.add_(delta > 0, alpha=weight)
            negative_weight.add_(delta < 0, alpha=weight)
    if consensus:
        # The election reuses the task-vector buffer and overwrites the positive sums: no new whole-tensor buffer.
        elected_positive = torch.add(positive, negative, out=delta) >= 0
        mixed = torch.where(elected_positive, positive, negative, out=positive)
        if positive_weight is not None:
            divisor = torch.where(elected_positive, positive_weight, negative_weight, out=positive_weight)
            mixed.div_(divisor.masked_fill_(divisor == 0, 1.0))
    elif parameters.normalize:
        total = math.fsum(weights)
        mixed.div_(total if abs(total) >= 1e-8 else 1.0)
    return mixed.mul_(parameters.scale).add_(b)


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    normalize: bool,
    scale: float,
) -> torch.Tensor:
    """TIES-merging (see `task_vector_merge`)."""
    parameters = MergeParameters(normalize=normalize, scale=scale, density=density)
    return task_vector_merge("ties", base, tensors, weights, parameters, "")


# A merge's distance statistics for one tensor (see `hf_tts.merge.stream.DistanceStats`): each source's dot
# product with the merge, each input's squared norm (the sources, then the base) and the merge's squared norm.
TensorStatistics = tuple[list[float], list[float], float]


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """Model Stock: offsets delta_i = x_i - b; c = mean over pairs i < j of clamp(delta_i . delta_j /
    max(|delta_i| |delta_j|, 1e-6), -1, 1) (over the whole tensor, or per vector along the last dimension with
    `filter_wise`); t = n c / (1 + (n - 1) c) (0 where the denominator is below 1e-6);
    result = t mean_i(x_i) + (1 - t) b."""
    return model_stock_with_statistics(base, tensors, filter_wise)[0]


def model_stock_with_statistics(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool
) -> tuple[torch.Tensor, TensorStatistics]:
    """`model_stock`, and the tensor's distance statistics taken from the same fp64 Gram matrix of the offsets and
    the base (G), so the merge needs no second pass over its inputs: with r = b + t dbar (dbar the mean offset),
    |x_i|^2 = G_bb + 2 G_ib + G_ii, x_i . r = G_bb + G_ib + t (dbar . b + delta_i . dbar) and
    |r|^2 = G_bb + 2 t dbar . b + t^2 |dbar|^2, summed over the rows of `filter_wise`."""
    dtype = accumulator_dtype(base.dtype, *(x.dtype for x in tensors))
    count = len(tensors)
    shape = base.shape
    b = base.to(dtype)
    if filter_wise:
        vectors_b = b.reshape(1, -1) if b.dim() < 2 else b.reshape(math.prod(shape[:-1]), shape[-1])
    else:
        vectors_b = b.reshape(1, -1)
    rows, length = vectors_b.shape
    # Per row, the Gram matrix of (delta_1, ..., delta_n, b).
    gram = torch.zeros(rows, count + 1, count + 1, dtype=torch.float64)
    if filter_wise:
        step = max(1, REDUCE_CHUNK // max(length, 1))
        for start in range(0, rows, step):
            vectors = torch.stack(
                [x.reshape(rows, length)[start : start + step] for x in tensors] + [vectors_b[start : start + step]]
            ).double()
            vectors[:count] -= vectors[count]
            gram[start : start + step] += torch.einsum("irl,jrl->rij", vectors, vectors)
    elif length:
        # One fp64 buffer for every chunk: each row takes a source's chunk, the last the base's (converted exactly
        # by the copy), then the base is subtracted in fp64. The chunks are cut by one `split` per tensor and the
        # Gram matrix grows in place, so each chunk costs few Python-level calls: the merge threads share the GIL,
        # and with more calls per chunk they wait on each other (46 against 30 ms per 6.3M-element tensor on two
        # threads).
        size = min(REDUCE_CHUNK, length)
        vectors = torch.empty(count + 1, size, dtype=torch.float64)
        vector_rows = list(vectors)
        gram_matrix = gram[0]
        for *chunks, base_chunk in zip(*(x.reshape(-1).split(size) for x in tensors), vectors_b[0].split(size)):
            if base_chunk.numel() != size:  # the last, shorter chunk
                vectors = vectors[:, : base_chunk.numel()]
                vector_rows = list(vectors)
            for row, chunk in zip(vector_rows, (*chunks, base_chunk)):
                row.copy_(chunk)
            vectors[:count] -= vector_rows[count]
            gram_matrix.addmm_(vectors, vectors.T)
    offsets = gram[:, :count, :count]
    norms = torch.diagonal(offsets, dim1=1, dim2=2).sqrt()
    cosines = []
    for i in range(count):
        for j in range(i + 1, count):
            product = (norms[:, i] * norms[:, j]).clamp(min=1e-6)
            cosines.append((offsets[:, i, j] / product).clamp(-1.0, 1.0))
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, count * cos / torch.where(singular, 1.0, denominator)).to(dtype)
    statistics = _model_stock_statistics(gram, t.double(), count)
    if rows == 1:  # one t for the tensor: (1 - t) b + (t / n) sum_i x_i, in n + 1 passes and one buffer
        scalar = float(t[0])
        result = torch.mul(b, 1.0 - scalar)
        for x in tensors:
            result.add_(x.to(dtype), alpha=scalar / count)
        return result, statistics
    average = torch.zeros_like(b)
    for x in tensors:
        average.add_(x.to(dtype))
    average.div_(count)
    t = t.reshape(rows, 1)
    result = average.reshape(rows, length).mul_(t).add_(vectors_b * (1 - t))
    return result.reshape(shape), statistics


def _model_stock_statistics(gram: torch.Tensor, t: torch.Tensor, count: int) -> TensorStatistics:
    """The distance statistics of r = b + t dbar from the per-row Gram matrices of (delta_1, ..., delta_n, b)."""
    offsets, offset_base, base_base = gram[:, :count, :count], gram[:, :count, count], gram[:, count, count]
    mean_offset_base = offset_base.mean(dim=1)  # dbar . b
    offset_mean_offset = offsets.mean(dim=2)  # delta_i . dbar
    mean_offset_squared = offsets.mean(dim=(1, 2))  # |dbar|^2
    source_squared = base_base[:, None] + 2 * offset_base + torch.diagonal(offsets, dim1=1, dim2=2)
    source_merge = base_base[:, None] + offset_base + t[:, None] * (mean_offset_base[:, None] + offset_mean_offset)
    merge_squared = base_base + 2 * t * mean_offset_base + t * t * mean_offset_squared
    squared_norms = [*source_squared.sum(dim=0).tolist(), base_base.sum().item()]
    return source_merge.sum(dim=0).tolist(), squared_norms, merge_squared.sum().item()


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], select_topk: float) -> torch.Tensor:
    """SCE (per-source weights are ignored, as in mergekit): task vectors delta_i = x_i - b; with select_topk < 1,
    only the k = int(select_topk * count_nonzero(var)) entries of largest variance across the delta_i are kept;
    weights w_i = mean(delta_i^2) / sum_j mean(delta_j^2) (equal when that sum is below 1e-6); s = sign(sum_i delta_i)
    (>= 0 is +); result = b + sum_i w_i delta_i [sign delta_i = s] / max(sum_i w_i [sign delta_i = s], 1e-6)."""
    dtype = accumulator_dtype(base.dtype, *(x.dtype for x in tensors))
    b = base.to(dtype)
    count = len(tensors)
    keep = None
    if select_topk < 1.0:
        mean = torch.zeros_like(b)
        for x in tensors:
            mean.add_(x.to(dtype) - b)
        mean.div_(count)
        variance = torch.zeros_like(b)
        for x in tensors:
            variance.add_((x.to(dtype) - b - mean).square_())
        variance.div_(count)
        del mean
        k = int(int(torch.count_nonzero(variance)) * select_topk) if select_topk > 0 else 0
        if k == 0:
            keep = torch.zeros(b.shape, dtype=torch.bool)
        else:
            (threshold,) = _order_statistics(variance, [variance.numel() - k])
            keep = variance >= threshold
        del variance

    def delta(x: torch.Tensor) -> torch.Tensor:
        d = x.to(dtype) - b
        return d.mul_(keep) if keep is not None else d

    energies = [sumsq64(delta(x)) / max(b.numel(), 1) for x in tensors]
    total = math.fsum(energies)
    weights = [1.0 / count] * count if abs(total) < 1e-6 else [energy / total for energy in energies]
    positive, negative = torch.zeros_like(b), torch.zeros_like(b)
    positive_weight, negative_weight = torch.zeros_like(b), torch.zeros_like(b)
    elected = torch.zeros_like(b)
    for x, weight in zip(tensors, weights):
        d = delta(x)
        elected.add_(d)
        positive.add_(d.clamp(min=0), alpha=weight)
        negative.add_(d.clamp(max=0), alpha=weight)
        positive_weight.add_(d > 0, alpha=weight)
        negative_weight.add_(d < 0, alpha=weight)
    elected_positive = elected >= 0
    mixed = torch.where(elected_positive, positive, negative)
    divisor = torch.where(elected_positive, positive_weight, negative_weight).clamp_(min=1e-6)
    return mixed.div_(divisor).add_(b)
