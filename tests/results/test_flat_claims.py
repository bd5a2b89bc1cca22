"""A flat collision set's dimension as a referee checks it: the rows pinned to equality,
their rank on the subspace and the certificate that they hold all over the set, stored
with the set and rechecked against it rebuilt from the model (collide.results.verify)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import collide
from collide.api import _exact_set, collision_size
from collide.audit import ScanConfig
from collide.config import GeometryConfig
from collide.copies import cast_copy
from collide.experiments.scanned import _pinned_runs
from collide.piecewise.ball import certificate_weights, certify_pinned
from collide.piecewise.collision_set import CollisionSet
from collide.results.records import region_fields
from collide.results.verify import FLAT_CLAIM, _scan_balls, _verify_region, flat_claim
from collide.taps import site_of
from tests.support import FLAT_NET, FLAT_TARGET, holds_all_over, relu_net

# x1 = 0.7 fixed, x2 ≤ 0 against the box's x2 ≥ 0: one point.
POINT_NET = (([[1.0, 0.0], [0.0, 1.0]], [-0.5, 0.0]),)
POINT_TARGET = torch.tensor([0.7, 0.0])
# What a float64 product of the certificate's unit rows leaves of an exact zero.
CERTIFICATE_ROUNDING = 1e-12


def _random_flat(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A random net on a target half on its box's lower faces, as MNIST's background is."""
    gen = torch.Generator().manual_seed(seed)
    w, b = torch.randn(14, 10, generator=gen) / 10**0.5, 0.3 * torch.randn(14, generator=gen)
    target = torch.rand(10, generator=torch.Generator().manual_seed(seed)) * (torch.arange(10) % 2)
    return relu_net((w.tolist(), b.tolist())), target


CASES = {"flat": (relu_net(*FLAT_NET), FLAT_TARGET), "point": (relu_net(*POINT_NET), POINT_TARGET),
         **{f"random-{s}": _random_flat(s) for s in (0, 2)}}


@pytest.mark.parametrize("case", CASES)
def test_a_flat_sets_pinned_rows_hold_all_over_it_by_their_certificate(case, ball_solver):
    model, target = CASES[case]
    size = collision_size(model, "relu1", target)
    cs = _exact_set(model, "relu1", target, GeometryConfig(), ())
    if size.dim == size.free_dim:  # random-0 lifts every tight row (test_collision_set's oracle test)
        assert size.pinned is None and flat_claim(cs, size.dim, None, None, size.center, size.radius) == ([], True)
        return
    assert size.dim < size.free_dim and size.dim_method == "implicit-equalities"
    # Oracle: each pinned row's largest slack over C, by an LP of scipy's, is 0.
    assert holds_all_over(cs, size.pinned).all()
    # The certificate in numpy: weights ≥ 1 on the rows at unit reach, summing to 0 on the subspace.
    a_all, _ = cs.all_rows()
    unit = a_all[size.pinned] @ cs.basis
    unit /= np.linalg.norm(unit, axis=1)[:, None]
    assert size.pinned_weights.min() == 1.0
    assert np.linalg.norm(unit.T @ size.pinned_weights) <= CERTIFICATE_ROUNDING
    assert size.free_dim - np.linalg.matrix_rank(unit) == size.dim
    assert flat_claim(cs, size.dim, size.pinned, size.pinned_weights, size.center, size.radius) == ([], True)


def test_the_referee_catches_a_doctored_dimension_row_weight_or_ball():
    model, target = CASES["flat"]
    size = collision_size(model, "relu1", target)
    cs = _exact_set(model, "relu1", target, GeometryConfig(), ())
    a_all, _ = cs.all_rows()
    assert (size.dim, len(size.pinned)) == (5, 3)  # x3 + x4 ≤ 0, x3 ≥ 0, x4 ≥ 0

    def problems(**changes) -> list[str]:
        claim = {"dim": size.dim, "pinned": size.pinned, "weights": size.pinned_weights, "center": size.center,
                 "radius": size.radius, **changes}
        found, certified = flat_claim(cs, **claim)
        assert not (found and certified)
        return found

    assert problems(dim=4) == ["its pinned rows have rank 2 on its 7-dimensional subspace: dimension 5, not 4"]
    assert problems(dim=8)[0].startswith("dimension 8 is above")
    # x4 ≥ 0 dropped: x3 + x4 ≤ 0 and x3 ≥ 0 still have rank 2, but no weights ≥ 1 cancel
    dropped = [p for p in problems(pinned=size.pinned[:2], weights=size.pinned_weights[:2]) if "certificate" in p]
    assert dropped and dropped[0].startswith("its certificate bounds the pinned rows' slack over the set only by")
    # x5 ≥ 0 (tight at the target, but x6 ≤ x5 lets it rise) pinned too: rank and certificate both fail
    x5_floor = int(np.flatnonzero((a_all[:, 4] == -1) & (np.abs(a_all).sum(1) == 1))[0])
    added = problems(pinned=np.r_[size.pinned, x5_floor], weights=np.r_[size.pinned_weights, 1.0])
    assert any("dimension 4, not 5" in p for p in added) and any("certificate bounds" in p for p in added)
    doubled = size.pinned_weights * np.r_[2.0, 1.0, 1.0]
    assert [p for p in problems(weights=doubled) if f"> {FLAT_CLAIM:g}" in p]
    assert problems(weights=size.pinned_weights * 0.5) == [
        "its certificate's weights are not one per pinned row, each at least 1"]
    assert problems(pinned=np.array([len(a_all)]), weights=np.ones(1))[0].startswith("its pinned rows are not rows")
    # The ball too large for the flat, and moved off it (x3 > 0).
    assert any("inscribed ball (radius" in p for p in problems(radius=size.radius * 1.5))
    off = size.center + 0.01 * np.eye(8)[2]
    assert any("off a pinned row" in p for p in problems(center=off))
    # Without its certificate the dimension is checked (rank, ball) but not certified.
    assert flat_claim(cs, size.dim, size.pinned, None, size.center, size.radius) == ([], False)


def test_a_scan_keeps_each_flat_sets_rows_and_certificate_and_the_referee_checks_them(tmp_path):
    # One net, three targets through the scan's stored chunks: the flat set above; one
    # whose second unit is on (x3 + x4 fixed at 0.2: no row flattens it, dimension 6 of 6);
    # and one flat again where x5 = x6 and x2 sits on its lower face (both liftable).
    model = relu_net(*FLAT_NET)
    x = torch.stack([FLAT_TARGET, torch.tensor([0.6, 0.3, 0.1, 0.1, 0.2, 0.1, 0.5, 0.2]),
                     torch.tensor([0.6, 0.0, 0.0, 0.0, 0.3, 0.3, 0.5, 0.2])])
    config = ScanConfig(n_vertices=2, gradient=collide.GradientConfig(max_steps=50), chunk=2, centers=True)
    frame = collide.scan(model, "relu1", x, config=config, store=tmp_path)
    again = collide.scan(model, "relu1", x, config=config, store=tmp_path)  # read back from the chunks
    for a, b in zip(frame["pinned"], again["pinned"], strict=True):
        assert (a is None and b is None) or np.array_equal(np.asarray(a), np.asarray(b))
    flat = np.array([p is not None for p in frame["pinned"]])
    assert sorted(zip(frame["index"], frame["dim"], strict=True)) == [(0, 5), (1, 6), (2, 5)]
    assert flat.tolist() == (frame["dim"] == 5).tolist()
    arrays = {f"scan_{k}": v for k, v in _pinned_runs(frame).items()}
    assert arrays["scan_pinned_count"].tolist() == [len(p) if p is not None else -1 for p in frame["pinned"]]
    arrays.update(scan_center=np.stack(frame["center"].to_list()), scan_radius=frame["radius"].to_numpy(float),
                  scan_dim=frame["dim"].to_numpy(float), scan_example=frame["index"].to_numpy())
    images = x[torch.as_tensor(np.array(frame["index"]))].double().numpy()
    net = cast_copy(model)
    layer = site_of(net, "relu1", torch.from_numpy(images[:1]))
    attrs = {"scan_box": [0.0, 1.0]}
    referee = torch.no_grad()(_scan_balls)  # as verify_row runs it
    found, counted = referee(net, model, layer, images, arrays, attrs)
    assert found == [] and counted == {"checked_scan_balls": 3, "certified_scan_dims": 3}
    # One flat example's weights doctored: that example, and it alone, is named.
    k = int(np.flatnonzero(flat)[0])
    start = int(np.maximum(arrays["scan_pinned_count"][:k], 0).sum())
    weights = arrays["scan_pinned_weights"].copy()
    weights[start] *= 3
    found, counted = referee(net, model, layer, images, {**arrays, "scan_pinned_weights": weights}, attrs)
    assert [p.split(":")[0] for p in found] == [f"example {int(frame['index'][k])}"]
    assert counted["certified_scan_dims"] == 2
    # A row stored before the certificates: each dimension checked, the flat ones not certified.
    bare = {key: v for key, v in arrays.items() if "pinned" not in key}
    found, counted = referee(net, model, layer, images, bare, attrs)
    assert found == [] and counted["certified_scan_dims"] == 1


def test_an_exact_rows_stored_geometry_carries_its_pinned_rows():
    geo = collide.collision_geometry(relu_net(*FLAT_NET), "relu1", FLAT_TARGET,
                                     config=GeometryConfig(n_samples=40, chains=4, burn_in=5, n_directions=2,
                                                           max_draws=40))
    attrs, arrays = region_fields(geo)
    assert attrs["geometry"]["dim"] == 5 and attrs["geometry"]["radius"] == geo.radius > 0
    assert np.array_equal(arrays["region_pinned"], geo.pinned) and arrays["region_pinned"].dtype == np.int64
    assert np.array_equal(arrays["region_pinned_weights"], geo.pinned_weights)
    full = dataclasses.replace(geo, pinned=None, pinned_weights=None)
    assert "region_pinned" not in region_fields(full)[1]


def _hand_set(rows: list[list[float]], bounds: list[float], origin: list[float]) -> CollisionSet:
    """A collision set with no equality: the rows given, then the unit box's."""
    d = len(origin)
    return CollisionSet(origin=np.array(origin), equalities=np.zeros((0, d)), basis=np.eye(d), rows=np.array(rows),
                        bounds=np.array(bounds), n_fixed=len(rows), lower=0.0, upper=1.0, n_positive=0)


def test_a_pinned_row_slack_at_the_target_breaks_the_certificate_though_its_weights_cancel():
    # x2 + x3 ≤ 0 with the box's x2, x3 ≥ 0 pins x2 = x3 = 0; x1 is free: a segment. Row 1,
    # -x2 ≤ 0.01, points the way x2 ≥ 0 does but is slack by 0.01 at the target.
    cs = _hand_set([[0.0, 1.0, 1.0], [0.0, -1.0, 0.0]], [0.0, 0.01], [0.5, 0.0, 0.0])
    lower_face = 2 + 3  # -x_j ≤ 0 follow the rows and the upper faces
    weights = np.array([np.sqrt(2), 1.0, 1.0])
    center = np.array([0.5, 0.0, 0.0])
    honest = np.array([0, lower_face + 1, lower_face + 2])
    assert flat_claim(cs, 1, honest, weights, center, 0.5) == ([], True)
    swapped = np.array([0, 1, lower_face + 2])  # the slack row for x2 ≥ 0: same direction
    found, certified = flat_claim(cs, 1, swapped, weights, center, 0.5)
    assert not certified and any(p.startswith("its certificate bounds the pinned rows' slack over the set only by "
                                              "0.01 >") for p in found), found


def test_a_ball_that_fits_only_within_the_rows_tolerance_certifies_no_dimension():
    # ±0.01 x1 ≤ ±0.005 fix x1 = 0.5: a segment. A ball of radius 1e-6 claimed in both
    # dimensions crosses those rows by 1e-8 of their units, within BALL_SLACK, but its
    # centre has no room: not a ball of the set, so no certificate of dimension 2.
    cs = _hand_set([[0.01, 0.0], [-0.01, 0.0]], [0.005, -0.005], [0.5, 0.5])
    assert flat_claim(cs, 2, None, None, np.array([0.5, 0.5]), 1e-6) == ([], False)


def test_the_certificates_weights_are_moved_onto_the_rows_null_space_and_scaled_to_a_least_weight_of_one():
    gen = np.random.default_rng(0)
    y0 = gen.uniform(1.0, 3.0, 12)
    g = gen.standard_normal((12, 5))
    g -= np.outer(y0, y0 @ g) / (y0 @ y0)  # gᵀy0 = 0
    noisy = y0 + 1e-7 * gen.standard_normal(12)  # an interior point's dual: 1e-7 off
    assert np.linalg.norm(g.T @ noisy) > 1e-8
    cleaned = certificate_weights(g, noisy)
    assert cleaned.min() == 1.0 and np.linalg.norm(g.T @ cleaned) <= CERTIFICATE_ROUNDING
    np.testing.assert_allclose(cleaned, y0 / y0.min(), rtol=1e-5)
    assert certificate_weights(g, y0 - 2.0 * (np.arange(12) == 0) * y0) is None  # no weight ≥ 1/2 left


def test_a_points_centre_moved_and_rows_stored_as_floats_are_caught():
    model, target = CASES["point"]
    size = collision_size(model, "relu1", target)
    cs = _exact_set(model, "relu1", target, GeometryConfig(), ())
    moved = size.center + np.array([0.0, 0.3])
    found, certified = flat_claim(cs, 0, size.pinned, size.pinned_weights, moved, 0.0)
    assert not certified and any("off a pinned row" in p for p in found)
    found, _ = flat_claim(cs, 0, size.pinned.astype(np.float64), size.pinned_weights, size.center, 0.0)
    assert found == ["its pinned rows are stored as float64, not as row indices"]


@torch.no_grad()
def test_an_exact_rows_flat_set_is_certified_from_what_its_row_stores():
    model, target = CASES["flat"]
    geo = collide.collision_geometry(model, "relu1", target, config=GeometryConfig(
        n_samples=40, chains=4, burn_in=5, n_directions=2, max_draws=40))
    attrs, arrays = region_fields(geo)
    arrays["target"] = target.numpy()
    attrs.update(layer="relu1", pixel_scale=1.0)
    assert _verify_region(cast_copy(model), model, arrays, attrs, []) == ([], True)
    doctored = {**arrays, "region_pinned_weights": arrays["region_pinned_weights"] * [3.0, 1.0, 1.0]}
    found, certified = _verify_region(cast_copy(model), model, doctored, attrs, [])
    assert not certified and any("certificate bounds" in p for p in found)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flat_set_in_a_tilted_subspace_is_certified(seed):
    # Three positive units with random weights (a subspace that is no coordinate plane, so
    # the ball's centre meets the pinned rows only to rounding) and two pairs of zero
    # pixels x_i + x_j ≤ 0 pinned against the box: dimension 5 of 9.
    gen = np.random.default_rng(seed)
    t = gen.uniform(0.1, 0.9, 12)
    zero = gen.choice(12, 4, replace=False)
    t[zero] = 0.0
    w = [gen.standard_normal(12) for _ in range(3)]
    rows = [*w, *(np.eye(12)[i] + np.eye(12)[j] for i, j in (zero[:2], zero[2:]))]
    bias = [1.0 - float(r @ t) for r in w] + [0.0, 0.0]
    model = relu_net((np.array(rows).tolist(), bias))
    target = torch.tensor(t, dtype=torch.float32)
    size = collision_size(model, "relu1", target)
    cs = _exact_set(model, "relu1", target, GeometryConfig(), ())
    assert (size.free_dim, size.dim, size.dim_method) == (9, 5, "implicit-equalities")
    assert flat_claim(cs, size.dim, size.pinned, size.pinned_weights, size.center, size.radius) == ([], True)


def test_rows_pinned_by_the_rounds_are_certified_though_other_rows_tight_at_the_target_hold_too():
    # e1 ≤ 0 and two rows at ±80° from -e1 pin the point 0; -e1 ≤ 0 is tight there as well.
    # Least weights over every tight row would lean on -e1 and leave the pinned ones short.
    c, s = np.cos(np.deg2rad(80)), np.sin(np.deg2rad(80))
    cs = _hand_set([[1.0, 0.0], [-c, -s], [-c, s], [-1.0, 0.0]], [0.5, 0.5 * -c, 0.5 * -c, -0.5], [0.5, 0.0])
    cs = dataclasses.replace(cs, lower=-1.0)  # the box's faces slack at the target
    pinned = np.zeros(4 + 4, dtype=bool)
    pinned[:3] = True
    weights = certify_pinned(cs, pinned)
    assert weights is not None and weights[3] == 0.0 and weights[:3].min() == 1.0
    assert flat_claim(cs, 0, np.arange(3), weights[:3], cs.origin, 0.0) == ([], True)


def test_a_ball_that_is_not_finite_is_a_problem():
    model, target = CASES["flat"]
    size = collision_size(model, "relu1", target)
    cs = _exact_set(model, "relu1", target, GeometryConfig(), ())
    for center, radius in ((size.center, float("nan")), (size.center * np.nan, size.radius)):
        found, certified = flat_claim(cs, size.dim, size.pinned, size.pinned_weights, center, radius)
        assert not certified and found[0].startswith("its ball is not finite")
