"""Exact vertices at collision layers that saturate on two sides (ReLU6, Hardtanh,
Hardsigmoid), against an LP oracle written here with scipy on the first layer's affine map."""

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

import collide
from collide.activations import lookup
from collide.config import ExactConfig
from tests.tolerances import LP_CONSTRAINT

ACTIVATIONS = {"ReLU6": (nn.ReLU6(), 25.0), "Hardtanh": (nn.Hardtanh(-0.5, 0.5), 3.0),
               "Hardsigmoid": (nn.Hardsigmoid(), 8.0)}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_exact_vertices_at_a_two_sided_layer_are_the_oracles_optima(name):
    act, scale = ACTIVATIONS[name]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), act, nn.Linear(12, 3)).eval()
        with torch.no_grad():
            model[1].weight.mul_(scale)
        target = torch.rand(1, 4, 4)
    config = ExactConfig(proximity=0.0)
    poly = collide.find_polytope(model, "2", target, n_vertices=4, method="exact", config=config)
    assert poly.valid.all(), poly.reasons
    w, b = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    t_pre = w @ target.double().flatten().numpy() + b
    sat = (lookup("hardtanh", {"min_val": -0.5, "max_val": 0.5}) if name == "Hardtanh" else lookup(name)).at(0.0)
    low, high = t_pre <= sat.below, t_pre >= sat.above
    free = ~(low | high)
    assert (low | high).sum() >= 4 and high[poly.units].any() and low[poly.units].any(), "the test needs both"
    # The oracle: the pushed unit's extreme over the same set, by scipy's LP.
    a_ub = np.vstack([w[low], -w[high]])
    b_ub = np.concatenate([sat.below - b[low], b[high] - sat.above])
    for vertex, unit in zip(poly.vertices, poly.units.tolist(), strict=True):
        sign = -1.0 if high[unit] else 1.0
        best = scipy.optimize.linprog(sign * w[unit], A_ub=a_ub, b_ub=b_ub, A_eq=w[free], b_eq=t_pre[free] - b[free],
                                      bounds=(0, 1), method="highs")
        assert best.status == 0
        pre = w @ vertex.double().flatten().numpy() + b
        assert np.abs(pre[free] - t_pre[free]).max() <= LP_CONSTRAINT * (1 + np.abs(t_pre).max())
        assert (pre[low] <= sat.below + LP_CONSTRAINT).all() and (pre[high] >= sat.above - LP_CONSTRAINT).all()
        assert abs(sign * (pre[unit] - b[unit]) - best.fun) <= 1e-4 * (1 + abs(best.fun))  # float32 vertex


def test_a_hardsigmoid_before_the_layer_gets_exact_rows():
    """Hardsigmoid's two kinks are region rows like a Hardtanh's: exact vertices at a ReLU
    after it, each rechecked by a numpy forward pass (hardsigmoid written out here)."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Hardsigmoid(), nn.Linear(12, 10), nn.ReLU(),
                              nn.Linear(10, 3)).eval()
        with torch.no_grad():
            model[1].weight.mul_(8)
        target = torch.rand(1, 4, 4)
    poly = collide.find_polytope(model, "4", target, n_vertices=3, method="exact")
    assert int(poly.valid.sum()) >= 2, poly.reasons
    w1, b1 = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    w2, b2 = model[3].weight.detach().double().numpy(), model[3].bias.detach().double().numpy()

    def pre(x: torch.Tensor) -> np.ndarray:
        return w2 @ np.clip((w1 @ x.double().flatten().numpy() + b1) / 6 + 0.5, 0, 1) + b2

    t = pre(target)
    for v in poly.vertices[poly.valid]:
        p = pre(v)
        assert np.abs(p[t > 0] - t[t > 0]).max() <= 1e-5 * (1 + np.abs(t).max()) and (p[t <= 0] <= 1e-5).all()
