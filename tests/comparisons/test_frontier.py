"""The approximation frontier (collide.comparisons.frontier) against an oracle on tiny nets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from collide.comparisons.frontier import LOOSE, OPTIMAL, FrontierConfig, closest_within
from collide.errors import ConfigError, DataError, LayerError
from tests.tolerances import FRONTIER_EXACT, FRONTIER_VS_ORACLE

EPSILONS = (0.0, 1e-3, 1e-2, 5e-2, 0.1, 0.2, 0.3)


def tiny_net(d: int, width: int, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, 3)).eval()
        # Default init leaves some targets with no positive unit at the first layer (the
        # relative error is then undefined): shift the biases so that about half are.
        with torch.no_grad():
            net[1].bias.add_(0.3)
        return net


def pair(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, d, generator=gen), torch.rand(1, d, generator=gen)


def oracle(net: nn.Module, target: torch.Tensor, other: torch.Tensor, eps: float) -> float:
    """The closest point's distance by SLSQP on ‖x − other‖² s.t. E(x)² ≤ (εR)², the box
    (and E(x) = 0 written as equalities for ε = 0), best of several starts."""
    lin = net[1].double()
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    t, o = target.double().flatten().numpy(), other.double().flatten().numpy()
    c = w @ t + b
    pos = c > 0
    r2 = float((np.maximum(c, 0) ** 2).sum())

    def e2(x):
        y = w @ x + b
        return float(((y - c)[pos] ** 2).sum() + (np.maximum(y, 0)[~pos] ** 2).sum())

    if eps == 0:
        cons = [{"type": "eq", "fun": lambda x: (w @ x + b - c)[pos]},
                {"type": "ineq", "fun": lambda x: -(w @ x + b)[~pos]}]
    else:
        cons = [{"type": "ineq", "fun": lambda x: (eps**2 * r2 - e2(x)) / r2}]
    gen = np.random.default_rng(0)
    best = np.inf
    for start in [t, o, (t + o) / 2, *gen.random((3, len(t)))]:
        res = scipy.optimize.minimize(lambda x: float(((x - o) ** 2).sum()), start, jac=lambda x: 2 * (x - o),
                                      method="SLSQP", bounds=[(0, 1)] * len(t), constraints=cons,
                                      options={"ftol": 1e-14, "maxiter": 1000})
        ok = all(np.all(np.asarray(k["fun"](res.x)) >= -1e-8) if k["type"] == "ineq" else
                 np.all(np.abs(k["fun"](res.x)) <= 1e-8) for k in cons)
        if res.success and ok:
            best = min(best, float(np.linalg.norm(res.x - o)))
    return best


@pytest.fixture(scope="module")
def solved():
    net = tiny_net(4, 6, seed=1)
    target, other = pair(4, seed=2)
    return net, target, other, closest_within(net, "2", target[0], other[0],
                                              config=FrontierConfig(epsilons=EPSILONS))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_frontier_matches_an_slsqp_oracle_for_every_epsilon(seed):
    net = tiny_net(3, 4, seed=seed)
    target, other = pair(3, seed=10 + seed)
    points = closest_within(net, "2", target[0], other[0], config=FrontierConfig(epsilons=EPSILONS))
    for p in points:
        want = oracle(net, target, other, p.epsilon)
        assert p.outcome == OPTIMAL, p
        assert abs(p.distance_to_other - want) <= FRONTIER_VS_ORACLE * (1 + want), (p.epsilon, p, want)


def test_every_point_meets_its_budget_and_distance_falls_as_epsilon_grows(solved):
    _, _, _, points = solved
    for p in points:
        assert p.outcome == OPTIMAL
        # The true error never exceeds the convex bound, which meets the budget.
        assert p.feature_error <= p.feature_error_bound + 1e-12, p
        assert p.feature_error_bound <= max(p.epsilon, FRONTIER_EXACT), p
        if p.epsilon > 0:
            assert p.feature_error_bound >= (1 - FrontierConfig().rel_tol) * p.epsilon or p.mu == 0, p
            # The dual bound: no point of the convex inner set E ≤ ε is closer to other.
            assert p.distance_lower_bound_inner <= p.distance_to_other + 1e-9, p
    dists = [p.distance_to_other for p in sorted(points, key=lambda p: p.epsilon)]
    assert all(a >= b - 1e-9 for a, b in zip(dists, dists[1:], strict=False)), dists


def test_the_exact_point_collides_and_is_in_the_box(solved):
    net, target, _, points = solved
    p = points[0]
    assert p.epsilon == 0 and p.point.dtype == torch.float64 and p.point.shape == target[0].shape
    assert p.feature_error <= FRONTIER_EXACT
    assert float(p.point.min()) >= 0 and float(p.point.max()) <= 1


def test_an_other_image_already_within_epsilon_is_its_own_answer():
    net = tiny_net(3, 4, seed=0)
    target, _ = pair(3, seed=5)
    near = (target[0] + 1e-4).clamp(0, 1)
    [p] = closest_within(net, "2", target[0], near, config=FrontierConfig(epsilons=(0.3,)))
    assert p.mu == 0 and p.distance_to_other == 0 and p.outcome == OPTIMAL


def test_the_frontier_is_deterministic():
    net = tiny_net(3, 4, seed=0)
    target, other = pair(3, seed=7)
    runs = [closest_within(net, "2", target[0], other[0], config=FrontierConfig(epsilons=(0.0, 0.05)))
            for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.point, b.point)


def test_a_deeper_layer_is_refused_naming_the_first():
    net = tiny_net(3, 4, seed=0)
    target, other = pair(3, seed=7)
    with pytest.raises(LayerError, match="first ReLU layer"):
        closest_within(net, "4", target[0], other[0], config=FrontierConfig())


def test_bad_inputs_are_refused_naming_the_fix():
    net = tiny_net(3, 4, seed=0)
    target, other = pair(3, seed=7)
    with pytest.raises(DataError, match="NaN"):
        closest_within(net, "2", target[0], torch.full((3,), float("nan")), config=FrontierConfig())
    with pytest.raises(DataError, match="shape"):
        closest_within(net, "2", target[0], other, config=FrontierConfig())
    with pytest.raises(DataError, match="input box"):
        closest_within(net, "2", target[0], other[0] + 2, config=FrontierConfig())


@pytest.mark.parametrize("changes, message", [
    ({"epsilons": (0.1, -0.1)}, "epsilon finite and >= 0"),
    ({"epsilons": ()}, "at least one epsilon"),
    ({"epsilons": (float("nan"),)}, "finite"),
    ({"rel_tol": 0.0}, "rel_tol"),
    ({"lower": 1.0, "upper": 0.0}, "lower < upper"),
    ({"max_solves": 0}, "max_solves"),
])
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        FrontierConfig(**changes)


def test_a_list_of_epsilons_becomes_a_tuple():
    assert FrontierConfig(epsilons=[0, 0.1]).epsilons == (0.0, 0.1)


def test_loose_is_feasible_when_the_solve_budget_runs_out():
    net = tiny_net(4, 6, seed=1)
    target, other = pair(4, seed=2)
    [p] = closest_within(net, "2", target[0], other[0], config=FrontierConfig(epsilons=(0.05,), max_solves=1,
                                                                             rel_tol=1e-9))
    assert p.outcome in (LOOSE, OPTIMAL)
    assert p.feature_error_bound <= 0.05
