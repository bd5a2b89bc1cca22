"""The exact collision set's geometry against oracles: an LP of another formulation,
hand-built sets whose dimension, ball and widths are known, and a polygon whose uniform
mean is known in closed form."""

from __future__ import annotations

import copy
import dataclasses

import highspy
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from torch import nn

from collide.api import _exact_set, collision_geometry, collision_size
from collide.config import GeometryConfig
from collide.errors import ConfigError, DataError, InternalError
from collide.piecewise import ball as ball_lp
from collide.piecewise import geometry, highs
from collide.piecewise.ball import _ball_every_box_row, inscribed_ball
from collide.piecewise.collision_set import FLAT_ROW, CollisionSet
from collide.results.verify import flat_claim
from collide.taps import preactivation
from tests.support import FLAT_NET, FLAT_TARGET, holds_all_over, relu_net, shrunk_mlp
from tests.tolerances import LP_OBJECTIVE, MC_POLYGON_MEAN, PRODUCT_ORDER, SET_EXACT

SMALL = GeometryConfig(n_samples=400, chains=8, burn_in=20, n_directions=4, max_draws=400)
# A converged sampler's mean of a coordinate of the uniform 3-simplex against 1/4, and its
# variance against 3/80, at ESS ≥ 1000 (standard errors about 0.006 and 0.002).
MC_SIMPLEX_MEAN = 0.02
MC_SIMPLEX_VAR = 0.006
# How many combined Monte Carlo standard errors two converged runs may differ by (issue §3).
MCSE_AGREE = 3.0
# Diagnostics on synthetic chains: R̂ of independent draws, and ESS against the exact
# value for an AR(1) chain (relative).
RHAT_IID = 1.01
ESS_REL = 0.25


def _random_net(seed: int, d: int = 6, widths: tuple[int, ...] = (8, 7)) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    dims = (d, *widths)
    return relu_net(*[((torch.randn(o, i, generator=gen) / i**0.5).tolist(),
                       (0.3 * torch.randn(o, generator=gen)).tolist()) for i, o in zip(dims, dims[1:], strict=False)])


def _errors(model: nn.Module, layer: str, points: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    net = model.double()
    t = preactivation(net, target.double()[None], layer).clamp_min(0)
    p = preactivation(net, points.double(), layer).clamp_min(0)
    model.float()
    return ((p - t).norm(dim=1) / t.norm(dim=1)).detach().numpy()


def test_the_ball_is_the_chebyshev_lp_of_the_set_in_subspace_coordinates(ball_solver):
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
    # no region rows at relu1, so no round for the interior point to hand over
    assert geo.lp["solver"] == ("simplex" if ball_solver == "simplex" else "interior point")
    # The stored ball lies inside every row.
    reach = np.linalg.norm(a @ basis, axis=1)
    center = geo.center.double().numpy()
    assert np.all(a @ center + geo.radius * reach <= rhs + a @ x0 + 1e-9)


def test_the_ball_measured_from_the_near_faces_is_the_ball_of_every_row_on_a_deeper_image_like_set(ball_solver):
    # 60 inputs, a third of them at the box's lower face as on an MNIST digit and a tenth
    # at its upper face, at relu2: box faces on both sides and the relu1 sign rows
    # (region rows, taken in lazily) bind.
    d = 60
    model = _random_net(3, d=d, widths=(40, 12))
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(d, generator=gen) * (torch.rand(d, generator=gen) > 0.33)
    target[:6] = 1.0
    size = collision_size(model, "relu2", target, config=SMALL)
    # Oracle: scipy's LP over z with x = t + N z and every row (box, relu1 signs, relu2's
    # non-positive units) dense from the start.
    net = copy.deepcopy(model).double()
    w1, b1 = net.fc1.weight.detach().numpy(), net.fc1.bias.detach().numpy()
    w2, b2 = net.fc2.weight.detach().numpy(), net.fc2.bias.detach().numpy()
    x0 = target.double().numpy()
    h1 = w1 @ x0 + b1
    on = (h1 > 0).astype(float)
    j2, c2 = w2 @ (on[:, None] * w1), w2 @ (on * b1) + b2
    pre2 = j2 @ x0 + c2
    basis = scipy.linalg.null_space(j2[pre2 > 0])
    sign = np.where(h1 > 0, -1.0, 1.0)  # relu1's units keep their signs
    a = np.vstack([j2[pre2 <= 0], sign[:, None] * w1, np.eye(d), -np.eye(d)])
    rhs = np.concatenate([-c2[pre2 <= 0], -sign * b1, np.ones(d), np.zeros(d)]) - a @ x0
    g = a @ basis
    k = basis.shape[1]
    res = scipy.optimize.linprog(np.r_[np.zeros(k), -1.0], A_ub=np.hstack([g, np.linalg.norm(g, axis=1)[:, None]]),
                                 b_ub=np.maximum(rhs, 0.0), bounds=[(None, None)] * k + [(0, None)], method="highs")
    assert res.status == 0 and -res.fun > 1e-3  # a real ball, so the lazy path's answer stands
    assert size.free_dim == k and size.dim == k and size.dim_method == "ball"
    assert abs(size.radius - (-res.fun)) <= LP_OBJECTIVE * (1 + abs(res.fun))
    # The first LP gave it (no fall-back to the every-row form that reads multipliers).
    cs = _exact_set(model, "relu2", target, SMALL, ())
    ball = inscribed_ball(cs)
    assert ball.box_rows_used == 2 * d and ball.radius == size.radius
    # Its multipliers are the rows' own, a near face's read from its column: the same as
    # the form with every face a row, which Fukuda's rounds read.
    every = _ball_every_box_row(cs, pinned=None)
    assert np.abs(ball.duals).max() > 0
    np.testing.assert_allclose(np.abs(ball.duals), np.abs(every.duals), atol=LP_OBJECTIVE)


def test_the_ball_lp_runs_the_solver_its_size_calls_for_and_falls_back_to_the_simplex(monkeypatch):
    model = _random_net(3, d=60, widths=(40, 12))
    target = torch.rand(60, generator=torch.Generator().manual_seed(1))
    cs = _exact_set(model, "relu2", target, SMALL, ())
    n_region = len(cs.bounds) - cs.n_fixed
    assert n_region > 0
    monkeypatch.setattr(ball_lp, "IPM_REGION_ROWS", n_region + 1)
    simplex = inscribed_ball(cs)
    monkeypatch.setattr(ball_lp, "IPM_REGION_ROWS", n_region)
    monkeypatch.setattr(ball_lp, "SIMPLEX_TAIL_ROWS", 0)
    ipm = inscribed_ball(cs)
    assert (simplex.solver, ipm.solver) == ("simplex", "interior point")
    assert abs(ipm.radius - simplex.radius) <= LP_OBJECTIVE * (1 + simplex.radius) and simplex.radius > 0
    # A round that adds fewer rows than SIMPLEX_TAIL_ROWS hands the runs after it to the simplex.
    monkeypatch.setattr(ball_lp, "SIMPLEX_TAIL_ROWS", 10**9)
    runs: list[str] = []
    real_run = highspy.Highs.run

    def run(h):
        runs.append(h.getOptionValue("solver")[1])  # (status, value)
        return real_run(h)

    monkeypatch.setattr(highspy.Highs, "run", run)
    tail = inscribed_ball(cs)
    monkeypatch.setattr(highspy.Highs, "run", real_run)
    assert tail.rounds >= 2 and tail.solver == "interior point, then simplex"
    assert runs[0] in ("ipx", "ipm") and set(runs[1:]) == {"simplex"}
    assert abs(tail.radius - simplex.radius) <= LP_OBJECTIVE * (1 + simplex.radius)
    monkeypatch.setattr(ball_lp, "SIMPLEX_TAIL_ROWS", 0)
    # An interior point that ends without an optimum: the simplex solves the LP from scratch.
    real = ball_lp.solve_with_region

    def ipm_fails(h, *args, **kwargs):
        run = real(h, *args, **kwargs)
        if h.getOptionValue("solver")[1] in ("ipx", "ipm"):  # (status, value)
            return dataclasses.replace(run, solution=None, status=highspy.HighsModelStatus.kSolveError)
        return run

    monkeypatch.setattr(ball_lp, "solve_with_region", ipm_fails)
    rescued = inscribed_ball(cs)
    assert rescued.solver.startswith("interior point (") and rescued.solver.endswith("then simplex")
    assert abs(rescued.radius - simplex.radius) <= LP_OBJECTIVE * (1 + simplex.radius)


def test_each_rows_reach_is_its_norm_on_the_equality_subspace():
    model = _random_net(3, d=60, widths=(40, 12))
    target = torch.rand(60, generator=torch.Generator().manual_seed(1))
    cs = _exact_set(model, "relu2", target, SMALL, ())
    a_all, _ = cs.all_rows()
    # Oracle: the rows' norms on the basis, and a row in the equalities' span (constant on the set).
    rows = np.vstack([a_all, 3.0 * cs.equalities[:1] + 2.0 * cs.equalities[-1:]])
    oracle = np.linalg.norm(rows @ cs.basis, axis=1)
    reach = np.r_[cs.reach_all(), cs.reach(rows[-1:])]
    np.testing.assert_allclose(reach, oracle, rtol=0, atol=PRODUCT_ORDER * (1 + np.linalg.norm(rows, axis=1)).max())
    assert reach[-1] <= FLAT_ROW * (1 + np.linalg.norm(rows[-1])) < reach[:-1][reach[:-1] > 1e-6].min()
    with pytest.raises(ValueError):
        a_all[0, 0] = 1.0  # the set's rows are shared by its measures: read-only


def test_an_inequality_that_holds_with_equality_lowers_the_dimension(ball_solver):
    # Unit 1 fixes x1 = 0.7; unit 2 (pre-activation x2, at 0 on the target) must stay
    # ≤ 0 while the box keeps x2 ≥ 0, so x2 = 0 all over the set; x3 is free in [0, 1].
    model = relu_net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [-0.5, 0.0]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.0, 0.3]), config=SMALL)
    # the radius is the ball's in the hull, the segment x3 in [0, 1]: as collision_size's
    assert (geo.free_dim, geo.dim, geo.dim_method) == (2, 1, "implicit-equalities")
    assert abs(geo.radius - 0.5) <= LP_OBJECTIVE and abs(float(geo.center[2]) - 0.5) <= LP_OBJECTIVE
    assert geo.radius == collision_size(model, "relu1", torch.tensor([0.7, 0.0, 0.3])).radius
    assert torch.allclose(geo.samples[:, :2], torch.tensor([0.7, 0.0], dtype=torch.float64), atol=SET_EXACT)
    assert float(geo.samples[:, 2].max() - geo.samples[:, 2].min()) > 0.5  # the segment is sampled
    # Without x3 the set is one point, its pinned rows certified: no width to measure.
    model = relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.0]), config=SMALL)
    assert (geo.free_dim, geo.dim, geo.dim_method, geo.radius) == (1, 0, "implicit-equalities", 0.0)
    assert len(geo.pinned) == len(geo.pinned_weights) == 2 and len(geo.widths) == len(geo.directions) == 0
    assert geo.sampler["converged"] and geo.sampler["mean_distance_to_target"] == 0.0


def test_where_the_dimensions_search_gives_up_zero_widths_along_random_directions_say_one_point(monkeypatch):
    # x1 = 0.7 fixed, x2 ≤ 0 against the box's x2 ≥ 0: one point. The search made to give
    # up; the probe's widths are each two LPs, and all 0.
    monkeypatch.setattr(geometry, "hull_dimension", lambda cs, *_, **__: ball_lp.Hull(cs.free_dim, "upper-bound"))
    geo = collision_geometry(relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0])), "relu1", torch.tensor([0.7, 0.0]),
                             config=SMALL)
    assert (geo.dim, geo.dim_method, geo.pinned) == (0, "widths", None)
    assert len(geo.widths) == SMALL.n_directions and float(geo.widths.abs().max()) <= 1e-7
    # A segment whose search gave up stays bounded, unsampled: no point to start chains from.
    geo = collision_geometry(relu_net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [-0.5, 0.0])), "relu1",
                             torch.tensor([0.7, 0.0, 0.3]), config=SMALL)
    assert (geo.dim, geo.dim_method) == (2, "upper-bound") and not geo.sampler["converged"]


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_the_rows_found_to_hold_all_over_the_set_are_those_no_point_of_it_lifts(seed, ball_solver):
    if seed is None:
        model, target = relu_net(*FLAT_NET), FLAT_TARGET
    else:  # a random net on a target half on its lower faces, as MNIST's background is
        model = _random_net(seed, d=10, widths=(14,))
        target = torch.rand(10, generator=torch.Generator().manual_seed(seed)) * (torch.arange(10) % 2)
    cs = _exact_set(model, "relu1", target, SMALL, ())
    a_all, b_all = cs.all_rows()
    tight = np.flatnonzero(b_all - a_all @ cs.origin <= 1e-9)
    found = ball_lp.implicit_equalities(cs).rows
    assert not found[np.setdiff1d(np.arange(len(b_all)), tight)].any()  # only rows tight at the target
    moving = cs.reach_all()[tight] > 1e-9
    np.testing.assert_array_equal(found[tight][moving], holds_all_over(cs, tight[moving]))
    if seed is None:
        assert found.sum() == 3 and found[tight].sum() < len(tight)  # x3 + x4 ≤ 0, x3 ≥ 0, x4 ≥ 0


def test_a_set_flattened_by_rows_tight_at_its_target_has_the_hulls_dimension_and_a_ball_in_it(ball_solver):
    size = collision_size(relu_net(*FLAT_NET), "relu1", FLAT_TARGET)
    assert (size.free_dim, size.dim, size.dim_method) == (7, 5, "implicit-equalities")
    # the ball in the hull: x3 = x4 = 0 at its centre, x6 ≤ x5, and room for the radius
    assert size.radius > 0.05 and abs(size.center[2]) + abs(size.center[3]) <= SET_EXACT
    assert size.center[5] <= size.center[4] + SET_EXACT
    assert size.solver == ("simplex" if ball_solver == "simplex" else "interior point")  # the flat's ball
    # One point: x1 fixed, x2 ≤ 0 and x2 ≥ 0.
    point = collision_size(relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0])), "relu1", torch.tensor([0.7, 0.0]))
    assert (point.free_dim, point.dim, point.dim_method, point.radius) == (1, 0, "implicit-equalities", 0.0)


def test_a_row_slack_at_the_target_however_little_is_no_implicit_equality():
    # x3 = 0.5 fixed; x1 + x2 + 40 x3 ≤ 20 + 3e-7, slack 3e-7 at the target against terms of
    # about 41, and the box: a triangle with legs of 3e-7 in (x1, x2), whose ball (8.8e-8)
    # is below RADIUS_TOL, but two-dimensional all the same.
    cs = CollisionSet(origin=np.array([0.0, 0.0, 0.5]), equalities=np.array([[0.0, 0.0, 1.0]]),
                      basis=np.eye(3)[:, :2], rows=np.array([[1.0, 1.0, 40.0]]), bounds=np.array([20 + 3e-7]),
                      n_fixed=1, lower=0.0, upper=1.0, n_positive=1)
    ball = inscribed_ball(cs)
    assert 0 < ball.radius <= ball_lp.RADIUS_TOL
    assert not ball_lp.implicit_equalities(cs).rows.any()  # x1 ≥ 0 and x2 ≥ 0 lift; the slack row is no candidate
    hull = ball_lp.hull_dimension(cs, ball)
    assert (hull.dim, hull.method, hull.flat, hull.pinned) == (2, "implicit-equalities", None, None)


def test_a_ball_below_the_tolerance_with_no_row_tight_at_the_target_is_the_subspaces():
    # x1 = 0.5 fixed by two rows barely slack (3e-8 each) at the target: the ball (4.5e-8)
    # is below RADIUS_TOL, no row is tight, so none can hold all over the set.
    model = relu_net(([[1.0, 0.0], [-1.0, 0.0]], [-0.5, 0.4999999]))
    size = collision_size(model, "relu1", torch.tensor([0.49999996, 0.5]))
    assert size.radius <= ball_lp.RADIUS_TOL
    assert (size.free_dim, size.dim, size.dim_method, size.pinned) == (2, 2, "implicit-equalities", None)


def test_where_fukudas_rounds_pin_the_set_down_to_one_point_it_has_no_ball(monkeypatch):
    # x1 = 0.7 fixed; x2 ≤ 0 and x3 ≤ 0 against the box's lower faces: one point. The cone's
    # LP made to miss x3's rows, the rounds find them, and the point's radius is 0.
    model = relu_net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [-0.5, 0.0, 0.0]))
    target = torch.tensor([0.7, 0.0, 0.0])
    cs = _exact_set(model, "relu1", target, SMALL, ())
    a_all, _ = cs.all_rows()
    full = ball_lp.implicit_equalities(cs).rows
    assert full.sum() == 4  # both units' rows and the box's lower faces of x2 and x3
    partial = full & (a_all[:, 2] == 0)
    monkeypatch.setattr(ball_lp, "implicit_equalities", lambda *_, **__: ball_lp.Equalities(partial.copy()))
    hull = ball_lp.hull_dimension(cs, inscribed_ball(cs))
    assert (hull.dim, hull.method, hull.flat) == (0, "implicit-equalities", None)
    # the rounds' rows certified by an LP of their own, which the referee accepts
    rows = hull.pinned_rows()
    assert flat_claim(cs, 0, rows["pinned"], rows["pinned_weights"], cs.origin, 0.0) == ([], True)
    size = collision_size(model, "relu1", target)
    assert (size.dim, size.radius) == (0, 0.0)


def test_where_the_cones_lp_fails_fukudas_rounds_give_the_same_dimension(monkeypatch):
    monkeypatch.setattr(ball_lp, "implicit_equalities", lambda *_, **__: None)
    size = collision_size(relu_net(*FLAT_NET), "relu1", FLAT_TARGET)
    assert (size.free_dim, size.dim, size.dim_method) == (7, 5, "implicit-equalities") and size.radius > 0.05
    cs = _exact_set(relu_net(*FLAT_NET), "relu1", FLAT_TARGET, SMALL, ())
    assert flat_claim(cs, 5, size.pinned, size.pinned_weights, size.center, size.radius) == ([], True)


def test_where_the_cones_lp_misses_an_implicit_equality_fukudas_rounds_find_it(monkeypatch):
    cs = _exact_set(relu_net(*FLAT_NET), "relu1", FLAT_TARGET, SMALL, ())
    full = ball_lp.implicit_equalities(cs).rows
    a_all, _ = cs.all_rows()
    # keep x3 ≥ 0 alone (the box's lower face of x3): the flat it leaves is still flat in x4
    keep = np.flatnonzero(full & (np.abs(a_all[:, 2]) == 1) & (np.abs(a_all).sum(1) == 1))
    partial = np.zeros_like(full)
    partial[keep] = True
    monkeypatch.setattr(ball_lp, "implicit_equalities", lambda *_, **__: ball_lp.Equalities(partial.copy()))
    ball = inscribed_ball(cs)
    assert ball.radius <= ball_lp.RADIUS_TOL
    hull = ball_lp.hull_dimension(cs, ball)
    assert (hull.dim, hull.method) == (5, "implicit-equalities") and hull.flat.radius > 0.05
    assert hull.flat.pinned[full].all()  # every row of the full answer pinned in the end
    rows = hull.pinned_rows()
    assert flat_claim(cs, 5, rows["pinned"], rows["pinned_weights"], hull.flat.center, hull.flat.radius) == ([], True)


def test_rows_pinned_that_do_not_all_hold_all_over_the_set_get_no_certificate():
    cs = _exact_set(relu_net(*FLAT_NET), "relu1", FLAT_TARGET, SMALL, ())
    found = ball_lp.implicit_equalities(cs)
    a_all, _ = cs.all_rows()
    assert ball_lp.certify_pinned(cs, found.rows) is not None
    # x5 ≥ 0 is tight at the target but x6 ≤ x5 lets it rise: no weights can prove it pinned
    x5_floor = (a_all[:, 4] == -1) & (np.abs(a_all).sum(1) == 1)
    assert ball_lp.certify_pinned(cs, found.rows | x5_floor) is None
    x2_floor = (a_all[:, 1] == -1) & (np.abs(a_all).sum(1) == 1)  # slack at the target (x2 = 0.3)
    assert ball_lp.certify_pinned(cs, found.rows | x2_floor) is None


def test_a_segment_has_dimension_one_its_half_length_as_radius_and_its_length_as_width(ball_solver):
    # x1 = 0.7 fixed, x2 − 0.5 ≤ 0 and the box: the segment {0.7} x [0, 0.5].
    model = relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, -0.5]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.1]), config=SMALL)
    assert (geo.dim, geo.dim_method) == (1, "ball")
    assert abs(geo.radius - 0.25) <= LP_OBJECTIVE
    assert torch.allclose(geo.center, torch.tensor([0.7, 0.25], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(geo.widths, torch.full_like(geo.widths, 0.5), atol=1e-9)
    assert float(geo.samples[:, 1].min()) >= 0 and float(geo.samples[:, 1].max()) <= 0.5 + SET_EXACT


def test_sizes_only_gives_the_known_radius_and_dimension_with_no_widths_or_samples(ball_solver):
    screen = dataclasses.replace(SMALL, sizes_only=True)
    # The segment {0.7} x [0, 0.5]: radius 0.25, dimension 1 (the test above).
    geo = collision_geometry(relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, -0.5])), "relu1", torch.tensor([0.7, 0.1]),
                             config=screen)
    assert (geo.dim, geo.dim_method) == (1, "ball") and abs(geo.radius - 0.25) <= LP_OBJECTIVE
    assert len(geo.widths) == len(geo.directions) == len(geo.extremes) == 0
    assert torch.equal(geo.samples, torch.tensor([0.7, 0.1]).double().expand(SMALL.n_samples, 2))  # the target
    assert not geo.sampler["converged"] and "sizes only" in geo.sampler["reason"]
    # A flat set found by its implicit equality: dimension 1 of a free 2, as in full.
    geo = collision_geometry(relu_net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [-0.5, 0.0])), "relu1",
                             torch.tensor([0.7, 0.0, 0.3]), config=screen)
    assert (geo.free_dim, geo.dim, geo.dim_method) == (2, 1, "implicit-equalities")
    assert abs(geo.radius - 0.5) <= LP_OBJECTIVE  # the ball in the hull, as in full
    # One point: no widths, its statistics those of a point.
    geo = collision_geometry(relu_net(([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0])), "relu1", torch.tensor([0.7, 0.0]),
                             config=screen)
    assert (geo.dim, geo.dim_method, len(geo.widths)) == (0, "implicit-equalities", 0)
    assert geo.sampler["converged"] and geo.sampler["mean_distance_to_target"] == 0.0


def test_hit_and_run_samples_a_known_polygon_uniformly():
    # No positive unit: C is the unit square cut by x1 + x2 ≤ 1.5, whose uniform mean of
    # x1 is (1/2 − (1/8)(5/6)) / (7/8) = 19/42.
    model = relu_net(([[1.0, 1.0]], [-1.5]))
    config = GeometryConfig(n_samples=4000, chains=8, burn_in=20, n_directions=8, seed=3, max_draws=2000)
    geo = collision_geometry(model, "relu1", torch.tensor([0.2, 0.2]), config=config)
    x = geo.samples.numpy()
    assert geo.sampler["converged"], geo.sampler["reason"]
    # Nothing is clipped: the samples meet the rows to rounding on their own.
    assert geo.dim == 2 and (x.sum(1) <= 1.5 + SET_EXACT).all()
    assert (x >= -SET_EXACT).all() and (x <= 1 + SET_EXACT).all()
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


def _simplex_net(d: int = 5) -> nn.Sequential:
    """Inputs x1..x5: units 1 and 2 are positive at the target and pin x4 = 0.3, x5 = 0.6
    (equalities); unit 3, x1 + x2 + x3 − 1 ≤ 0, with the box leaves the 3-simplex."""
    return relu_net(([[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]],
                 [-0.2, -0.5, -1.0]))


SIMPLEX_TARGET = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.6])


@pytest.mark.parametrize("walk", ["billiard", "hit-and-run"])
def test_the_sampler_draws_a_simplex_within_equalities_uniformly_and_stops_converged(walk):
    # Uniform on {x ≥ 0, x1 + x2 + x3 ≤ 1}: each coordinate is Beta(1, 3), mean 1/4 and
    # variance 3/80; x4, x5 stay on their equalities.
    config = GeometryConfig(n_samples=3000, chains=8, burn_in=20, n_directions=4, seed=5, walk=walk,
                            ess_min=1000, max_draws=3000)
    geo = collision_geometry(_simplex_net(), "relu1", SIMPLEX_TARGET, config=config)
    x = geo.samples.numpy()
    assert (geo.free_dim, geo.dim, geo.dim_method) == (3, 3, "ball")
    assert geo.sampler["converged"], geo.sampler["reason"]
    assert geo.sampler["rhat"] <= 1.01 and geo.sampler["ess"] >= 1000
    assert set(geo.sampler["rhat_by"]) == {"distance_to_target", "pairwise_distance", "projections"}
    assert (x[:, :3] >= -SET_EXACT).all() and (x[:, :3].sum(1) <= 1 + SET_EXACT).all()
    assert np.abs(x[:, 3:] - SIMPLEX_TARGET[3:].double().numpy()).max() <= SET_EXACT
    for i in range(3):
        assert abs(x[:, i].mean() - 0.25) <= MC_SIMPLEX_MEAN, (i, x[:, i].mean())
        assert abs(x[:, i].var() - 3 / 80) <= MC_SIMPLEX_VAR, (i, x[:, i].var())


def test_two_seeds_agree_within_their_monte_carlo_errors_and_one_seed_repeats_exactly():
    runs = [collision_geometry(_simplex_net(), "relu1", SIMPLEX_TARGET, config=GeometryConfig(
        n_samples=500, chains=8, burn_in=20, n_directions=4, seed=seed, max_draws=3000)) for seed in (0, 1, 1)]
    a, b = runs[0].sampler, runs[1].sampler
    assert a["converged"] and b["converged"]
    for key in ("mean_distance_to_target", "mean_pairwise_distance"):
        combined = np.hypot(a[f"{key}_mcse"], b[f"{key}_mcse"])
        assert 0 < combined and abs(a[key] - b[key]) <= MCSE_AGREE * combined, (key, a[key], b[key], combined)
    assert torch.equal(runs[1].samples, runs[2].samples) and runs[1].sampler == runs[2].sampler | {
        "sampler_seconds": runs[1].sampler["sampler_seconds"]}


def test_a_budget_too_small_to_converge_gives_nan_statistics_and_the_reason(tmp_path):
    from collide.results.evaluation import _region
    from collide.results.records import region_fields

    model = _simplex_net()
    config = GeometryConfig(n_samples=40, chains=4, burn_in=4, n_directions=4, max_draws=12, check_every=4)
    geo = collision_geometry(model, "relu1", SIMPLEX_TARGET, config=config)
    assert not geo.sampler["converged"] and "max_draws" in geo.sampler["reason"]
    attrs, arrays = region_fields(geo)
    columns, _ = _region(model, "relu1", arrays, attrs, SIMPLEX_TARGET, SIMPLEX_TARGET, scale=1.0, device="cpu")
    for key in ("region_mean_distance_to_target", "region_spread", "region_mean_distance_to_target_mcse"):
        assert np.isnan(columns[key]), key
    assert columns["region_sampler_reason"].startswith("not converged") and not columns["region_converged"]
    # The certified sizes are given all the same, and the stored samples are points of C.
    assert columns["region_radius"] > 0 and columns["region_mean_width"] > 0
    assert np.isfinite(columns["region_mean_width_se"]) and columns["region_n_directions"] >= 4
    assert _errors(model, "relu1", geo.samples, SIMPLEX_TARGET).max() <= SET_EXACT


def _cube_net() -> nn.Sequential:
    # Units 1, 2 pin x4, x5; unit 3 (−x1 − x2 − x3 − 0.1) is negative all over the box.
    return relu_net(([[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [-1.0, -1.0, -1.0, 0.0, 0.0]],
                 [-0.2, -0.5, -0.1]))


def test_the_mean_width_of_a_cube_in_a_flat_is_its_exact_mean_width_within_three_standard_errors():
    # The unit cube in R³: width along u is Σ|uᵢ|, whose mean over the sphere is 3·E|u₁| = 3/2.
    config = GeometryConfig(n_samples=16, chains=2, burn_in=2, max_draws=8, n_directions=8, max_directions=48,
                            width_rel_se=1e-3)
    geo = collision_geometry(_cube_net(), "relu1", SIMPLEX_TARGET, config=config)
    w = geo.widths.numpy()
    assert len(w) == 48  # the SE target is out of reach: the cap holds
    se = w.std(ddof=1) / np.sqrt(len(w))
    assert abs(w.mean() - 1.5) <= 3 * se, (w.mean(), se)
    # Directions lie in the hull (x4, x5 pinned) and each width is the cube's own.
    u = geo.directions.numpy()
    assert np.abs(u[:, 3:]).max() <= SET_EXACT and np.allclose(np.linalg.norm(u, axis=1), 1)
    assert np.allclose(w, np.abs(u).sum(1), atol=1e-9)
    # The extreme points are inside the box exactly, no clipping needed.
    ext = geo.extremes.numpy()
    assert (ext >= 0).all() and (ext <= 1).all()


def test_widths_stop_once_the_relative_standard_error_is_met():
    config = GeometryConfig(n_samples=16, chains=2, burn_in=2, max_draws=8, n_directions=3, max_directions=64,
                            width_rel_se=0.05)
    geo = collision_geometry(_cube_net(), "relu1", SIMPLEX_TARGET, config=config)
    w = geo.widths.numpy()
    assert 3 <= len(w) < 64
    assert w.std(ddof=1) / np.sqrt(len(w)) <= 0.05 * w.mean()
    prefix = w[:-1]  # one direction fewer had not met it (or was under the minimum)
    assert len(prefix) < 3 or prefix.std(ddof=1) / np.sqrt(len(prefix)) > 0.05 * prefix.mean()


def test_widths_of_a_set_flattened_by_an_implicit_equality_are_taken_within_its_hull():
    # x1 = 0.7 (equality), x2 = 0 all over C (implicit), x3 free: the hull is a segment
    # along x3, so every direction is ±e3 and every width is 1.
    model = relu_net(([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [-0.5, 0.0]))
    geo = collision_geometry(model, "relu1", torch.tensor([0.7, 0.0, 0.3]), config=SMALL)
    assert geo.dim_method == "implicit-equalities"
    assert np.allclose(np.abs(geo.directions.numpy()), [0.0, 0.0, 1.0], atol=1e-9)
    assert np.allclose(geo.widths.numpy(), 1.0, atol=1e-9)


def test_rank_normalised_rhat_and_ess_against_chains_of_known_law():
    from collide.piecewise.diagnostics import ess_bulk, ess_mean, rank_rhat

    rng = np.random.default_rng(0)
    iid = rng.standard_normal((1, 8, 2000))
    assert rank_rhat(iid)[0] <= RHAT_IID
    assert abs(ess_bulk(iid)[0] / iid[0].size - 1) <= ESS_REL
    shifted = iid + np.arange(8)[None, :, None] * 0.3  # chains that disagree
    assert rank_rhat(shifted)[0] > 1.1
    # AR(1) with ρ = 0.9: ESS = n (1 − ρ) / (1 + ρ).
    rho, n = 0.9, 4000
    x = np.zeros((4, n))
    noise = rng.standard_normal((4, n)) * np.sqrt(1 - rho**2)
    x[:, 0] = rng.standard_normal(4)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    exact = x.size * (1 - rho) / (1 + rho)
    assert abs(ess_mean(x[None])[0] / exact - 1) <= ESS_REL
    assert abs(ess_bulk(x[None])[0] / exact - 1) <= ESS_REL


@pytest.mark.parametrize("walk", ["billiard", "hit-and-run"])
def test_a_chain_outside_the_set_is_raised_not_clipped_back(walk):
    from collide.piecewise.hull import HullPolytope
    from collide.piecewise.sampler import _walker

    # The unit square as {z : g z ≤ h}; one chain starts a little past x ≤ 1.
    poly = HullPolytope(origin=np.zeros(2), basis=np.eye(2), g=np.vstack([np.eye(2), -np.eye(2)]),
                        h=np.array([1.0, 1.0, 0.0, 0.0]))
    config = GeometryConfig(walk=walk, chains=2)
    with pytest.raises(RuntimeError, match="left the collision set"):
        _walker(poly, np.full(2, 0.5), np.eye(2), np.array([[0.5, 0.5], [1.0 + 1e-6, 0.5]]), config=config)


@pytest.mark.parametrize("rescale", [True, False])
def test_set_sizes_do_not_depend_on_the_scale_of_the_layer(mlp_model, monkeypatch, rescale):
    # relu1's and relu2's pre-activations times 2**-27 (exact in float32): the same set.
    # Its rows' entries then sit near HiGHS's absolute floor and tolerances (1e-9):
    # rescaled, the set has the same dimension and radius; as they are, its ball LP fails.
    if not rescale:
        monkeypatch.setattr(highs, "SMALL_COEFFICIENT", 0.0)
    small = shrunk_mlp(mlp_model, 2.0**-27)
    target = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(3)) * 0.5
    ref = collision_size(mlp_model, "relu2", target)
    if not rescale:
        with pytest.raises(InternalError, match="inscribed-ball LP"):
            collision_size(small, "relu2", target)
        return
    got = collision_size(small, "relu2", target)
    assert (got.dim, got.free_dim) == (ref.dim, ref.free_dim)
    assert abs(got.radius - ref.radius) <= LP_OBJECTIVE * (1 + ref.radius)
