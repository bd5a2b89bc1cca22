"""Dependent equality rows (collide.piecewise.row_space): replaced by an orthonormal basis of
their row space, the same affine subspace; independent rows kept as they are."""

import numpy as np
import pytest
import torch
from torch import nn

from collide.activations import RELU_SATURATION
from collide.config import ExactConfig
from collide.objective import saturated_units
from collide.piecewise.linearise import affine_piece, layer_rows
from collide.piecewise.lp import LinearRows, lp_family
from collide.piecewise.pieces import rows_on
from collide.piecewise.row_space import clearly_independent, independent_rows, rank_of, svd
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.taps import preactivation
from tests.tolerances import LP_CONSTRAINT, LP_OBJECTIVE, LP_STORED_REL_ERROR_F64

# Two orthogonal projectors onto the same subspace, computed by different routes.
SAME_SUBSPACE = 1e-10


def _dependent(seed: int, *, m: int = 12, r: int = 4, n: int = 30):
    """``m`` rows over ``n`` columns of rank ``r``, and a point ``x0`` that meets them."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, r)) @ rng.normal(size=(r, n))
    x0 = rng.uniform(size=n)
    return a, a @ x0, x0


@pytest.mark.parametrize("shape,rank", [((5, 30), 5), ((12, 30), 4), ((40, 30), 30), ((40, 30), 7), ((3, 8), 0)])
def test_rank_is_numpys_matrix_rank(shape, rank):
    rng = np.random.default_rng(rank)
    a = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    assert rank_of(svd(a)[1], a.shape) == np.linalg.matrix_rank(a) == rank


def test_independent_rows_are_kept_bit_for_bit():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 30))
    b = rng.normal(size=5)
    kept_a, kept_b = independent_rows(a, b)
    assert kept_a is a and kept_b is b


@pytest.mark.parametrize("seed", range(3))
def test_dependent_rows_become_an_orthonormal_basis_of_the_same_subspace(seed):
    a, b, x0 = _dependent(seed)
    new_a, new_b = independent_rows(a, b)
    assert new_a.shape == (4, 30)
    assert np.abs(new_a @ new_a.T - np.eye(4)).max() <= SAME_SUBSPACE
    # The same directions are free: the null spaces' projectors agree (oracle: pinv).
    free_before = np.eye(30) - np.linalg.pinv(a) @ a
    free_after = np.eye(30) - new_a.T @ new_a
    assert np.abs(free_before - free_after).max() <= SAME_SUBSPACE
    # ... and the same point meets them.
    assert np.abs(new_a @ x0 - new_b).max() <= SAME_SUBSPACE


def _free(a: np.ndarray) -> np.ndarray:
    """The projector onto the directions ``a``'s rows leave free (oracle: pinv of the
    rows at unit norm, the scale HiGHS judges each row at)."""
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.eye(a.shape[1]) - np.linalg.pinv(unit) @ unit


def test_more_rows_than_columns_or_a_zero_row_need_the_svd():
    rng = np.random.default_rng(1)
    assert not clearly_independent(rng.normal(size=(31, 30)))
    x0 = rng.uniform(size=30)
    base = rng.normal(size=(3, 30))
    with_zero = np.vstack([base, np.zeros((1, 30))])
    assert not clearly_independent(with_zero)
    new_a, new_b = independent_rows(with_zero, with_zero @ x0)
    assert new_a.shape == (3, 30)
    assert np.abs(_free(base) - (np.eye(30) - new_a.T @ new_a)).max() <= SAME_SUBSPACE
    assert np.abs(new_a @ x0 - new_b).max() <= SAME_SUBSPACE
    assert clearly_independent(base)


def test_a_row_far_smaller_than_the_others_is_not_dropped():
    # At unit norm (as HiGHS sees it) the tiny row is as binding as any other.
    a, _, x0 = _dependent(3)
    tiny = 1e-17 * np.random.default_rng(4).normal(size=(1, 30))
    rows = np.vstack([a, tiny])
    new_a, new_b = independent_rows(rows, rows @ x0)
    assert new_a.shape == (5, 30)
    assert np.abs(_free(rows) - (np.eye(30) - new_a.T @ new_a)).max() <= SAME_SUBSPACE
    assert np.abs(new_a @ x0 - new_b).max() <= SAME_SUBSPACE


def test_nearly_dependent_rows_of_full_rank_are_kept_as_they_are():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(4, 30))
    a[3] = a[2] + 1e-6 * rng.normal(size=30)  # smallest singular value ~1e-6: past the screen, not the rank
    assert not clearly_independent(a) and np.linalg.matrix_rank(a) == 4
    b = a @ rng.uniform(size=30)
    kept_a, kept_b = independent_rows(a, b)
    assert kept_a is a and kept_b is b


def test_rows_no_point_meets_are_kept_for_the_lp_to_judge():
    a, b, _ = _dependent(6)
    off = b + 1e-3 * np.random.default_rng(7).normal(size=len(b))  # not in the rows' range
    kept_a, kept_b = independent_rows(a, off)
    assert kept_a is a and kept_b is off
    zero_row = np.vstack([a, np.zeros((1, 30))])
    kept_a, _ = independent_rows(zero_row, np.append(b, 5.0))  # 0 = 5
    assert kept_a is zero_row


def _bottleneck() -> nn.Module:
    # 16 units computed from 3 values: their rows span at most 3 dimensions.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 3), nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))


def test_a_layer_after_a_bottleneck_reaches_the_optimum_of_its_original_rows():
    model = _bottleneck()
    target = torch.rand(20, generator=torch.Generator().manual_seed(1))
    init = torch.rand(20, generator=torch.Generator().manual_seed(2))
    piece = affine_piece(model, "2", target)
    x0 = target.double().numpy()
    t_pre = piece.jac @ x0 + piece.offset
    a_eq, b_eq, a_ub, b_ub = layer_rows(piece.jac, piece.offset, t_pre, RELU_SATURATION)
    assert len(a_eq) > 3  # more positive units than the bottleneck's width
    reduced = rows_on(piece, t_pre, RELU_SATURATION)
    assert len(reduced.b_eq) == np.linalg.matrix_rank(a_eq) == 3
    # Oracle: scipy's linprog (its presolve removes dependent rows) with every original row.
    original = LinearRows(a_ub=a_ub, b_ub=b_ub, a_eq=a_eq, b_eq=b_eq)
    box = {"lower": 0.0, "upper": 1.0, "tol": 1e-9}
    x_init = init.double().numpy()
    fast = lp_family(reduced, x_init, **box)
    oracle = lp_family(original, x_init, solver="linprog", **box)
    for unit in np.flatnonzero(t_pre <= 0):
        cost, lam = piece.jac[unit], 0.5 * float(np.abs(piece.jac[unit]).mean())
        got, want = fast.solve(cost, lam), oracle.solve(cost, lam)
        assert got.outcome == want.outcome == OPTIMAL
        assert np.abs(a_eq @ got.x - b_eq).max() <= LP_CONSTRAINT
        assert (a_ub @ got.x - b_ub).max() <= LP_CONSTRAINT

        def objective(x, cost=cost, lam=lam):
            return float(cost @ x + lam * np.abs(x - x_init).sum())

        assert abs(objective(got.x) - objective(want.x)) <= LP_OBJECTIVE * (1 + abs(objective(want.x)))
    # End to end: every vertex optimal and colliding in float64.
    with torch.no_grad():
        units = saturated_units(preactivation(model, target.unsqueeze(0), "2")[0], 3)
    res = solve_exact(model, "2", target, init, units, config=ExactConfig(threads=1))
    assert res.outcomes == (OPTIMAL,) * 3
    assert res.rel_error.max() <= LP_STORED_REL_ERROR_F64
    assert res.rank_positive == 3
