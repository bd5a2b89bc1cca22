"""The exact collision set of an input, measured: its dimension, inscribed ball and samples.

For a target t and a ReLU layer, the exact solver's polytope lives in

    C = {x : lower ≤ x ≤ upper, x in t's activation region,
             ỹⱼ(x) = ỹⱼ(t) for t's positive units j, ỹⱼ(x) ≤ 0 for the others},

every point of which has t's features at the layer exactly (within the region the
pre-activation is ``J x + c``, :func:`collide.solvers.exact.affine_piece`). Several
models' sets stack on one input: their rows together give the inputs that collide with
t in every model at once.

Everything is computed in the coordinates of C's equality subspace: ``x = t + B z``
with ``B`` an orthonormal basis of the null space of the stacked positive rows, so that
‖z‖ is the distance to the target and a ball in z is a ball in x. C becomes
``{z : G z ≤ h}`` with ``h ≥ 0`` (t itself is in C), and

- the **inscribed ball** (Chebyshev centre and radius) is one LP:
  maximise r subject to ``G z + r‖Gᵢ‖ ≤ h`` (HiGHS; the activation-region rows, thousands
  at LeNet-5's ``relu3``, are added only where a solution violates them, as the exact
  solver does);
- the **dimension** of C's affine hull is ``k = d − rank`` when the radius is positive
  (a k-ball lies inside C). When it is 0, some inequalities hold with equality all over
  C; they are found by LPs that maximise a common slack and move the rows whose duals
  are positive into the equalities (Fukuda's method), until a positive slack remains;
- the **widths** along directions drawn uniformly on the unit sphere of C's affine hull
  (within the flat left by pinned rows, when there are any) are two LPs each; the mean
  over directions is an unbiased estimate of C's mean width, reported with its standard
  error, and directions are added until that error is at most ``width_rel_se`` of it.
  Each extreme point is an LP optimum moved onto the hull and, where HiGHS met a row
  only to its tolerance, the least way towards the interior: a point of C, so each
  width is certified from below;
- **uniform samples** come from a walk in rounded coordinates (the Dikin ellipsoid at
  C's analytic centre, optionally refined by the chains' pooled covariance): by default
  the billiard walk (straight runs of random length that reflect off C's facets), else
  hit-and-run. Chains start spread over C and run until every statistic reported from
  them (distance to the target, distance between independent chains, projections on
  the width directions) has rank-normalised split-R̂ ≤ 1.01 and bulk ESS ≥ 400, or a
  budget ends; a set whose chains did not converge reports its sample statistics as
  NaN, with the reason. No point is ever clipped into C: one outside is a bug, raised.

Which size to quote. The radius and the widths need no mixing: each is an LP optimum
with its own certificate (a ball inside every row; two points of C), so they are the
sizes to rank inputs by and to compare layers or models with. The radius says how far
one can move in *every* direction of the hull and stay in C (it is 0 for a set that is
thin anywhere); the mean width says how far C extends in a typical direction, with an
error bar from the directions alone. Sample statistics (mean distance to the target,
mean pairwise distance) describe where C's volume lies: in ~700 dimensions almost all of
it sits near C's far faces, which is what they report, and only once the chains agree.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.special
import scipy.stats
import torch

from collide.config import GeometryConfig
from collide.errors import ConfigError, InternalError
from collide.solvers.exact import AffinePiece
from collide.solvers.lp import _new_highs

# A radius above this (input units) is a ball, not LP rounding: HiGHS meets rows to 1e-9.
RADIUS_TOL = 1e-7
# A width below this (input units) along every random direction: the set is one point.
WIDTH_TOL = 1e-7
# A row whose norm on the equality subspace is below this (relative to 1 + its norm) is
# constant there: float64 projections of a row in the equalities' span leave ~1e-14.
_FLAT_ROW = 1e-10
# Region rows added per round of the ball LP, the most violated first.
_ROWS_PER_ROUND = 256
# A slack is recomputed from scratch this often, so that rounding does not accumulate.
_REFRESH = 50
# Rounds of the implicit-equality search before giving the subspace's dimension as a bound.
_MAX_HULL_ROUNDS = 10
_LP_TOL = 1e-9
# What a chain's slack may fall below 0 by (relative to 1 + max|h|) before it is a bug:
# float64 slack updates drift by ~1e-15 per step between refreshes.
_SLACK_TOL = 1e-9
# The least shrinkage of a pilot covariance towards a multiple of the identity: pooled draws of
# a few chains number not far above the ~700 dimensions, and a rank-deficient shape
# would leave directions the walk never takes.
_SHRINK = 0.05


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64 through torch: its thread count is what the engine fixes per
    job, so a job's set is the same bits in a Dask worker (BLAS on one thread) and in
    plain Python (numpy's BLAS rounds differently with its thread count)."""
    return (torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


@dataclass(frozen=True)
class CollisionSet:
    """C as the rows that bound it: ``{x : E x = E t, A x ≤ b, lower ≤ x ≤ upper}``.

    ``equalities`` are orthonormal (the row space of the stacked positive rows), ``basis``
    spans their null space, so ``x = t + basis @ z``. ``rows[:n_fixed]`` are the layer's
    own inequality rows; the rest are activation-region rows (earlier ReLU signs,
    max-pooling winners), which an LP takes in only where a solution violates them.

    Shapes: origin (d,); equalities (rank, d); basis (d, k); rows (m, d); bounds (m,)
    """

    origin: np.ndarray
    equalities: np.ndarray
    basis: np.ndarray
    rows: np.ndarray
    bounds: np.ndarray
    n_fixed: int
    lower: float
    upper: float
    n_positive: int

    @property
    def input_dim(self) -> int:
        return len(self.origin)

    @property
    def rank(self) -> int:
        return len(self.equalities)

    @property
    def free_dim(self) -> int:
        """k = d − rank: the dimension of the equality subspace, an upper bound on C's."""
        return self.basis.shape[1]

    def to_input(self, z: np.ndarray) -> np.ndarray:
        """Points of C from coordinates. (n, k) -> (n, d)"""
        return self.origin + _mm(z, self.basis.T)

    def all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every inequality of C, the box's included, as ``a x ≤ b``. (m + 2d, d), (m + 2d,)"""
        d = self.input_dim
        return (np.vstack([self.rows, np.eye(d), -np.eye(d)]),
                np.concatenate([self.bounds, np.full(d, self.upper), np.full(d, -self.lower)]))


@dataclass(frozen=True)
class Ball:
    """The largest ball in C within its equality subspace; radius 0 when there is none."""

    center: np.ndarray
    radius: float
    outcome: str
    rounds: int
    region_rows_used: int
    duals: np.ndarray
    pinned: np.ndarray | None = None


@dataclass(frozen=True)
class SetGeometry:
    """What :func:`measure` found: dimension (and how), ball, widths, samples, costs.

    Shapes: center (d,); samples (n, d); directions (w, d); extremes (2w, d); widths (w,),
    float64 in input units.
    """

    dim: int
    dim_method: str
    radius: float
    center: np.ndarray
    samples: np.ndarray
    directions: np.ndarray
    extremes: np.ndarray
    widths: np.ndarray
    n_positive: int
    rank: int
    free_dim: int
    sampler: dict[str, Any] = field(default_factory=dict)
    lp: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def collision_set(
    pieces: Sequence[tuple[AffinePiece, np.ndarray]], target: np.ndarray, *, lower: float, upper: float,
    max_entries: int,
) -> CollisionSet:
    """Stack each piece's rows at ``target``.

    Args:
        pieces: one ``(piece, t_pre)`` per model: its affine piece at the target and the
            target's pre-activation at its layer (float64).
        target: the input, flattened (d,), float64.
    """
    x0 = np.asarray(target, dtype=np.float64)
    d = len(x0)
    eq, fixed, region = [], [], []
    n_positive = 0
    for piece, t_pre in pieces:
        pos = t_pre > 0
        n_positive += int(pos.sum())
        eq.append(piece.jac[pos])
        # ỹ_N(x) ≤ 0 and the region rows, both as a x ≤ b.
        fixed.append((piece.jac[~pos], -piece.offset[~pos]))
        region.append((piece.region_jac, piece.region_bound))
    n_rows = sum(len(a) for a, _ in fixed) + sum(len(a) for a, _ in region)
    if n_rows * d > max_entries:
        raise ConfigError(f"the collision set has {n_rows} dense rows x {d} inputs = {n_rows * d:,} entries, over "
                          f"geometry.max_entries={max_entries:,}: raise it (memory grows with it) or measure the "
                          "set at a smaller layer or input")
    a_eq = np.vstack(eq)
    if len(a_eq):
        # torch's SVD, not numpy's: it runs on torch's thread count, which the engine
        # fixes per job, so a job's basis is the same bits wherever it runs.
        _, s_t, vt_t = torch.linalg.svd(torch.from_numpy(a_eq), full_matrices=True)
        s, vt = s_t.numpy(), vt_t.numpy()
        # numpy's matrix_rank cut-off, as the exact solver's rank_positive uses.
        rank = int((s > s.max(initial=0.0) * max(a_eq.shape) * np.finfo(np.float64).eps).sum())
    else:
        rank, vt = 0, np.eye(d)
    rows = np.vstack([a for a, _ in fixed] + [a for a, _ in region])
    bounds = np.concatenate([b for _, b in fixed] + [b for _, b in region])
    # The target is in C: a row it violates by more than rounding means a wrong piece.
    at_target = _mm(rows, x0)
    over = at_target - bounds
    scale = 1 + np.abs(bounds) + _mm(np.abs(rows), np.abs(x0))
    if (over > 1e-7 * scale).any():
        worst = int(np.argmax(over / scale))
        raise InternalError(f"the target violates row {worst} of its own collision set by {over[worst]:.3g}: "
                         "its activation region was not taken at this input")
    return CollisionSet(origin=x0, equalities=vt[:rank], basis=vt[rank:].T, rows=rows,
                        bounds=np.maximum(bounds, np.minimum(at_target, bounds + 1e-7 * scale)),
                        n_fixed=sum(len(a) for a, _ in fixed), lower=lower, upper=upper, n_positive=n_positive)


def _highs_rows(h: highspy.Highs, a: np.ndarray | sp.spmatrix, lower: np.ndarray, upper: np.ndarray) -> None:
    m = sp.csr_matrix(a)
    h.addRows(len(upper), lower, upper, m.nnz, m.indptr[:-1].astype(np.int32), m.indices.astype(np.int32), m.data)


def _solver(cost: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> highspy.Highs:
    h = _new_highs()
    h.setOptionValue("threads", 1)
    h.setOptionValue("primal_feasibility_tolerance", _LP_TOL)
    h.setOptionValue("dual_feasibility_tolerance", _LP_TOL)
    n = len(cost)
    h.addVars(n, lower, upper)
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    return h


def _solve_lazily(h: highspy.Highs, lazy_a: np.ndarray, lazy_b: np.ndarray,
                  added: np.ndarray) -> tuple[np.ndarray | None, list[int], int]:
    """Run ``h``, add the most violated of the rows not yet ``added`` (updated in place),
    and run again until the solution meets them all: an optimum of the whole LP.

    Returns the solution (None where HiGHS ends other than optimal), the rows added in
    the order they entered the model, and the rounds run."""
    order: list[int] = []
    rounds = 0
    while True:
        h.run()
        rounds += 1
        if h.getModelStatus() == highspy.HighsModelStatus.kNotset:
            # A hot-started dual simplex can stop without a status after raising its
            # Markowitz threshold (seen on LeNet-5's relu3 set); from scratch it solves.
            h.clearSolver()
            h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None, order, rounds
        sol = np.asarray(h.getSolution().col_value)
        over = _mm(lazy_a, sol) - lazy_b
        violated = np.flatnonzero(~added & (over > _LP_TOL * (1 + np.abs(lazy_b))))
        if not len(violated):
            return sol, order, rounds
        violated = violated[np.argsort(-over[violated], kind="stable")[:_ROWS_PER_ROUND]]
        _highs_rows(h, lazy_a[violated], np.full(len(violated), -np.inf), lazy_b[violated])
        added[violated] = True
        order += violated.tolist()


def inscribed_ball(cs: CollisionSet, *, pinned: np.ndarray | None = None) -> Ball:
    """The Chebyshev ball of C in its equality subspace: one LP, region rows added lazily.

    Solved in x, not in the subspace's coordinates: a row ``a x ≤ b`` holds on the ball
    of centre c and radius r within the subspace iff ``a c + r‖Bᵀa‖ ≤ b``, and the box
    rows then keep two entries each instead of k (on the MNIST MLP's ``relu1``: 0.4 s
    against 26 s for the dense LP in z). ``pinned`` (over :meth:`CollisionSet.all_rows`)
    marks rows taken as equalities: the ball then lies in the flat they leave.
    ``Ball.duals`` are the rows' multipliers (0 for region rows never added).
    """
    d, k = cs.input_dim, cs.free_dim
    a_all, b_all = cs.all_rows()
    m = len(b_all)
    pinned = np.zeros(m, dtype=bool) if pinned is None else pinned
    if k == 0:
        return Ball(cs.origin.copy(), 0.0, "optimal", 0, 0, np.zeros(m))
    reach_all = np.linalg.norm(_mm(a_all, cs.basis), axis=1)
    # A row constant on the subspace (an earlier positive unit's sign row, whose weights
    # lie in the equalities' span) holds on it as a whole; its reach is rounding.
    moving = reach_all > _FLAT_ROW * (1 + np.linalg.norm(a_all, axis=1))
    coef = np.where(pinned | ~moving, 0.0, reach_all)
    cost = np.zeros(d + 1)
    cost[-1] = -1.0  # maximise r
    # x's own bounds are left free: the box's rows carry them, so that a box face that
    # holds all over C shows in a row's multiplier rather than a column's.
    h = _solver(cost, np.r_[np.full(d, -np.inf), 0.0], np.full(d + 1, np.inf))
    eq_rhs = cs.equalities @ cs.origin
    _highs_rows(h, np.hstack([cs.equalities, np.zeros((cs.rank, 1))]), eq_rhs, eq_rhs)
    eye = sp.identity(d, format="csr")
    box = sp.vstack([eye, -eye])
    box_rows = np.arange(len(cs.bounds), m)

    def lo(rows: np.ndarray) -> np.ndarray:  # a pinned row is an equality
        return np.where(pinned[rows], b_all[rows], -np.inf)

    _highs_rows(h, sp.hstack([box, sp.csr_matrix(coef[box_rows][:, None])]), lo(box_rows), b_all[box_rows])
    fixed = np.arange(cs.n_fixed)
    _highs_rows(h, np.hstack([a_all[fixed], coef[fixed][:, None]]), lo(fixed), b_all[fixed])
    in_model = [*box_rows, *fixed]
    lazy = np.arange(cs.n_fixed, len(cs.bounds))
    added = pinned[lazy].copy()
    if added.any():
        rows = lazy[added]
        _highs_rows(h, np.hstack([a_all[rows], coef[rows][:, None]]), lo(rows), b_all[rows])
        in_model += list(rows)
    lazy_a = np.hstack([a_all[lazy], coef[lazy][:, None]])
    lazy_b = b_all[lazy]
    sol, order, rounds = _solve_lazily(h, lazy_a, lazy_b, added)
    if sol is None:
        return Ball(cs.origin.copy(), float("nan"), str(h.getModelStatus()), rounds, int(added.sum()), np.zeros(m))
    in_model += list(lazy[order])
    duals = np.zeros(m)
    duals[np.array(in_model, dtype=int)] = np.asarray(h.getSolution().row_dual)[cs.rank :]
    # The centre, put back on the equality subspace exactly; the radius shrunk by what
    # any row then misses, so that the ball is inside every row.
    center = cs.origin + _mm(cs.basis, _mm(cs.basis.T, sol[:d] - cs.origin))
    free = moving & ~pinned
    gap = (b_all - _mm(a_all, center))[free] / reach_all[free]
    radius = max(0.0, min(float(sol[d]), float(gap.min(initial=np.inf))))
    return Ball(center, radius, "optimal", rounds, int(added.sum()), duals)


@dataclass(frozen=True)
class Widths:
    """C's widths along random unit directions of its affine hull, each between two
    certified points of C.

    Shapes: directions (w, d); extremes (2w, d) (each direction's maximiser then
    minimiser); widths (w,)
    """

    directions: np.ndarray
    extremes: np.ndarray
    widths: np.ndarray
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return float(self.widths.mean()) if len(self.widths) else 0.0

    @property
    def se(self) -> float:
        """The mean's standard error, std/√n over the directions; NaN for one direction."""
        n = len(self.widths)
        return float(self.widths.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _onto(cs: CollisionSet, basis: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` put onto the flat ``origin + span(basis)`` (orthonormal columns). (n, d) -> (n, d)"""
    return cs.origin + _mm(_mm(x - cs.origin, basis), basis.T)


def _pull_inside(cs: CollisionSet, x: np.ndarray, center: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Each row of ``x`` moved the least way towards ``center`` (a point strictly inside
    the ``free`` rows) that meets every free row in float64: an LP optimum meets its rows
    only to HiGHS's 1e-9, and a point outside C is not a certificate of C's width.

    Rows not ``free`` (constant on the hull, or pinned to equality all over C) hold at
    every point of the hull, so they are left to the projection onto it. (n, d) -> (n, d)
    """
    a_all, b_all = cs.all_rows()
    a, b = a_all[free], b_all[free]
    room = b - _mm(a, center)  # > 0: the centre's slack
    out = x.copy()
    for _ in range(3):  # a second pass only where the first one's product rounded the other way
        over = _mm(out, a.T) - b
        if not (over > 0).any():
            break
        lam = np.where(over > 0, over / (over + room), 0.0).max(1)
        lam = np.minimum(1.0, lam * (1 + 1e-9) + 1e-15)
        out = out + lam[:, None] * (center - out)
    return out


def extents(cs: CollisionSet, basis: np.ndarray, *, center: np.ndarray | None, free: np.ndarray | None,
            min_directions: int, max_directions: int, rel_se: float, seed: int) -> Widths:
    """C's width along random unit directions of its affine hull ``origin + span(basis)``:
    two LPs each (max and min of u·x over C), on one HiGHS model that keeps its basis and
    the region rows added for earlier directions.

    Directions are drawn uniformly on the hull's unit sphere (a standard normal in the
    ``basis`` coordinates, normalised), so the mean of the widths is an unbiased estimate
    of C's mean width. They are added one at a time until there are ``min_directions``
    and the mean's relative standard error is at most ``rel_se``, or there are
    ``max_directions``; the first n directions for a seed do not depend on how many
    follow.

    The extreme points are LP optima put onto the hull and, given ``center`` (a point
    strictly inside the ``free`` rows), pulled towards it until they meet every row in
    float64: points of C, so ``u·(x_max − x_min)`` is a certified lower bound on the
    width (equal to it within the LP's tolerance). Width and radius need no mixing: each
    is an optimum, checked by its own certificate.

    Shapes: basis (d, k) with orthonormal columns.
    """
    start = time.perf_counter()
    d, k = cs.input_dim, basis.shape[1]
    rng = np.random.default_rng(seed)
    if k == 0:
        return Widths(np.zeros((0, d)), np.zeros((0, d)), np.zeros(0))
    h = _solver(np.zeros(d), np.full(d, cs.lower), np.full(d, cs.upper))
    eq_rhs = cs.equalities @ cs.origin
    _highs_rows(h, cs.equalities, eq_rhs, eq_rhs)
    _highs_rows(h, cs.rows[: cs.n_fixed], np.full(cs.n_fixed, -np.inf), cs.bounds[: cs.n_fixed])
    lazy_a, lazy_b = cs.rows[cs.n_fixed :], cs.bounds[cs.n_fixed :]
    added = np.zeros(len(lazy_b), dtype=bool)
    directions: list[np.ndarray] = []
    extremes: list[np.ndarray] = []
    widths: list[float] = []
    while len(directions) < max_directions:
        u = _mm(rng.standard_normal(k), basis.T)
        u /= np.linalg.norm(u)
        pair = []
        for sign in (-1.0, 1.0):  # minimise −u·x (the maximiser), then u·x
            h.changeColsCost(d, np.arange(d, dtype=np.int32), sign * u)
            x, _, _ = _solve_lazily(h, lazy_a, lazy_b, added)
            if x is None:
                raise InternalError(f"a width LP of the collision set ended {h.getModelStatus()}, though the "
                                   "set holds the target: report this with the model and target")
            pair.append(x)
        ext = _onto(cs, basis, np.array(pair))
        if center is not None and free is not None:
            ext = _pull_inside(cs, ext, center, free)
        directions.append(u)
        extremes += list(ext)
        widths.append(float(u @ (ext[0] - ext[1])))
        n = len(widths)
        if n >= min_directions:
            w = np.array(widths)
            if n > 1 and w.std(ddof=1) / math.sqrt(n) <= rel_se * abs(w.mean()):
                break
    return Widths(np.array(directions), np.array(extremes), np.array(widths), time.perf_counter() - start)


def hull_dimension(cs: CollisionSet, ball: Ball) -> tuple[int, str, Ball | None]:
    """The dimension of C's affine hull and how it was found.

    A positive radius puts a k-ball in C. A radius of 0 means rows hold with equality
    all over C: the ball LP is Fukuda's "largest common slack" LP, so at an optimum of 0
    every row with a positive multiplier is such an implicit equality. Those rows are
    pinned and the LP solved again, until a positive radius is left (the hull's
    dimension is then k minus the rank of the pinned rows on the subspace) or, past
    :data:`_MAX_HULL_ROUNDS`, ``k`` is returned as what it is: an upper bound. The third
    value is the ball in the hull found that way (its ``pinned`` rows), else None.
    """
    k = cs.free_dim
    if k == 0 or ball.radius > RADIUS_TOL:
        return k, "ball" if k else "point", None
    a_all, _ = cs.all_rows()
    pinned = np.zeros(len(a_all), dtype=bool)
    duals = ball.duals
    for _ in range(_MAX_HULL_ROUNDS):
        moved = ~pinned & (np.abs(duals) > _LP_TOL)
        if not moved.any():
            break
        pinned |= moved
        flat = inscribed_ball(cs, pinned=pinned)
        if not np.isfinite(flat.radius):
            break
        if flat.radius > RADIUS_TOL:
            flat = dataclasses.replace(flat, pinned=pinned)
            return k - int(np.linalg.matrix_rank(_mm(a_all[pinned], cs.basis))), "implicit-equalities", flat
        duals = flat.duals
    return k, "upper-bound", None


@dataclass(frozen=True)
class HullPolytope:
    """C in coordinates of its affine hull: ``x = origin + basis @ z``, ``C = {z : g z ≤ h}``.

    ``basis`` has orthonormal columns, so ‖z‖ is the distance to ``origin`` (the target)
    and ``w = basisᵀ u`` turns a unit direction u of the hull into one of z. Rows
    constant on the hull (pinned to equality, or in the equalities' span) are left out:
    they hold at every point of it.

    Shapes: origin (d,); basis (d, k); g (m, k); h (m,)
    """

    origin: np.ndarray
    basis: np.ndarray
    g: np.ndarray
    h: np.ndarray

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def coords(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k)"""
        return _mm(x - self.origin, self.basis)


def hull_polytope(cs: CollisionSet, basis: np.ndarray) -> HullPolytope:
    """C's rows, box included, in the coordinates of the flat ``cs.origin + span(basis)``."""
    a_all, b_all = cs.all_rows()
    g = _mm(a_all, basis)
    moving = np.linalg.norm(g, axis=1) > _FLAT_ROW * (1 + np.linalg.norm(a_all, axis=1))
    return HullPolytope(cs.origin, basis, np.ascontiguousarray(g[moving]), (b_all - _mm(a_all, cs.origin))[moving])


def analytic_center(poly: HullPolytope, z: np.ndarray, *, max_iter: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """The maximiser of Σ log(h − g z) by damped Newton from ``z`` (strictly inside), and
    the log barrier's Hessian there, ``H = gᵀ diag(1/s²) g``.

    ``{z : (z − c)ᵀ H (z − c) ≤ 1}`` (the Dikin ellipsoid) lies inside C, and C inside
    that ellipsoid grown m times: its shape is a first rounding of C. Thin directions
    (a pixel pressed against 0 or 1) get large curvature, long ones small.

    Shapes: z (k,) -> (k,), (k, k)
    """
    g, h = torch.from_numpy(poly.g), torch.from_numpy(poly.h)
    zt = torch.from_numpy(z.copy())
    hess = torch.eye(poly.dim, dtype=torch.float64)
    for _ in range(max_iter):
        s = h - g @ zt
        gs = g / s[:, None]
        hess = gs.T @ gs
        grad = gs.sum(0)  # −∇f: the Newton step solves H Δ = −gᵀ(1/s)
        chol = torch.linalg.cholesky(hess + 1e-12 * hess.diagonal().mean() * torch.eye(poly.dim, dtype=torch.float64))
        step = -torch.cholesky_solve(grad[:, None], chol)[:, 0]
        decrement = float(-(grad @ step))
        rate = g @ step
        room = torch.where(rate > 0, s / rate, torch.inf).amin()
        zt = zt + min(1.0, 0.9 * float(room)) * step if decrement > 1e-12 else zt
        if decrement < 1e-8:
            break
    s = h - g @ zt
    gs = g / s[:, None]
    return zt.numpy(), (gs.T @ gs).numpy()


@dataclass
class _Walk:
    """Chains of a walk in the rounded coordinates y of C: ``z = center + shape @ y``.

    Positions are kept as y and each row's slack ``s = h − g z`` is kept exactly, updated
    with the step and recomputed every :data:`_REFRESH` steps. Nothing is clipped: a
    slack below −:data:`_SLACK_TOL` after a refresh is a point outside C, raised as the
    bug it is.
    """

    poly: HullPolytope
    center: torch.Tensor
    shape: torch.Tensor
    gs: torch.Tensor
    y: torch.Tensor
    slack: torch.Tensor
    walk: str
    gen: torch.Generator
    steps: int = 0

    @classmethod
    def start(cls, poly: HullPolytope, center: np.ndarray, shape: np.ndarray, z: np.ndarray, *, walk: str,
              seed: int) -> _Walk:
        c, sh = torch.from_numpy(center), torch.from_numpy(shape)
        y = torch.linalg.solve_triangular(sh, (torch.from_numpy(z) - c).T, upper=False).T
        out = cls(poly, c, sh, torch.from_numpy(poly.g) @ sh, y, torch.zeros(0), walk,
                  torch.Generator().manual_seed(seed))
        out.refresh()
        return out

    def z(self) -> torch.Tensor:
        return self.center + self.y @ self.shape.T

    def refresh(self) -> None:
        self.slack = torch.from_numpy(self.poly.h) - self.z() @ torch.from_numpy(self.poly.g).T
        worst = float(self.slack.min())
        if worst < -_SLACK_TOL * (1 + float(np.abs(self.poly.h).max(initial=0.0))):
            raise InternalError(f"a chain left the collision set by {-worst:.3g} after {self.steps} steps: a sampler "
                               "bug, report it with the model and target")

    def reshape(self, shape: np.ndarray) -> None:
        """Walk on with a new lower-triangular ``shape`` (z = center + shape @ y); positions stay."""
        z = self.z()
        self.shape = torch.from_numpy(shape)
        self.gs = torch.from_numpy(self.poly.g) @ self.shape
        self.y = torch.linalg.solve_triangular(self.shape, (z - self.center).T, upper=False).T
        self.refresh()

    def step(self) -> None:
        """One hit-and-run step of every chain: a direction (uniform on the sphere of y, or
        a uniformly chosen axis of y for ``coordinate``) and a uniform point of the chord."""
        n, k = self.y.shape
        if self.walk == "coordinate":
            axis = torch.randint(k, (n,), generator=self.gen)
            rate = self.gs[:, axis].T  # how fast each row's slack falls along the axis
        else:
            v = torch.randn(n, k, generator=self.gen, dtype=torch.float64)
            rate = v @ self.gs.T
        ratio = self.slack / rate
        t_hi = torch.where(rate > 0, ratio, torch.inf).amin(1).clamp_min(0.0)
        t_lo = torch.where(rate < 0, ratio, -torch.inf).amax(1).clamp_max(0.0)
        t = t_lo + torch.rand(n, generator=self.gen, dtype=torch.float64) * (t_hi - t_lo)
        if self.walk == "coordinate":
            self.y[torch.arange(n), axis] += t
        else:
            self.y += t[:, None] * v
        self.slack -= t[:, None] * rate
        self.steps += 1
        if self.steps % _REFRESH == 0:
            self.refresh()


def _shape_from(z: np.ndarray) -> np.ndarray:
    """A lower-triangular factor of the covariance of points ``z`` (n, k), shrunk towards a
    multiple of the identity by Ledoit and Wolf's rule: the shape that makes them
    isotropic. Pooled draws of a few chains number not far above (or below) the ~700
    dimensions; shrinking keeps the shape full rank and leaves a direction the draws
    barely saw at its old scale instead of squashing it.

    References:
        Ledoit, Wolf (2004), "A well-conditioned estimator for large-dimensional
        covariance matrices", J. Multivariate Analysis 88(2).
    """
    n, k = z.shape
    x = z - z.mean(0)
    cov = x.T @ x / n
    mu = np.trace(cov) / k
    delta = ((cov - mu * np.eye(k)) ** 2).sum() / k
    # Σᵢ ‖xᵢxᵢᵀ − S‖² = Σᵢ ‖xᵢ‖⁴ − n‖S‖², without forming n matrices.
    beta = ((x**2).sum(1) ** 2).sum() - n * (cov**2).sum()
    beta = beta / (n**2 * k)
    shrink = 1.0 if delta <= 0 else float(np.clip(beta / delta, _SHRINK, 1.0))
    return np.linalg.cholesky((1 - shrink) * cov + shrink * mu * np.eye(k))


def _statistics(z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampled statistics at one draw of every chain: distance to the target ‖z‖,
    the distance between paired chains (2i, 2i+1), and the projections on the width
    directions. (n, k), (w, k) -> (n,), (n // 2,), (n, w)"""
    pairs = len(z) // 2
    return z.norm(dim=1), (z[0 : 2 * pairs : 2] - z[1 : 2 * pairs : 2]).norm(dim=1), z @ w.T


class _Billiard:
    """Chains of the billiard walk in rounded coordinates y of C (``z = center + shape @ y``):
    each draw, a chain picks a direction uniform on y's sphere and a length −L·ln U (L is
    ``length`` × √k), and
    travels that far in straight lines, reflecting off every facet it meets (the angle of
    incidence equal to that of reflection, in y's metric). The billiard map keeps volume
    and is its own inverse with the direction flipped, so the uniform law is stationary;
    a trajectory past ``max_reflections`` is rejected (the chain stays), which keeps it so,
    since the reversed trajectory meets as many facets.

    Chains travel independently of each other (one finishing a trajectory starts the next
    while the others still move), so every pass over the rows does work for every chain.
    A reflection updates the rows' approach rates through the Gram matrix of the facets'
    normals (O(m) per chain, not O(mk)); slack and rates are recomputed at every
    trajectory's start. Nothing is clipped.

    References:
        Gryazina, Polyak (2014), "Random sampling: billiard walk algorithm", EJOR 238(2);
        Chalkis, Fisikopoulos, Tsigaridas, Zafeirakopoulos (2021), "Geometric algorithms
        for sampling the flux space of metabolic networks", SoCG.
    """

    def __init__(self, poly: HullPolytope, center: np.ndarray, shape: np.ndarray, z: np.ndarray, *,
                 length: float, max_reflections: int, seed: int) -> None:
        # The length's unit is √k in y: the RMS radius of an isotropic set, which a
        # covariance-rounded C is.
        self.poly, self.length, self.max_reflections = poly, length * math.sqrt(poly.dim), max_reflections
        self.center = center
        # numpy, not torch, inside the loop: its arrays are a few chains by m rows, where
        # torch's per-call overhead (and its thread pool's, on a busy machine) dominates.
        self.rng = np.random.default_rng(seed)
        self.z_now = np.array(z, dtype=np.float64)
        self.reflections = 0
        self.rejected = 0
        self.steps = 0
        self.reshape(shape)

    def z(self) -> torch.Tensor:
        return torch.from_numpy(self.z_now)

    def reshape(self, shape: np.ndarray) -> None:
        self.shape = np.asarray(shape, dtype=np.float64)
        self.gs = _mm(self.poly.g, self.shape)
        self.gram = _mm(self.gs, self.gs.T)
        # The loop multiplies by these transposes at every trajectory's start: made
        # contiguous once here, not copied by every product (a third of the walk's time).
        self.shape_t = np.ascontiguousarray(self.shape.T)
        self.gs_t = np.ascontiguousarray(self.gs.T)
        self.g_t = np.ascontiguousarray(self.poly.g.T)
        self.norm2 = self.gram.diagonal().copy()
        slack = self.poly.h - _mm(self.z_now, self.poly.g.T)
        worst = float(slack.min())
        if worst < -_SLACK_TOL * (1 + float(np.abs(self.poly.h).max())):
            raise InternalError(f"a chain left the collision set by {-worst:.3g}: a sampler bug, report it with the "
                               "model and target")

    def run(self, n: int) -> torch.Tensor:
        """Every chain travels ``n`` more trajectories; its position after each.
        -> (chains, n, k) in z"""
        chains, k = self.z_now.shape
        h, gs, gram, shape = self.poly.h, self.gs, self.gram, self.shape
        g_t, gs_t, shape_t = self.g_t, self.gs_t, self.shape_t
        out = np.empty((chains, n, k))
        done = np.zeros(chains, dtype=np.int64)
        y = scipy.linalg.solve_triangular(shape, (self.z_now - self.center).T, lower=True).T
        y0 = y.copy()
        v = np.empty((chains, k))
        rate = np.empty((chains, len(h)))
        slack = np.empty_like(rate)
        left = np.zeros(chains)
        count = np.zeros(chains, dtype=np.int64)
        fresh = np.ones(chains, dtype=bool)  # chains starting a trajectory
        while True:
            if fresh.any():
                f = np.flatnonzero(fresh)
                vf = self.rng.standard_normal((len(f), k))
                v[f] = vf / np.linalg.norm(vf, axis=1, keepdims=True)
                left[f] = -self.length * np.log1p(-self.rng.random(len(f)))
                y0[f] = y[f]
                slack[f] = h - _mm(self.center + _mm(y[f], shape_t), g_t)
                rate[f] = _mm(v[f], gs_t)
                count[f] = 0
            moving = done < n
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(rate > 0, slack / rate, np.inf)
            hit = ratio.argmin(1)
            t_hit = np.maximum(ratio[np.arange(chains), hit], 0.0)
            step = np.where(moving, np.minimum(t_hit, left), 0.0)
            y += step[:, None] * v
            slack -= step[:, None] * rate
            left -= step
            bounce = moving & (t_hit <= step)
            count += bounce
            over = bounce & (count > self.max_reflections)
            if over.any():  # reject: back to the trajectory's start
                y[over] = y0[over]
                self.rejected += int(over.sum())
            ends = moving & (~bounce | over)
            bounce &= ~over
            if bounce.any():
                b = np.flatnonzero(bounce)
                coef = 2 * rate[b, hit[b]] / self.norm2[hit[b]]
                v[b] -= coef[:, None] * gs[hit[b]]
                rate[b] -= coef[:, None] * gram[hit[b]]
                self.reflections += len(b)
            if ends.any():
                e = np.flatnonzero(ends)
                out[e, done[e]] = self.center + _mm(y[e], shape_t)
                done[e] += 1
            fresh = ends & (done < n)
            if not (done < n).any():
                break
        self.z_now = out[:, -1].copy()
        self.steps += n
        self.reshape(self.shape)  # checks the chains are inside
        return torch.from_numpy(out)


class _HitAndRun(_Walk):
    """:class:`_Walk` seen as a source of draws: one draw every ``thin`` steps."""

    thin: int = 1

    def run(self, n: int) -> torch.Tensor:
        """(chains, n, k) in z: the positions after every ``thin`` steps."""
        out = []
        for _ in range(n):
            for _ in range(self.thin):
                self.step()
            out.append(self.z())
        return torch.stack(out, 1)


def _walker(poly: HullPolytope, center: np.ndarray, shape: np.ndarray, z0: np.ndarray, *,
            config: GeometryConfig) -> _Billiard | _HitAndRun:
    if config.walk == "billiard":
        return _Billiard(poly, center, shape, z0, length=config.trajectory, max_reflections=config.max_reflections,
                         seed=config.seed)
    walk = _HitAndRun.start(poly, center, shape, z0, walk=config.walk, seed=config.seed)
    walk.thin = config.thin
    return walk


def sample(poly: HullPolytope, center: np.ndarray, starts: np.ndarray, directions: np.ndarray, *,
           config: GeometryConfig, deadline: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``config.n_samples`` points of C by a walk after rounding, with the convergence
    diagnostics of every statistic reported.

    1. Rounding (``config.rounding``): the Dikin ellipsoid at C's analytic centre, then
       after each of ``config.adapt_rounds`` rounds of ``config.burn_in`` draws per chain
       in all (doubling), the shrunk covariance of the chains' pooled draws in the round's
       second half. Unrounded, a ~700-dimensional set pressed against most box faces lets
       hit-and-run's chains barely leave their start.
    2. Sampling with the shape frozen (so the uniform law is the walk's stationary law):
       at every draw, each chain's distance to the target, paired chains' distance to each
       other (chains 2i and 2i+1 are independent, so at stationarity this is the distance
       between two independent uniform points, whose mean is the spread), and the
       projections on the width ``directions``. Every ``config.check_every`` draws the
       second half of them is diagnosed (rank-normalised split-R̂ and bulk ESS); the walk
       stops when every statistic has R̂ ≤ ``config.rhat_max`` and ESS ≥
       ``config.ess_min``, or at ``config.max_draws`` draws per chain (adaptation
       included), or at the wall-clock ``deadline``, which only guards a slow machine.

    A draw is one billiard trajectory (``walk="billiard"``), or ``config.thin`` steps of
    hit-and-run. Chains start at ``starts`` (points of C, cycled), meant to be spread
    wider than C's uniform law so that R̂ compares chains that began apart.

    Returns ``config.n_samples`` samples in z (n, k), taken evenly from the diagnosed half
    of every chain (``distinct_samples`` of them differ: fewer than n where the run was
    short), and the record: ``converged``, ``reason`` (why not, else ""), ``rhat`` (max over the
    statistics), ``ess`` (min), per-statistic figures, and the estimates of the mean
    distance to the target and the mean pairwise distance with their Monte Carlo
    standard errors (from the diagnosed draws).

    Shapes: center (k,); starts (s, k); directions (w, k) unit rows in z.

    References:
        Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021), "Rank-normalization,
        folding, and localization: an improved R̂", Bayesian Analysis 16(2).
    """
    t0 = time.perf_counter()
    k, chains = poly.dim, config.chains
    record: dict[str, Any] = {"sampler": config.walk, "rounding": config.rounding, "chains": chains,
                              "seed": config.seed, **({"trajectory": config.trajectory} if config.walk == "billiard"
                                                      else {"thin": config.thin})}
    z0 = starts[np.arange(chains) % len(starts)]
    if config.rounding:
        center, hess = analytic_center(poly, center)
        # z = c + S y with S Sᵀ = H⁻¹: the Dikin ellipsoid is y's unit ball.
        shape = np.linalg.cholesky(np.linalg.inv(hess))
    else:
        shape = np.eye(k)
    walk = _walker(poly, center, shape, z0, config=config)
    rounds = config.adapt_rounds if config.rounding else 0
    # Round r walks burn_in * 2^r / (2^rounds − 1) draws: doubling, as each shape is better.
    lengths = [config.burn_in * 2**r // (2**rounds - 1) for r in range(rounds)] if rounds else [config.burn_in]
    drawn = 0
    for length in lengths:
        length = min(length, config.max_draws - drawn)
        if length <= 0:
            break
        z = walk.run(length)
        drawn += length
        if rounds and length >= 2:
            walk.reshape(_shape_from(z[:, length // 2 :].reshape(-1, k).numpy()))
    adapt_draws = drawn
    w = torch.from_numpy(directions)
    dist, pair, proj = [], [], []
    # Positions kept for the samples: every `stride`-th draw, at most 4x what is needed
    # per chain; when full, every other one is dropped and the stride doubles.
    per_chain = math.ceil(config.n_samples / chains)
    stride, cap, kept, kept_at = 1, 4 * per_chain, [], []
    diag: dict[str, Any] = {}
    reason = ""
    while True:
        n = min(config.check_every, config.max_draws - drawn)
        if n <= 0:
            break
        z = walk.run(n)
        drawn += n
        for j in range(n):
            a, b, c = _statistics(z[:, j], w)
            dist.append(a)
            pair.append(b)
            proj.append(c)
            if (len(dist) - 1) % stride == 0:
                kept.append(z[:, j].clone())
                kept_at.append(len(dist) - 1)
                if len(kept) > cap:
                    kept, kept_at, stride = kept[::2], kept_at[::2], stride * 2
        half = len(dist) // 2
        if len(dist) >= 8:
            diag = diagnose(torch.stack(dist[half:], 1).numpy(), torch.stack(pair[half:], 1).numpy(),
                            torch.stack(proj[half:], 2).permute(1, 0, 2).numpy())
            if diag["rhat"] <= config.rhat_max and diag["ess"] >= config.ess_min:
                reason = ""
                break
            reason = (f"not converged: R̂ {diag['rhat']:.4g} (≤ {config.rhat_max} wanted), ESS "
                      f"{diag['ess']:.0f} (≥ {config.ess_min:.0f} wanted)")
        if deadline is not None and time.perf_counter() > deadline:
            reason = (reason or "not converged") + (f" after {drawn} draws a chain in {time.perf_counter() - t0:.0f} s:"
                                                    " the time budget geometry.max_seconds")
            break
    if not reason and not diag:
        reason = "not converged: no draws left for diagnosis"
    elif reason and "budget" not in reason:
        reason += f" after {drawn} draws a chain: the budget geometry.max_draws"
    if not kept:  # nothing sampled past adaptation: the chains' last positions
        kept, kept_at = [walk.z().clone()], [0]
    half = len(dist) // 2
    pick = [j for j, at in enumerate(kept_at) if at >= half] or [len(kept) - 1]
    z_kept = torch.stack([kept[j] for j in pick], 1)  # (chains, draws, k)
    take = np.unique(np.linspace(0, z_kept.shape[1] - 1, min(per_chain, z_kept.shape[1])).round().astype(int))
    z_out = z_kept[:, take].permute(1, 0, 2).reshape(-1, k)
    # Evenly over them; a draw repeats where the diagnosed half holds fewer than asked for.
    idx = np.linspace(0, len(z_out) - 1, config.n_samples).round().astype(int)
    extra = {"reflections": walk.reflections, "rejected": walk.rejected} if isinstance(walk, _Billiard) else {}
    return z_out[idx].numpy(), {
        **record, **diag, "converged": not reason, "reason": reason, "draws": drawn, "adapt_draws": adapt_draws,
        "diagnosed_draws": len(dist) - len(dist) // 2, "distinct_samples": len(z_out), **extra,
        "sampler_seconds": time.perf_counter() - t0}


def diagnose(dist: np.ndarray, pair: np.ndarray, proj: np.ndarray) -> dict[str, Any]:
    """R̂ and ESS of the sampled statistics, and the estimates with their MCSE.

    Shapes: dist (chains, n); pair (chains // 2, n); proj (w, chains, n)
    """
    stats = {"distance_to_target": dist[None], "pairwise_distance": pair[None], "projections": proj}
    out: dict[str, Any] = {"rhat_by": {}, "ess_by": {}}
    for name, draws in stats.items():
        if draws.size == 0 or draws.shape[1] == 0:
            continue
        rhat, ess = rank_rhat(draws), ess_bulk(draws)
        out["rhat_by"][name], out["ess_by"][name] = float(np.max(rhat)), float(np.min(ess))
    # NaN (too few draws to tell) propagates: it never passes for converged.
    out["rhat"] = float(np.max(list(out["rhat_by"].values()))) if out["rhat_by"] else float("nan")
    out["ess"] = float(np.min(list(out["ess_by"].values()))) if out["ess_by"] else float("nan")
    for name, draws in (("mean_distance_to_target", dist), ("mean_pairwise_distance", pair)):
        if draws.size:
            out[name] = float(draws.mean())
            out[f"{name}_mcse"] = float(draws.std() / np.sqrt(ess_mean(draws[None])[0]))
        else:
            out[name] = out[f"{name}_mcse"] = float("nan")
    return out


def _split(draws: np.ndarray) -> np.ndarray:
    """Each chain cut in two halves. (s, chains, n) -> (s, 2 chains, n // 2)"""
    n = draws.shape[-1] // 2
    return np.concatenate([draws[..., :n], draws[..., draws.shape[-1] - n :]], 1)


def _rank_normal(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised draws, pooled per statistic (ties averaged). (s, m, n) -> (s, m, n)"""
    flat = draws.reshape(len(draws), -1)
    ranks = scipy.stats.rankdata(flat, axis=1)
    return scipy.special.ndtri((ranks - 0.375) / (flat.shape[1] + 0.25)).reshape(draws.shape)


def _rhat(draws: np.ndarray) -> np.ndarray:
    """Gelman–Rubin R̂ of (s, chains, n) draws, per statistic. (s, m, n) -> (s,)"""
    n = draws.shape[-1]
    within = draws.var(-1, ddof=1).mean(-1)
    between = n * draws.mean(-1).var(-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt(((n - 1) / n * within + between / n) / within)
    return np.where(within > 0, rhat, np.where(between > 0, np.inf, 1.0))


def rank_rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split-R̂: the larger of the bulk's (rank-normalised split chains)
    and the tails' (the same of |draw − median|), Vehtari et al. (2021), eq. 4–5.
    (s, chains, n) -> (s,); NaN where a chain has fewer than 4 draws."""
    if draws.shape[-1] < 4:
        return np.full(len(draws), np.nan)
    split = _split(draws)
    folded = np.abs(split - np.median(split.reshape(len(split), -1), axis=1)[:, None, None])
    return np.maximum(_rhat(_rank_normal(split)), _rhat(_rank_normal(folded)))


def _ess(draws: np.ndarray) -> np.ndarray:
    """ESS of (s, chains, n) draws from the chains' pooled autocorrelation, Geyer's initial
    monotone sequence (Vehtari et al. 2021, eq. 10–11). (s, m, n) -> (s,)"""
    s, m, n = draws.shape
    if n < 4:
        return np.full(s, np.nan)
    centred = draws - draws.mean(-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, size, axis=-1)
    acov = np.fft.irfft(f * np.conj(f), size, axis=-1)[..., :n] / n  # (s, m, n), biased
    chain_var = acov[..., 0] * n / (n - 1)
    within = chain_var.mean(-1)
    var_plus = within * (n - 1) / n + (draws.mean(-1).var(-1, ddof=1) if m > 1 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1 - (within[:, None] - acov.mean(1)) / var_plus[:, None]  # (s, n)
    rho[:, 0] = 1.0
    out = np.empty(s)
    for j in range(s):
        if not np.isfinite(var_plus[j]) or var_plus[j] <= 0:
            out[j] = float(m * n)  # a constant statistic: every draw is exact
            continue
        r = rho[j]
        pairs = r[: (n // 2) * 2].reshape(-1, 2).sum(1)
        stop = np.flatnonzero(pairs < 0)
        pairs = pairs[: stop[0] if len(stop) else len(pairs)]
        pairs = np.minimum.accumulate(pairs)
        tau = max(-1 + 2 * pairs.sum(), 1 / np.log10(m * n)) if len(pairs) else 1.0
        out[j] = m * n / tau
    return out


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS: the ESS of the rank-normalised split chains. (s, chains, n) -> (s,)"""
    return _ess(_rank_normal(_split(draws))) if draws.shape[-1] >= 8 else np.full(len(draws), np.nan)


def ess_mean(draws: np.ndarray) -> np.ndarray:
    """The ESS that the mean's Monte Carlo standard error uses: of the split chains as
    they are. (s, chains, n) -> (s,)"""
    return _ess(_split(draws)) if draws.shape[-1] >= 8 else np.full(len(draws), np.nan)


def _hull(cs: CollisionSet, ball: Ball, flat: Ball | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The affine hull's orthonormal basis, a point strictly inside C within it, and the
    rows that move on the hull (the others, pinned to equality or constant on it, hold at
    every point of the hull since the target meets them).

    Shapes: -> (d, k'), (d,), (m + 2d,) bool
    """
    a_all, _ = cs.all_rows()
    basis, centre = cs.basis, ball.center
    if flat is not None:
        # The subspace cut down by the rows pinned to equality.
        _, s_t, vt_t = torch.linalg.svd(torch.from_numpy(_mm(a_all[flat.pinned], cs.basis)), full_matrices=True)
        rank = int((s_t > s_t.max() * max(len(s_t), cs.free_dim) * np.finfo(np.float64).eps).sum())
        basis, centre = _mm(cs.basis, vt_t.numpy()[rank:].T), flat.center
    reach = np.linalg.norm(_mm(a_all, basis), axis=1)
    return basis, centre, reach > _FLAT_ROW * (1 + np.linalg.norm(a_all, axis=1))


def measure(cs: CollisionSet, *, config: GeometryConfig) -> SetGeometry:
    """Ball, dimension, widths and samples of ``cs``.

    The sizes come first and need no mixing: the radius is an LP optimum, each width two
    (their mean over uniform directions, with its standard error, estimates the mean
    width). The samples come with the diagnostics of every statistic they are used for;
    ``sampler["converged"]`` False means those statistics are not to be reported.
    """
    start = time.perf_counter()
    deadline = start + config.max_seconds if config.max_seconds > 0 else None
    ball = inscribed_ball(cs)
    if not np.isfinite(ball.radius):
        raise InternalError(f"the inscribed-ball LP of the collision set failed ({ball.outcome}), though the "
                           "target is in the set: report this with the model and target")
    widths_config = {"min_directions": config.n_directions, "max_directions": config.max_directions,
                     "rel_se": config.width_rel_se, "seed": config.seed}
    dim, how, flat, widths = cs.free_dim, "ball" if cs.free_dim else "point", None, None
    if cs.free_dim and ball.radius <= RADIUS_TOL:
        # A set of dimension ≥ 1 has a positive width along a random direction of its
        # subspace with probability 1: zero along every one drawn, it is one point.
        probe = extents(cs, cs.basis, center=None, free=None, **{**widths_config, "max_directions": max(
            1, config.n_directions)})
        if probe.widths.max() <= WIDTH_TOL:
            dim, how, widths = 0, "widths", probe
        else:
            dim, how, flat = hull_dimension(cs, ball)
    basis, centre, free = _hull(cs, ball, flat)
    if widths is None:
        # Directions uniform on the hull's own sphere (not the subspace's): a direction
        # partly across the hull would count a zero extent along its normal part.
        interior = ball.radius > RADIUS_TOL or flat is not None
        widths = extents(cs, basis, center=centre if interior else None, free=free if interior else None,
                         **widths_config)
    poly = hull_polytope(cs, basis)
    if dim == 0 or poly.dim == 0 or how == "upper-bound":
        # One point has nothing to mix; past the hull search's rounds there is no
        # interior point to start chains from.
        samples = np.repeat(cs.origin[None], config.n_samples, 0)
        nothing = "one point" if dim == 0 or poly.dim == 0 else "no interior point (dimension only bounded)"
        record = {"sampler": config.walk, "converged": dim == 0 or poly.dim == 0,
                  "reason": "" if dim == 0 or poly.dim == 0 else f"not sampled: {nothing}", "rhat": float("nan"),
                  "ess": float("nan"), "draws": 0, "seed": config.seed}
        if record["converged"]:
            record.update(mean_distance_to_target=0.0, mean_distance_to_target_mcse=0.0,
                          mean_pairwise_distance=0.0, mean_pairwise_distance_mcse=0.0)
    else:
        # Chains start spread over C: halfway from the interior point to each extreme point
        # (inside C by convexity), and the interior point itself.
        z_centre = poly.coords(centre[None])[0]
        starts = np.vstack([z_centre[None], z_centre + 0.5 * (poly.coords(widths.extremes) - z_centre)])
        z, record = sample(poly, z_centre, starts[np.r_[1 : len(starts), 0]], _mm(widths.directions, basis),
                           config=config, deadline=deadline)
        samples = _onto(cs, basis, cs.origin + _mm(z, basis.T))
        _check_inside(cs, samples, free)
    return SetGeometry(
        dim=dim, dim_method=how, radius=ball.radius, center=ball.center, samples=samples,
        directions=widths.directions, extremes=widths.extremes, widths=widths.widths,
        n_positive=cs.n_positive, rank=cs.rank, free_dim=cs.free_dim, sampler=record,
        lp={"outcome": ball.outcome, "rounds": ball.rounds, "region_rows_used": ball.region_rows_used,
            "region_rows": len(cs.bounds) - cs.n_fixed, "rows": len(cs.bounds), "width_seconds": widths.seconds},
        seconds=time.perf_counter() - start,
    )


def _check_inside(cs: CollisionSet, points: np.ndarray, free: np.ndarray) -> None:
    """Every point meets every row of C to rounding: nothing was clipped to hide one."""
    a_all, b_all = cs.all_rows()
    over = _mm(points, a_all[free].T) - b_all[free]
    scale = 1 + np.abs(b_all[free]) + _mm(np.abs(points), np.abs(a_all[free]).T)
    worst = float((over / scale).max(initial=-np.inf))
    if worst > _SLACK_TOL:
        raise InternalError(f"a sample of the collision set misses one of its rows by {worst:.3g} (relative): a "
                           "sampler bug, report it with the model and target")
