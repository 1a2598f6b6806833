"""Every merge method against a hand computation in float64 (numpy, written from mergekit's definitions), the seeded
methods' reproducibility, SLERP's precision on a 32M-element tensor, and every method end to end through
`hf_tts.merge` on tiny model folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from merge_utils import make_f5_folder, weights

import hf_tts
from hf_tts.merge import methods
from hf_tts.merge.methods import MergeParameters

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    """A base and three sources near it (like fine-tunes), 2-D, plus some exact zeros in one task vector."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(24, 40, generator=generator)
    sources = [base + 0.3 * torch.randn(24, 40, generator=generator) for _ in range(3)]
    sources[2][:2] = base[:2]  # untouched rows: zero task vector entries
    return {"base": base, "a": sources[0], "b": sources[1], "c": sources[2]}


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().numpy()


def _check(result: torch.Tensor, expected: np.ndarray, atol: float = TOLERANCE) -> None:
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.double().numpy(), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------- fp64 references


def _magnitude64(delta: np.ndarray, density: float) -> np.ndarray:
    flat = delta.reshape(-1).copy()
    keep = max(1, int(density * flat.size))
    flat[np.argsort(-np.abs(flat), kind="stable")[keep:]] = 0
    return flat.reshape(delta.shape)


def _outliers64(delta: np.ndarray, density: float, gamma: float) -> np.ndarray:
    flat = delta.reshape(-1)
    n = flat.size
    kept, top = int(density * n), int(gamma * n)
    bottom = max(0, n - kept - top)
    order = np.argsort(np.abs(flat), kind="stable")
    mask = np.zeros(n)
    mask[order[bottom : bottom + kept]] = 1
    return (flat * mask).reshape(delta.shape)


def _gta64(base, sources, weights_, sparsify, consensus, normalize, scale):
    deltas = [w * sparsify(s - base) for s, w in zip(sources, weights_)]
    if consensus:
        sign = np.where(np.sum(deltas, axis=0) >= 0, 1.0, -1.0)
        masks = [np.sign(d) == sign for d in deltas]
        mixed = np.sum([d * m for d, m in zip(deltas, masks)], axis=0)
        divisor = np.sum([w * m for w, m in zip(weights_, masks)], axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = np.sum(deltas, axis=0)
        divisor = sum(weights_)
    return base + scale * (mixed / divisor if normalize else mixed)


def _slerp64(v0, v1, t):
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    dot = float(np.sum(v0 * v1) / (n0 * n1))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def _nuslerp64(v0, v1, t):
    """Per vector along the last axis (rows of a 2-D array)."""
    n0 = np.maximum(np.linalg.norm(v0, axis=-1, keepdims=True), 1e-7)
    n1 = np.maximum(np.linalg.norm(v1, axis=-1, keepdims=True), 1e-7)
    cos = np.clip(np.sum(v0 / n0 * v1 / n1, axis=-1, keepdims=True), -1, 1)
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)


def _multislerp64(vectors, weights_, eps=1e-8):
    """mergekit's procedure step by step, tangent-space projection included."""
    w = np.array(weights_) / sum(weights_)
    flat = np.stack([v.reshape(-1) for v in vectors])
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean /= np.linalg.norm(mean)
    dots = (units * mean).sum(-1, keepdims=True)
    tangent = ((units - dots * mean) * w[:, None]).sum(0)
    tangent_norm = np.linalg.norm(tangent) + eps
    result = mean * np.cos(tangent_norm) + tangent * (np.sin(tangent_norm) / tangent_norm)
    return (result * (norms[:, 0] * w).sum()).reshape(vectors[0].shape)


def _karcher64(vectors, max_iter=10, tol=1e-5):
    norms = [np.linalg.norm(v) for v in vectors]
    units = [v / n for v, n in zip(vectors, norms)]
    alpha = 1.0 / len(vectors)
    mean = sum(alpha * u for u in units)
    mean /= np.linalg.norm(mean)
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for u in units:
            dot = np.clip(np.sum(mean * u), -1, 1)
            theta = np.arccos(dot)
            if theta < tol:
                continue
            tangent += alpha * theta / np.sin(theta) * (u - dot * mean)
        tangent_norm = np.linalg.norm(tangent)
        if tangent_norm < tol:
            break
        mean = np.cos(tangent_norm) * mean + np.sin(tangent_norm) * tangent / tangent_norm
        mean /= np.linalg.norm(mean)
    return sum(alpha * n for n in norms) * mean


def _model_stock64(base, sources, rows: bool):
    offsets = [s - base for s in sources]
    axis = -1 if rows else None
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            product = np.maximum(np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis), 1e-6)
            cosines.append(np.clip(np.sum(a * b, axis=axis) / product, -1, 1))
    cos = np.mean(cosines, axis=0)
    n = len(sources)
    t = n * cos / (1 + (n - 1) * cos)
    if rows:
        t = t[:, None]
    return t * (sum(sources) / n) + (1 - t) * base


def _sce64(base, sources, topk):
    tvs = np.stack([s - base for s in sources])
    if topk < 1:
        var = tvs.var(axis=0)
        k = int(np.count_nonzero(var) * topk)
        mask = np.zeros(var.size)
        mask[np.argsort(-var.reshape(-1), kind="stable")[:k]] = 1
        tvs = tvs * mask.reshape(var.shape)
    sign = np.where(tvs.sum(0) >= 0, 1.0, -1.0)
    erase = np.sign(tvs) == sign
    energies = (tvs**2).reshape(len(sources), -1).mean(1)
    w = energies / energies.sum()
    weighted = w[:, None, None] * erase
    return base + (tvs * weighted).sum(0) / np.maximum(weighted.sum(0), 1e-6)


# ---------------------------------------------------------------------------------------------- methods


def test_linear_and_task_arithmetic(tensors):
    a, b, c, base = (tensors[k] for k in ("a", "b", "c", "base"))
    stacked = torch.stack([a, b, c]).reshape(3, -1)
    _check(methods.linear(stacked, [1.0, 2.0, 5.0], True).reshape(a.shape), (_np(a) + 2 * _np(b) + 5 * _np(c)) / 8)
    expected = _np(base) + 0.7 * (0.5 * (_np(a) - _np(base)) + 2.0 * (_np(b) - _np(base)))
    _check(methods.task_arithmetic(base, [a, b], [0.5, 2.0], False, 0.7), expected)


@pytest.mark.parametrize(
    ("method", "consensus", "kwargs"),
    [
        ("ties", True, {"density": 0.4, "normalize": True}),
        ("ties", True, {"density": 1.0, "normalize": False, "scale": 0.5}),
        ("breadcrumbs", False, {"density": 0.5, "gamma": 0.05, "normalize": False}),
        ("breadcrumbs_ties", True, {"density": 0.5, "gamma": 0.05, "normalize": True, "scale": 1.3}),
        ("breadcrumbs", False, {"density": 0.98, "gamma": 0.1, "normalize": False}),  # fewer outliers dropped
    ],
)
def test_task_vector_methods(tensors, method, consensus, kwargs):
    parameters = MergeParameters(**kwargs)
    base = tensors["base"]
    sources = [tensors[k] for k in ("a", "b", "c")]
    weights_ = [1.0, 0.5, 2.0]
    if method == "ties":

        def prune(delta):
            return _magnitude64(delta, parameters.density)
    else:

        def prune(delta):
            return _outliers64(delta, parameters.density, parameters.gamma)

    expected = _gta64(
        _np(base), [_np(s) for s in sources], weights_, prune, consensus, parameters.normalize, parameters.scale
    )
    _check(methods.task_vector_merge(method, base, sources, weights_, parameters, "w"), expected)


def test_slerp_nuslerp_multislerp_karcher(tensors):
    a, b, c, base = (tensors[k] for k in ("a", "b", "c", "base"))
    _check(methods.slerp(a, b, 0.3), _slerp64(_np(a), _np(b), 0.3))
    # nuslerp: flattened without base is SLERP without the colinearity threshold; per row; with a base.
    flat = _nuslerp64(_np(a).reshape(1, -1), _np(b).reshape(1, -1), 0.75).reshape(a.shape)
    _check(methods.nuslerp([a, b], [1.0, 3.0], None, True, False), flat)
    _check(methods.nuslerp([a, b], [1.0, 3.0], None, False, False), _nuslerp64(_np(a), _np(b), 0.75))
    columns = _nuslerp64(_np(a).T, _np(b).T, 0.75).T
    _check(methods.nuslerp([a, b], [1.0, 3.0], None, False, True), columns)
    with_base = _np(base) + _nuslerp64(
        (_np(a) - _np(base)).reshape(1, -1), (_np(b) - _np(base)).reshape(1, -1), 0.5
    ).reshape(a.shape)
    _check(methods.nuslerp([a, b], [2.0, 2.0], base, True, False), with_base)
    expected = _multislerp64([_np(a), _np(b), _np(c)], [1.0, 2.0, 3.0])
    _check(methods.multislerp([a, b, c], [1.0, 2.0, 3.0], None, True, 1e-8, "w"), expected)
    expected = _np(base) + _multislerp64([_np(x) - _np(base) for x in (a, b, c)], [1.0, 1.0, 2.0])
    _check(methods.multislerp([a, b, c], [1.0, 1.0, 2.0], base, True, 1e-8, "w"), expected)
    _check(methods.karcher([a, b, c], 10, 1e-5), _karcher64([_np(a), _np(b), _np(c)]))


def test_model_stock_sce_nearswap(tensors):
    a, b, c, base = (tensors[k] for k in ("a", "b", "c", "base"))
    sources = [_np(a), _np(b), _np(c)]
    _check(methods.model_stock(base, [a, b, c], False), _model_stock64(_np(base), sources, rows=False))
    _check(methods.model_stock(base, [a, b, c], True), _model_stock64(_np(base), sources, rows=True))
    _check(methods.sce(base, [a, b, c], 1.0), _sce64(_np(base), sources, 1.0))
    _check(methods.sce(base, [a, b, c], 0.3), _sce64(_np(base), sources, 0.3))
    weight = np.clip(0.2 / np.maximum(np.abs(_np(base) - _np(a)), 1e-6), 0, 1)
    _check(methods.nearswap(base, a, 0.2), weight * _np(a) + (1 - weight) * _np(base))


@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0)])
def test_model_stock_of_empty_tensors(shape):
    """A tensor without elements merges to an empty tensor of its shape, per row too, with zero statistics."""
    base = torch.empty(shape)
    for filter_wise in (False, True):
        merged, (dots, squared_norms, merged_squared) = methods.model_stock_with_statistics(
            base, [base.clone(), base.clone()], filter_wise
        )
        assert merged.shape == shape and dots == [0.0, 0.0] and squared_norms == [0.0] * 3 and merged_squared == 0.0


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_statistics_from_its_gram_matrix(tensors, monkeypatch, filter_wise):
    """The distance statistics model_stock derives from its Gram matrix (no second pass over the inputs) equal
    source . merge, |input|^2 and |merge|^2 computed in fp64 from the inputs and the fp64 reference merge; also when
    the Gram pass runs in several chunks (and rows) per tensor."""
    monkeypatch.setattr(methods, "REDUCE_CHUNK", 100)
    a, b, c, base = (tensors[k] for k in ("a", "b", "c", "base"))
    merged, (dots, squared_norms, merged_squared) = methods.model_stock_with_statistics(base, [a, b, c], filter_wise)
    expected = _model_stock64(_np(base), [_np(a), _np(b), _np(c)], rows=filter_wise)
    _check(merged, expected)
    inputs = [_np(a), _np(b), _np(c), _np(base)]
    np.testing.assert_allclose(dots, [np.sum(x * expected) for x in inputs[:3]], rtol=1e-6)
    np.testing.assert_allclose(squared_norms, [np.sum(x * x) for x in inputs], rtol=1e-12)
    np.testing.assert_allclose(merged_squared, np.sum(expected * expected), rtol=1e-6)
    # A NaN shows in the squared norm of the input that holds it (the merge names it from there).
    broken = b.clone()
    broken[3, 7] = float("nan")
    _, (_, squared_norms, _) = methods.model_stock_with_statistics(base, [a, broken, c], filter_wise)
    assert [math.isfinite(value) for value in squared_norms] == [True, False, True, True]


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_are_seeded_and_rescale_to_the_l1_norm(tensors, method):
    base, a = tensors["base"], tensors["a"]
    parameters = MergeParameters(normalize=False, density=0.3, rescale=True, epsilon=0.1, seed=7)
    first = methods.task_vector_merge(method, base, [a], [1.0], parameters, "w")
    again = methods.task_vector_merge(method, base, [a], [1.0], parameters, "w")
    other = methods.task_vector_merge(
        method, base, [a], [1.0], MergeParameters(**{**parameters.__dict__, "seed": 8}), "w"
    )
    assert torch.equal(first, again) and not torch.equal(first, other)
    # One source: the result is b + delta * mask * |delta|_1 / |delta * mask|_1; the mask is where it moved.
    delta = _np(a) - _np(base)
    kept = (first - base).abs().double().numpy() > 1e-6
    assert 0.15 < kept.mean() < 0.45  # about density of the entries survive
    expected = _np(base) + delta * kept * np.abs(delta).sum() / np.abs(delta * kept).sum()
    _check(first, expected)


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_random_pruning_in_chunks_draws_what_one_whole_draw_would(tensors, method, monkeypatch):
    # DARE and DELLA prune in chunks of REDUCE_CHUNK elements (whole rows for DELLA) to bound memory; the seeded
    # generator draws in order, so the chunk size must not change a single kept entry.
    base, a, b = tensors["base"], tensors["a"], tensors["b"]
    parameters = MergeParameters(normalize=True, density=0.4, rescale=True, epsilon=0.1, seed=3)
    whole = methods.task_vector_merge(method, base, [a, b], [1.0, 0.5], parameters, "w")
    monkeypatch.setattr(methods, "REDUCE_CHUNK", 7 * base.shape[-1] + 3)  # several chunks, not on row boundaries
    chunked = methods.task_vector_merge(method, base, [a, b], [1.0, 0.5], parameters, "w")
    assert torch.equal(whole, chunked)


def test_della_keeps_large_entries_more_often():
    generator = torch.Generator().manual_seed(3)
    base = torch.zeros(64, 400)
    source = torch.randn(64, 400, generator=generator)
    parameters = MergeParameters(normalize=False, density=0.5, epsilon=0.4, seed=1)
    merged = methods.task_vector_merge("della_linear", base, [source], [1.0], parameters, "w")
    kept = merged != 0
    magnitude = source.abs()
    threshold = magnitude.median(dim=1, keepdim=True).values
    large, small = kept[magnitude > threshold].float().mean(), kept[magnitude <= threshold].float().mean()
    assert large > 0.65 and small < 0.35  # keep probabilities 0.1 .. 0.9 by rank within each row


def test_slerp_precise_on_a_32m_element_tensor():
    """fp32 sums over 32M elements drift (the issue measured 8e-5); norms and dot are accumulated in fp64."""
    numel = 1 << 25
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(numel, generator=generator).add_(0.3)
    second = torch.randn(numel, generator=generator).mul_(0.5).add_(first, alpha=0.8)
    merged = methods.slerp(first, second, 0.4)
    chunk = 1 << 22
    norms = [0.0, 0.0]
    dot = 0.0
    for start in range(0, numel, chunk):
        x = first[start : start + chunk].double().numpy()
        y = second[start : start + chunk].double().numpy()
        norms[0] += float(x @ x)
        norms[1] += float(y @ y)
        dot += float(x @ y)
    cos = dot / math.sqrt(norms[0] * norms[1])
    theta = math.acos(cos)
    c0, c1 = math.sin(0.6 * theta) / math.sin(theta), math.sin(0.4 * theta) / math.sin(theta)
    worst = 0.0
    for start in range(0, numel, chunk):
        expected = c0 * first[start : start + chunk].double() + c1 * second[start : start + chunk].double()
        worst = max(worst, float((merged[start : start + chunk].double() - expected).abs().max()))
    assert worst <= 1e-6, worst


# ---------------------------------------------------------------------------------------------- end to end

END_TO_END = [
    ("nuslerp", 2, False, {}),
    ("nuslerp", 2, True, {"nuslerp_flatten": False}),
    ("multislerp", 3, False, {}),
    ("karcher", 3, False, {"max_iter": 5}),
    ("dare_linear", 3, True, {"density": 0.5, "seed": 1}),
    ("dare_ties", 3, True, {"density": 0.5, "seed": 1}),
    ("breadcrumbs", 3, True, {"density": 0.5, "gamma": 0.02}),
    ("breadcrumbs_ties", 3, True, {"density": 0.5}),
    ("della", 3, True, {"density": 0.5, "seed": 2}),
    ("della_linear", 3, True, {"density": 0.5, "epsilon": 0.1, "seed": 2}),
    ("model_stock", 3, True, {"filter_wise": True}),
    ("sce", 3, True, {"select_topk": 0.5}),
    ("nearswap", 1, True, {"t": 0.5}),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return [make_f5_folder(root / name, seed) for seed, name in enumerate(["a", "b", "c", "base"])]


@pytest.mark.parametrize(("method", "count", "with_base", "kwargs"), END_TO_END)
def test_every_method_end_to_end(folders, tmp_path, method, count, with_base, kwargs):
    """Each method merges tiny model folders through `hf_tts.merge` and equals the method applied to the loaded
    tensors; the saved recipe replays to the same bytes (the random methods through their recorded seed)."""
    base = {"base": folders[3]} if with_base else {}
    path, report = hf_tts.merge(folders[:count], method=method, out_dir=tmp_path / "out", **base, **kwargs)
    output = weights(path)
    loaded = [weights(folder) for folder in folders[:count]]
    base_state = weights(folders[3]) if with_base else None
    plan = report.plan
    key = max(output, key=lambda name: output[name].numel() if output[name].is_floating_point() else 0)
    task = next(task for task in plan.tasks if task.key == key)
    from hf_tts.merge.stream import _merge

    inputs = [state[key] for state in loaded] + ([base_state[key]] if base_state is not None else [])
    torch.testing.assert_close(output[key], _merge(plan, task, inputs, None), rtol=0, atol=0)
    replay, _ = hf_tts.merge(recipe=path / "merge_recipe.yaml", out_dir=tmp_path / "replay")
    assert (replay / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    assert f"| method | `{method}` |" in (path / "README.md").read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nearswap", "count": 1}, "needs --t"),
        ({"method": "nearswap", "count": 2, "t": 0.1}, "at most 1 source"),
        ({"method": "model_stock", "count": 1}, "at least 2 sources"),
        ({"method": "della", "count": 2, "density": 0.1, "epsilon": 0.15}, "density ± epsilon"),
        ({"method": "breadcrumbs", "count": 2, "gamma": 1.5}, "--gamma must be in"),
        ({"method": "sce", "count": 2, "select_topk": -0.1}, "--select-topk must be in"),
        ({"method": "karcher", "count": 2, "max_iter": 0}, "max_iter must be in"),
        ({"method": "dare_ties", "count": 2, "seed": -1}, "seed must be in"),
        ({"method": "linear", "count": 2, "with_base": True}, "takes no --base"),
        ({"method": "ties", "count": 2, "gamma_typo": 1}, "unknown merge parameter 'gamma_typo'"),
    ],
)
def test_method_parameters_validated(folders, tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    count = kwargs.pop("count")
    with_base = kwargs.pop("with_base", kwargs["method"] not in ("linear",))
    base = {"base": folders[3]} if with_base else {}
    with pytest.raises(hf_tts.errors.InputError, match=message):
        hf_tts.merge(folders[:count], out_dir=tmp_path / "out", **base, **kwargs)
    assert not (tmp_path / "out").exists()


def test_random_method_seed_recorded_and_cli_seed(folders, tmp_path, capsys):
    from hf_tts.cli import main

    path, report = hf_tts.merge(folders[:2], method="dare_ties", base=folders[3], density=0.5, out_dir=tmp_path / "a")
    assert isinstance(report.plan.recipe.seed, int)
    assert f"seed: {report.plan.recipe.seed}" in (path / "merge_recipe.yaml").read_text()
    common = [str(folders[0]), str(folders[1]), "--base", str(folders[3]), "--method", "dare_ties", "--density", "0.5"]
    assert main(["merge", *common, "--seed", "5", "--out", str(tmp_path / "b")]) == 0
    assert main(["merge", *common, "--seed", "5", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the value itself
        main(["merge", *common, "--seed", "x", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--seed" in error and error.count("\n") == 1
