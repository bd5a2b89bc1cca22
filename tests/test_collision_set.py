"""The exact collision set's geometry against oracles: an LP of another formulation,
hand-built sets whose dimension, ball and widths are known, and a polygon whose uniform
mean is known in closed form."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from torch import nn

from collide.api import collision_geometry
from collide.config import GeometryConfig
from collide.errors import ConfigError, DataError
from collide.taps import preactivation
from tests.tolerances import LP_OBJECTIVE, MC_POLYGON_MEAN, SET_EXACT

SMALL = GeometryConfig(n_samples=400, chains=20, burn_in=40, thin=4, n_directions=4)


def _net(*weights: tuple[list[list[float]], list[float]]) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k, (w, b) in enumerate(weights, start=1):
        fc = nn.Linear(len(w[0]), len(w))
        with torch.no_grad():
            fc.weight.copy_(torch.tensor(w))
            fc.bias.copy_(torch.tensor(b))
        layers[f"fc{k}"], layers[f"relu{k}"] = fc, nn.ReLU()
    return nn.Sequential(layers)


def _random_net(seed: int, d: int = 6, widths: tuple[int, ...] = (8, 7)) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    dims = (d, *widths)
    return _net(*[((torch.randn(o, i, generator=gen) / i**0.5).tolist(), (0.3 * torch.randn(o, generator=gen)).tolist())
                  for i, o in zip(dims, dims[1:], strict=False)])


def _errors(model: nn.Module, layer: str, points: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    net = model.double()
    t = preactivation(net, target.double()[None], layer).clamp_min(0)
    p = preactivation(net, points.double(), layer).clamp_min(0)
    model.float()
    return ((p - t).norm(dim=1) / t.norm(dim=1)).detach().numpy()


def test_the_ball_is_the_chebyshev_lp_of_the_set_in_subspace_coordinates():
    model = _random_net(0)
    target = torch.full((6,), 0.5)
    geo = collision_geometry(model, "relu1", target, config=SMALL)
    # Oracle: the same ball as scipy's LP over z, with x = t + N z and every row dense.
    w, b = model.fc1.weight.detach().double().numpy(), model.fc1.bias.detach().double().numpy()
    x0 = target.double().numpy()
    pre = w @ x0 + b
    basis = scipy.linalg.null_space(w[pre > 0])
    a = np.vstack([w[pre <= 0], np.eye(6), -np.eye(6)])
    rhs = np.concatenate([-b[pre <= 0], np.ones(6), np.zeros(6)]) - a @ x0
    g = a @ basis
    k = basis.shape[1]
    res = scipy.optimize.linprog(np.r_[np.zeros(k), -1.0], A_ub=np.hstack([g, np.linalg.norm(g, axis=1)[:, None]]),
                                 b_ub=rhs, bounds=[(None, None)] * k + [(0, None)], method="highs")
    assert res.status == 0
    assert geo.free_dim == k and geo.dim == k and geo.dim_method == "ball"
    assert abs(geo.radius - (-res.fun)) <= LP_OBJECTIVE * (1 + abs(res.fun))
    # The stored ball lies inside every row.
    reach = np.linalg.norm(a @ basis, axis=1)
    center = geo.center.double().numpy()
    assert np.all(a @ center + geo.radius * reach <= rhs + a @ x0 + 1e-9)


def test_an_inequality_that_holds_with_equality_lowers_the_dimension():
    # Unit 1 fixes x1 = 0.7; unit 2 (pre-activation x2, at 0 on the target) must stay
    # ≤ 0 while the box keeps x2 ≥ 0, so x2 = 0 all over the set; x3 is free in [0, 1].
    model = _net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [-0.5, 0.0]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.0, 0.3]), config=SMALL)
    assert (geo.free_dim, geo.dim, geo.dim_method, geo.radius) == (2, 1, "implicit-equalities", 0.0)
    assert torch.allclose(geo.samples[:, :2], torch.tensor([0.7, 0.0], dtype=torch.float64), atol=SET_EXACT)
    assert float(geo.samples[:, 2].max() - geo.samples[:, 2].min()) > 0.5  # the segment is sampled
    # Without x3 the set is one point: zero width along every random direction says so.
    model = _net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.0]), config=SMALL)
    assert (geo.free_dim, geo.dim, geo.dim_method) == (1, 0, "widths")


def test_a_segment_has_dimension_one_its_half_length_as_radius_and_its_length_as_width():
    # x1 = 0.7 fixed, x2 − 0.5 ≤ 0 and the box: the segment {0.7} x [0, 0.5].
    model = _net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, -0.5]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.1]), config=SMALL)
    assert (geo.dim, geo.dim_method) == (1, "ball")
    assert abs(geo.radius - 0.25) <= LP_OBJECTIVE
    assert torch.allclose(geo.center, torch.tensor([0.7, 0.25], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(geo.widths, torch.full_like(geo.widths, 0.5), atol=1e-9)
    assert float(geo.samples[:, 1].min()) >= 0 and float(geo.samples[:, 1].max()) <= 0.5 + SET_EXACT


def test_hit_and_run_samples_a_known_polygon_uniformly():
    # No positive unit: C is the unit square cut by x1 + x2 ≤ 1.5, whose uniform mean of
    # x1 is (1/2 − (1/8)(5/6)) / (7/8) = 19/42.
    model = _net(([[1.0, 1.0]], [-1.5]))
    config = GeometryConfig(n_samples=4000, chains=40, burn_in=50, thin=5, n_directions=8, seed=3)
    geo = collision_geometry(model, "relu1", torch.tensor([0.2, 0.2]), config=config)
    x = geo.samples.numpy()
    assert geo.dim == 2 and (x.sum(1) <= 1.5 + SET_EXACT).all() and (x >= 0).all() and (x <= 1).all()
    assert abs(x[:, 0].mean() - 19 / 42) <= MC_POLYGON_MEAN
    assert abs(x[:, 1].mean() - 19 / 42) <= MC_POLYGON_MEAN
    # Widths against the polygon's own vertices.
    corners = np.array([[0, 0], [1, 0], [1, 0.5], [0.5, 1], [0, 1]])
    along = corners @ geo.directions.numpy().T
    assert np.allclose(geo.widths.numpy(), along.max(0) - along.min(0), atol=1e-9)


def test_every_sample_and_extreme_point_of_a_deeper_set_collides_exactly():
    model = _random_net(1)
    target = torch.rand(6, generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2
    geo = collision_geometry(model, "relu2", target, config=SMALL)
    assert geo.lp["region_rows"] > 0
    for points in (geo.samples, geo.extremes, geo.center[None]):
        assert _errors(model, "relu2", points, target).max() <= SET_EXACT
    # No sample reaches past an extreme point along its direction (LP optimality).
    u = geo.directions.numpy()
    reach = geo.samples.numpy() @ u.T
    ext = geo.extremes.numpy()
    top = np.einsum("nd,nd->n", u, ext[0::2])
    bottom = np.einsum("nd,nd->n", u, ext[1::2])
    assert (reach <= top + 1e-9).all() and (reach >= bottom - 1e-9).all()


def test_two_models_stack_into_a_joint_set_that_collides_in_both():
    a, b = _random_net(3, widths=(3,)), _random_net(4, widths=(2,))
    target = torch.full((6,), 0.5)
    geo = collision_geometry(a, "relu1", target, config=SMALL, also=[(b, "relu1")])
    positive = [m.fc1.weight.detach().double().numpy()[preactivation(m.double(), target.double()[None], "relu1")[0]
                                                       .detach().numpy() > 0] for m in (a, b)]
    a.float(), b.float()
    assert geo.models == 2 and geo.free_dim == 6 - np.linalg.matrix_rank(np.vstack(positive))
    assert _errors(a, "relu1", geo.samples, target).max() <= SET_EXACT
    assert _errors(b, "relu1", geo.samples, target).max() <= SET_EXACT


def test_bad_targets_and_oversized_sets_are_refused_with_the_fix():
    model = _random_net(0)
    with pytest.raises(DataError, match="NaN"):
        collision_geometry(model, "relu1", torch.full((6,), float("nan")), config=SMALL)
    with pytest.raises(DataError, match="outside the box"):
        collision_geometry(model, "relu1", torch.full((6,), 2.0), config=SMALL)
    with pytest.raises(ConfigError, match="max_entries"):
        collision_geometry(model, "relu2", torch.full((6,), 0.5),
                           config=GeometryConfig(max_entries=5, n_samples=10, chains=2))
    with pytest.raises(ConfigError, match="n_samples"):
        GeometryConfig(n_samples=0)
