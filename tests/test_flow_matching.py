"""Flow-matching utilities: time grids (EPSS, sway) against upstream, fixed-grid ODE solvers, masks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_tts.errors import InputError
from hf_tts.flow_matching import EPSS_TIMESTEPS, lens_to_mask, random_span_mask, solve_ode, time_grid
from tests.conftest import upstream_fixture


@pytest.mark.parametrize("case", ["sample_euler8", "sample_epss16", "sample_nocfg4"])
def test_time_grid_equals_upstream(case):
    """The grid upstream's CFM.sample used for the case (EPSS where defined, sway unless disabled), exactly."""
    path = upstream_fixture("f5_v1_tiny")
    settings = json.loads((path / "cases.json").read_text())["sample_settings"][case]
    expected = load_file(path / "cases.safetensors")[f"{case}_t"]
    grid = time_grid(settings["steps"], use_epss=True, sway_sampling_coef=settings["sway_sampling_coef"])
    assert torch.equal(grid, expected)


def test_time_grid_epss_and_uniform():
    assert torch.equal(time_grid(6, use_epss=True), torch.tensor(EPSS_TIMESTEPS[6]) / 32)
    assert torch.equal(time_grid(6, use_epss=False), torch.linspace(0, 1, 7))
    assert torch.equal(time_grid(8, use_epss=True), torch.linspace(0, 1, 9))  # no EPSS grid for 8 steps
    swayed = time_grid(4, use_epss=False, sway_sampling_coef=-1.0)
    assert torch.allclose(swayed, 1 - torch.cos(torch.pi / 2 * torch.linspace(0, 1, 5)), atol=1e-7)
    with pytest.raises(InputError, match="steps must be >= 1"):
        time_grid(0)


def test_solve_ode_euler_and_midpoint():
    """dy/dt = t from y=0: euler sums t_k dt_k (left Riemann sum); midpoint is exact for this linear field."""
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0])
    calls = []
    euler = solve_ode(lambda t, y: t.expand_as(y), torch.zeros(2), grid, "euler", lambda i, n: calls.append((i, n)))
    assert torch.allclose(euler, torch.full((2,), 0.0 * 0.25 + 0.25 * 0.25 + 0.5 * 0.5))
    assert calls == [(0, 3), (1, 3), (2, 3)]
    midpoint = solve_ode(lambda t, y: t.expand_as(y), torch.zeros(2), grid, "midpoint")
    assert torch.allclose(midpoint, torch.full((2,), 0.5))
    with pytest.raises(InputError, match="method must be one of euler, midpoint"):
        solve_ode(lambda t, y: y, torch.zeros(1), grid, "rk4")


def test_masks():
    assert lens_to_mask(torch.tensor([2, 0, 4]), 4).tolist() == [
        [True, True, False, False],
        [False, False, False, False],
        [True, True, True, True],
    ]
    torch.manual_seed(0)
    lengths = torch.tensor([100, 37, 5])
    frac = torch.tensor([0.7, 1.0, 0.5])
    span = random_span_mask(lengths, frac, 120)
    assert span.sum(dim=1).tolist() == [70, 37, 2]
    assert not (span & ~lens_to_mask(lengths, 120)).any()  # spans stay inside each sample
    # contiguous: exactly one rising edge per non-empty span
    edges = (span[:, 1:] & ~span[:, :-1]).sum(dim=1) + span[:, 0].long()
    assert edges.tolist() == [1, 1, 1]
