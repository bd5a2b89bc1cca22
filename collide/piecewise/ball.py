"""The largest ball inside a collision set, and the dimension of the set's affine hull.

The ball (Chebyshev centre and radius) is one LP, the region rows taken in lazily and
each coordinate measured from its box face nearer the target (no row pinned); by the
dual simplex, or over thousands of region rows by the interior point (IPM_REGION_ROWS),
which hands the last rounds, those that add few rows, to the simplex (SIMPLEX_TAIL_ROWS).
A positive radius puts a ball of the equality subspace's dimension in C; a radius of 0
means some rows hold with equality all over C (implicit equalities). They are among the
rows tight at the target, and one LP over the cone those rows leave finds every one of
them (:func:`implicit_equalities`), its dual their certificate (:class:`Equalities`);
they are pinned and the ball solved again in the flat they leave, with Fukuda's rounds
(the "largest common slack" LP's multipliers) as the fallback where that ball is still
flat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from collide.piecewise.collision_set import LP_TOL, CollisionSet, mm, moving_rows, solve_with_region
from collide.piecewise.highs import Heartbeat, LazyRun, add_rows, lp_model, solve_once
from collide.piecewise.row_space import rank_of, svd

# A radius above this (input units) is a ball, not LP rounding: HiGHS meets rows to 1e-9.
RADIUS_TOL = 1e-7


# Rounds of Fukuda's implicit-equality search, after the cone's LP (implicit_equalities),
# before giving the subspace's dimension as a bound.
_MAX_HULL_ROUNDS = 10

# A row whose slack at the target is within this share of its terms is tight there: a
# candidate implicit equality. collision_set leaves a bound the target misses at the
# target's own value, so a tight row's slack is 0 but for the rounding of the product
# (below 1e-13 of its terms at 784 inputs); a row truly slack at the target, however
# little, is no implicit equality and must not be taken for one.
TIGHT_ROW = 1e-12

# A ball LP over at least this many region rows runs HiGHS's interior-point solver (IPX,
# with crossover: a vertex optimum and its multipliers, as the simplex gives), not the
# dual simplex, whose rounds of lazy rows each start from the last basis but pivot
# through a degenerate LP: LeNet-5's relu3 set (9,064 region rows) took 31,000
# iterations over 11 rounds. Both solvers side by side on the MNIST models' sets of three
# targets (benchmarks/set_solvers.py, 2026-12-08): LeNet-5's relu3 sets (8,875 to 9,268
# rows) gain 1.45 to 2.64x; its relu2 sets (6,726 to 6,996 rows, each one point) take
# 0.79 to 1.10x, a loss known only once the ball is solved; the MLP's (0 and 256) lose.
IPM_REGION_ROWS = 1000

# Once a round adds fewer region rows than this, the interior point hands the LP to the
# dual simplex, which starts from the last optimal basis: IPX starts every run afresh, and
# on LeNet-5's relu3 set its last rounds (58, 17 and 4 rows added) took 1.5 s each, where
# the hot-started simplex took 1.9, 0.57 and 0.15 s (one-off, 2026-12-07).
SIMPLEX_TAIL_ROWS = 32


SIMPLEX, INTERIOR_POINT = "simplex", "interior point"


def _solve(h: highspy.Highs, lazy_a: np.ndarray, lazy_b: np.ndarray, added: np.ndarray, *,
           watch: Heartbeat | None) -> tuple[LazyRun, str]:
    """A ball LP solved with its region rows taken in lazily, and by which solver: the
    interior point where :data:`IPM_REGION_ROWS` says so (handing the last rounds to the
    simplex, :data:`SIMPLEX_TAIL_ROWS`), the simplex otherwise, and the simplex again from
    scratch (the rows taken in kept) where the interior point ends without an optimum."""
    if len(lazy_b) < IPM_REGION_ROWS:
        return solve_with_region(h, lazy_a, lazy_b, added, watch=watch), SIMPLEX
    # IPX by name where HiGHS knows the name (1.12 on; "ipm" may mean its newer HiPO
    # where that is built in); before, "ipm" was IPX.
    if h.setOptionValue("solver", "ipx") != highspy.HighsStatus.kOk:
        h.setOptionValue("solver", "ipm")
    tail = []

    def adding(rows: np.ndarray) -> None:
        if not tail and len(rows) < SIMPLEX_TAIL_ROWS:
            h.setOptionValue("solver", "simplex")
            tail.append(True)

    run = solve_with_region(h, lazy_a, lazy_b, added, watch=watch, adding=adding)
    solver = f"{INTERIOR_POINT}, then {SIMPLEX}" if tail else INTERIOR_POINT
    if run.solution is not None:
        return run, solver
    h.setOptionValue("solver", "simplex")
    h.clearSolver()
    again = solve_with_region(h, lazy_a, lazy_b, added, watch=watch)
    return dataclasses.replace(again, order=run.order + again.order, rounds=run.rounds + again.rounds), \
        f"{solver} ({run.status}), then {SIMPLEX}"


@dataclass(frozen=True)
class Ball:
    """The largest ball in C within its equality subspace; radius 0 when there is none.
    ``solver``: which of HiGHS's solvers found it (:func:`_solve`)."""

    center: np.ndarray
    radius: float
    outcome: str
    rounds: int
    region_rows_used: int
    duals: np.ndarray
    box_rows_used: int = 0
    pinned: np.ndarray | None = None
    solver: str = SIMPLEX


def inscribed_ball(cs: CollisionSet, *, pinned: np.ndarray | None = None, watch: Heartbeat | None = None) -> Ball:
    """The Chebyshev ball of C in its equality subspace: one LP, region rows added lazily.

    Solved in x, not in the subspace's coordinates: a row ``a x ≤ b`` holds on the ball
    of centre c and radius r within the subspace iff ``a c + r‖Bᵀa‖ ≤ b``, and the box
    rows then keep two entries each instead of k (on the MNIST MLP's ``relu1``: seconds
    against 26 s for the dense LP in z). ``pinned`` (over :meth:`CollisionSet.all_rows`)
    marks rows taken as equalities: the ball then lies in the flat they leave.
    ``Ball.duals`` are the rows' multipliers (0 for rows never added).

    Without ``pinned`` rows each coordinate is measured from its box face nearer the
    target (:func:`_ball_boxed`): that face becomes the column's bound and only the far
    face a row, which on the MNIST MLP's ``relu1`` solves about three times faster than
    both faces as rows (``ball_*`` in ``benchmarks/scan.json``). A radius that comes out
    as 0 is what it is: :func:`hull_dimension` finds the rows that flatten C by an LP of
    its own, not from these multipliers. With ``pinned`` rows every box face is a row and
    x free, so that Fukuda's rounds (:func:`hull_dimension`'s fallback) read every face's
    multiplier from its row. ``watch`` hears of the LPs' iterations.
    """
    if pinned is None or not pinned.any():
        return _ball_boxed(cs, watch)
    return _ball_every_box_row(cs, pinned=pinned, watch=watch)


def _reach(cs: CollisionSet, a_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of :meth:`CollisionSet.all_rows` ``a_all``: its norm on the subspace (its
    coefficient on r) and whether it moves there."""
    reach_all = cs.reach_all()
    # A row constant on the subspace (an earlier positive unit's sign row, whose weights
    # lie in the equalities' span) holds on it as a whole; its reach is rounding.
    return reach_all, moving_rows(a_all, reach_all)


def _inside(cs: CollisionSet, sol: np.ndarray, reach_all: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, float]:
    """The LP's centre put back on the equality subspace exactly, and its radius shrunk by
    what any row then misses, so that the ball is inside every row."""
    a_all, b_all = cs.all_rows()
    d = cs.input_dim
    center = cs.origin + mm(cs.basis, mm(cs.basis.T, sol[:d] - cs.origin))
    gap = (b_all - mm(a_all, center))[free] / reach_all[free]
    return center, max(0.0, min(float(sol[d]), float(gap.min(initial=np.inf))))


def _ball_boxed(cs: CollisionSet, watch: Heartbeat | None) -> Ball:
    """:func:`inscribed_ball` with no row pinned, each coordinate measured from its box
    face nearer the target: ``x = base + side·(ρ r + s)`` with ``s ≥ 0``.

    A ball of radius r in the subspace reaches ``ρⱼ r`` along coordinate j (``ρⱼ`` the
    box row's reach), so the near face's row is exactly ``sⱼ ≥ 0``, a column bound, and
    only the far face stays a row (``sⱼ + 2ρⱼ r ≤ upper − lower``); ``sⱼ ≤ upper − lower``
    is kept as a bound too, which the dual simplex meets by flipping it. The model
    has d fewer rows than with both faces as rows: on the MNIST MLP's ``relu1`` the
    solve falls from about 0.7 s to 0.2 s and 1,400 iterations to 600, with the same
    radius to 3e-8 relative (``ball_*`` in ``benchmarks/scan.json``). Presolve is off: it took
    longer than it saved. The equality, layer and region rows are the same rows in the
    new columns, so their multipliers are the original rows'; a near face's multiplier
    is its column's reduced cost.
    """
    d, k = cs.input_dim, cs.free_dim
    a_all, b_all = cs.all_rows()
    m = len(b_all)
    if k == 0:
        return Ball(cs.origin.copy(), 0.0, "optimal", 0, 0, np.zeros(m))
    reach_all, moving = _reach(cs, a_all)
    coef = np.where(moving, reach_all, 0.0)
    n = len(cs.bounds)
    upper_rows, lower_rows = np.arange(n, n + d), np.arange(n + d, n + 2 * d)
    rho = coef[upper_rows]  # a coordinate's two faces have the same reach
    near_lower = cs.origin - cs.lower <= cs.upper - cs.origin
    side = np.where(near_lower, 1.0, -1.0)
    base = np.where(near_lower, cs.lower, cs.upper)
    far_rows, near_rows = np.where(near_lower, upper_rows, lower_rows), np.where(near_lower, lower_rows, upper_rows)

    def in_s(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``a x ≤ b`` as rows over (s, r), and their right-hand sides."""
        a = a_all[rows] * side
        return np.hstack([a, (mm(a, rho[:, None])[:, 0] + coef[rows])[:, None]]), b_all[rows] - mm(a_all[rows], base)

    span = cs.upper - cs.lower
    cost = np.zeros(d + 1)
    cost[-1] = -1.0  # maximise r
    h = lp_model(cost, np.zeros(d + 1), np.r_[np.full(d, span), np.inf], tol=LP_TOL)
    h.setOptionValue("presolve", "off")
    eq = cs.equalities * side
    eq_rhs = mm(cs.equalities, (cs.origin - base)[:, None])[:, 0]
    add_rows(h, np.hstack([eq, mm(eq, rho[:, None])]), eq_rhs, eq_rhs)
    add_rows(h, sp.hstack([sp.identity(d, format="csr"), sp.csr_matrix(2 * rho[:, None])]),
             np.full(d, -np.inf), np.full(d, span))
    fixed = np.arange(cs.n_fixed)
    fixed_a, fixed_b = in_s(fixed)
    add_rows(h, fixed_a, np.full(len(fixed), -np.inf), fixed_b)
    lazy = np.arange(cs.n_fixed, n)
    lazy_a, lazy_b = in_s(lazy)
    added = np.zeros(len(lazy), dtype=bool)
    run, solver = _solve(h, lazy_a, lazy_b, added, watch=watch)
    if run.solution is None:
        return Ball(cs.origin.copy(), float("nan"), str(run.status), run.rounds, int(added.sum()), np.zeros(m),
                    box_rows_used=2 * d, solver=solver)
    solution = h.getSolution()
    duals = np.zeros(m)
    duals[np.r_[far_rows, fixed, lazy[np.asarray(run.order, dtype=int)]]] = np.asarray(solution.row_dual)[cs.rank :]
    duals[near_rows] = -np.asarray(solution.col_dual)[:d]
    s, r = run.solution[:d], run.solution[d]
    center, radius = _inside(cs, np.r_[base + side * (rho * r + s), r], reach_all, moving)
    return Ball(center, radius, "optimal", run.rounds, int(added.sum()), duals, box_rows_used=2 * d, solver=solver)


def _ball_every_box_row(cs: CollisionSet, *, pinned: np.ndarray | None, watch: Heartbeat | None = None) -> Ball:
    """:func:`inscribed_ball` with every box row in the model from the start."""
    d, k = cs.input_dim, cs.free_dim
    a_all, b_all = cs.all_rows()
    m = len(b_all)
    pinned = np.zeros(m, dtype=bool) if pinned is None else pinned
    if k == 0:
        return Ball(cs.origin.copy(), 0.0, "optimal", 0, 0, np.zeros(m))
    reach_all, moving = _reach(cs, a_all)
    coef = np.where(pinned | ~moving, 0.0, reach_all)
    cost = np.zeros(d + 1)
    cost[-1] = -1.0  # maximise r
    # x's own bounds are left free: the box's rows carry them, so that a box face that
    # holds all over C shows in a row's multiplier rather than a column's.
    h = lp_model(cost, np.r_[np.full(d, -np.inf), 0.0], np.full(d + 1, np.inf), tol=LP_TOL)
    eq_rhs = cs.equalities @ cs.origin
    add_rows(h, np.hstack([cs.equalities, np.zeros((cs.rank, 1))]), eq_rhs, eq_rhs)
    eye = sp.identity(d, format="csr")
    box = sp.vstack([eye, -eye])
    box_rows = np.arange(len(cs.bounds), m)

    def lo(rows: np.ndarray) -> np.ndarray:  # a pinned row is an equality
        return np.where(pinned[rows], b_all[rows], -np.inf)

    add_rows(h, sp.hstack([box, sp.csr_matrix(coef[box_rows][:, None])]), lo(box_rows), b_all[box_rows])
    fixed = np.arange(cs.n_fixed)
    add_rows(h, np.hstack([a_all[fixed], coef[fixed][:, None]]), lo(fixed), b_all[fixed])
    in_model = [*box_rows, *fixed]
    lazy = np.arange(cs.n_fixed, len(cs.bounds))
    added = pinned[lazy].copy()
    if added.any():
        rows = lazy[added]
        add_rows(h, np.hstack([a_all[rows], coef[rows][:, None]]), lo(rows), b_all[rows])
        in_model += list(rows)
    lazy_a = np.hstack([a_all[lazy], coef[lazy][:, None]])
    lazy_b = b_all[lazy]
    run, solver = _solve(h, lazy_a, lazy_b, added, watch=watch)
    sol, order, rounds = run.solution, run.order, run.rounds
    if sol is None:
        return Ball(cs.origin.copy(), float("nan"), str(h.getModelStatus()), rounds, int(added.sum()), np.zeros(m),
                    solver=solver)
    in_model += list(lazy[order])
    duals = np.zeros(m)
    duals[np.array(in_model, dtype=int)] = np.asarray(h.getSolution().row_dual)[cs.rank :]
    center, radius = _inside(cs, sol, reach_all, moving & ~pinned)
    return Ball(center, radius, "optimal", rounds, int(added.sum()), duals, solver=solver)


@dataclass(frozen=True, eq=False)
class Equalities:
    """Rows of :meth:`CollisionSet.all_rows` that hold with equality all over C (``rows``,
    (m + 2d,) bool) and, where an LP's dual gave one, their certificate (``weights``,
    (m + 2d,) float64, 0 off ``rows``; None where there is none): weights ``yᵢ ≥ 1`` whose
    combination of the rows, each scaled to unit reach on the equality subspace, vanishes
    there, ``Σ yᵢ aᵢB/‖aᵢB‖ = 0``. Every row holds on C, and each is tight at the target t,
    so for x = t + Bz in C the combination ``Σ yᵢ (aᵢx − bᵢ)/‖aᵢB‖`` is a sum of terms ≤ 0
    that equals 0: each term is 0, and every such row holds with equality on all of C.
    Anyone can check that with the rows rebuilt from the model and one product
    (:func:`collide.results.verify.flat_claim`)."""

    rows: np.ndarray
    weights: np.ndarray | None = None


def certificate_weights(g: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The LP's multipliers ``y`` of rows ``g`` (unit reach, in the subspace's coordinates)
    made into an exact-as-float certificate: moved the least way onto ``{y : gᵀy = 0}``
    (the interior point stops within its dual tolerance of it, about 1e-7, which a
    referee's bound would carry times the set's diameter) and scaled to a least weight of
    1; None where that leaves a weight below half (no certificate). (n, k), (n,) -> (n,)"""
    u, s, vt = svd(np.ascontiguousarray(g.T))
    r = rank_of(s, g.shape)
    # gᵀy lies in gᵀ's range, so the least-norm w with gᵀw = gᵀy takes all of it away.
    along = mm(u[:, :r].T, mm(g.T, y[:, None]))[:, 0] / s[:r]
    y = y - mm(vt[:r].T, along[:, None])[:, 0]
    least = float(y.min(initial=np.inf))
    return y / least if least >= 0.5 else None


def implicit_equalities(cs: CollisionSet, *, watch: Heartbeat | None = None) -> Equalities | None:
    """Which rows of :meth:`CollisionSet.all_rows` hold with equality all over C and move on
    its equality subspace (a row constant there constrains nothing in it), with the LP's
    dual as their certificate (:class:`Equalities`); None where the LP failed.

    Such a row is tight at the target t, so only the rows tight there (within
    :data:`TIGHT_ROW`) are candidates, and since C is convex and its other rows are slack at
    t, a candidate holds all over C iff it holds along every direction of the cone
    ``K = {v in the equality subspace : aᵢ v ≤ 0, i tight}``. One LP over that cone finds
    them all: maximise ``Σ sᵢ`` over ``aᵢ v + sᵢ ≤ 0``, ``0 ≤ sᵢ ≤ 1``. K is a cone, so the
    directions that each lift one candidate off its face add up to one that lifts every
    such candidate to ``sᵢ = 1``, while a row that holds all over K keeps ``sᵢ = 0``: the
    optimum is 0 or 1 in each slack, far from any tolerance. A candidate counts as lifted
    only where the LP's direction, multiplied out here, leaves it at least half a unit off
    its face (the rows scaled to unit reach): that direction is a point of C off each face
    it lifts, and the LP's optimum says no direction lifts the others. On LeNet-5's relu2
    set of the first test 7 (1,723 candidates, free dimension 261) the LP took 1.6 s and
    found the set to be one point, where Fukuda's rounds from the ball's multipliers
    stopped at the bound 261 (docs/performance.md). ``watch`` hears of the LP's iterations.
    """
    candidates, g = _tight_rows(cs)
    implicit = np.zeros(len(cs.bounds) + 2 * cs.input_dim, dtype=bool)
    if not len(candidates):
        return Equalities(implicit)
    k, n = cs.free_dim, len(candidates)
    h = lp_model(np.r_[np.zeros(k), -np.ones(n)], np.r_[np.full(k, -np.inf), np.zeros(n)],
                 np.r_[np.full(k, np.inf), np.ones(n)], tol=LP_TOL)
    add_rows(h, sp.hstack([sp.csr_matrix(g), sp.identity(n, format="csr")]), np.full(n, -np.inf), np.zeros(n))
    if n >= IPM_REGION_ROWS:
        # The optimum's slacks are unique (0 or 1), so the interior point's own answer
        # serves and crossover to a vertex is not needed: 1.6 s against 3.1 s with it,
        # 4.5 s by the dual simplex, on the relu2 set above (one-off, 2026-12-08).
        if h.setOptionValue("solver", "ipx") != highspy.HighsStatus.kOk:  # before HiGHS 1.12
            h.setOptionValue("solver", "ipm")
        h.setOptionValue("run_crossover", "off")
    solved = solve_once(h, tol=LP_TOL, watch=watch)
    if solved.solution is None and n >= IPM_REGION_ROWS:  # the interior point without an optimum
        h.setOptionValue("solver", "simplex")
        h.clearSolver()
        solved = solve_once(h, tol=LP_TOL, watch=watch)
    if solved.solution is None:
        return None
    lifted = -mm(g, solved.solution[:k]) >= 0.5
    implicit[candidates[~lifted]] = True
    # The dual of the cone's LP: multipliers y ≥ 0 of its rows with gᵀy = 0 (z's reduced
    # costs) and y ≥ 1 wherever a slack stays at 0 (sᵢ's): the certificate.
    y = -np.asarray(h.getSolution().row_dual)[~lifted]
    found = certificate_weights(g[~lifted], y) if (~lifted).any() else None
    weights = None
    if found is not None:
        weights = np.zeros(len(implicit))
        weights[candidates[~lifted]] = found
    return Equalities(implicit, weights)


def _tight_rows(cs: CollisionSet) -> tuple[np.ndarray, np.ndarray]:
    """The rows of :meth:`CollisionSet.all_rows` tight at the target (within
    :data:`TIGHT_ROW`) that move on the equality subspace, as indices, and on the
    subspace's coordinates at unit reach. -> (n,), (n, k)"""
    a_all, b_all = cs.all_rows()
    reach_all, moving = _reach(cs, a_all)
    slack = b_all - mm(a_all, cs.origin)
    scale = 1 + np.abs(b_all) + mm(np.abs(a_all), np.abs(cs.origin))
    candidates = np.flatnonzero(moving & (slack <= TIGHT_ROW * scale))
    return candidates, mm(a_all[candidates], cs.basis) / reach_all[candidates, None]


def certify_pinned(cs: CollisionSet, pinned: np.ndarray, *, watch: Heartbeat | None = None) -> np.ndarray | None:
    """A certificate (as :class:`Equalities`'s ``weights``, (m + 2d,)) that the rows
    ``pinned`` hold with equality all over C, for rows pinned without one (Fukuda's
    rounds): one LP for the least weights, at least 1 on each pinned row, whose
    combination of them vanishes on the subspace, cleaned as the cone's dual is
    (:func:`certificate_weights`). Such weights exist where the pinned rows are all the
    implicit equalities that move, as they are once a ball fits in the flat they leave;
    none exist unless every pinned row holds all over C. The pinned rows alone, not the
    other rows tight at the target: weights the LP put there would be lost to the
    certificate (on a set of one point every tight row holds, and the least weights may
    lean on rows not pinned). None where a pinned row is not tight at the target, or the
    LP or the cleaning fails."""
    candidates, g = _tight_rows(cs)
    on = pinned[candidates]
    if on.sum() != pinned.sum():
        return None
    g, k, n = g[on], cs.free_dim, int(on.sum())
    h = lp_model(np.ones(n), np.ones(n), np.full(n, np.inf), tol=LP_TOL)
    add_rows(h, g.T, np.zeros(k), np.zeros(k))
    solved = solve_once(h, tol=LP_TOL, watch=watch)
    if solved.solution is None:
        return None
    found = certificate_weights(g, np.asarray(solved.solution[:n]))
    if found is None:
        return None
    weights = np.zeros(len(pinned))
    weights[candidates[on]] = found
    return weights


def _rank_on_subspace(cs: CollisionSet, rows: np.ndarray) -> int:
    """The rank of the rows ``rows`` (a mask over :meth:`CollisionSet.all_rows`) on the
    equality subspace, each scaled to unit reach there, as :func:`collide.piecewise.hull.hull_frame`
    counts it for the hull's frame; a row constant on the subspace adds nothing."""
    a_all, _ = cs.all_rows()
    reach_all, moving = _reach(cs, a_all)
    rows = rows & moving
    if not rows.any():
        return 0
    s = np.linalg.svd(mm(a_all[rows], cs.basis) / reach_all[rows, None], compute_uv=False)
    return rank_of(s, (len(s), cs.free_dim))


@dataclass(frozen=True, eq=False)  # its arrays have no one truth value to compare by
class Hull:
    """C's affine hull as :func:`hull_dimension` found it: its dimension and how
    (``method``), the ball in it where C is flat and more than a point (``flat``, its
    ``pinned`` rows), and the rows found to hold with equality all over C (``pinned``,
    (m + 2d,) bool; None where none were) with their certificate (``weights``, as
    :class:`Equalities`: the cone LP's dual, or where Fukuda's rounds pinned rows, which
    give none, :func:`certify_pinned`'s; None where neither gave one)."""

    dim: int
    method: str
    flat: Ball | None = None
    pinned: np.ndarray | None = None
    weights: np.ndarray | None = None

    def ball_in(self, ball: Ball) -> Ball:
        """The ball in the hull: the flat's where C is flat, else ``ball`` (C's own)."""
        return ball if self.flat is None else self.flat

    def pinned_rows(self) -> dict[str, np.ndarray | None]:
        """The pinned rows as indices (``pinned``, int64) and their certificate's weights on
        them (``pinned_weights``), as a measured set keeps them; None where there are none."""
        if self.pinned is None:
            return {"pinned": None, "pinned_weights": None}
        rows = np.flatnonzero(self.pinned)
        return {"pinned": rows, "pinned_weights": None if self.weights is None else self.weights[rows]}


def hull_dimension(cs: CollisionSet, ball: Ball, *, watch: Heartbeat | None = None) -> Hull:
    """The dimension of C's affine hull and how it was found.

    A positive radius puts a k-ball in C. A radius of 0 means rows hold with equality all
    over C: :func:`implicit_equalities` finds them, with their certificate, and the hull's
    dimension is k minus their rank on the subspace. Where they leave more than a point,
    the ball is solved again in the flat they leave, for its radius; should that ball
    still be flat (the LP's direction met a row only to rounding), or the LP have failed,
    Fukuda's rounds go on from the flat ball's multipliers: the ball LP is the "largest
    common slack" LP, so at an optimum of 0 every row with a positive multiplier is an
    implicit equality; those rows are pinned and the LP solved again, until a positive
    radius is left or, past :data:`_MAX_HULL_ROUNDS`, ``k`` is returned as what it is: an
    upper bound. ``watch`` hears of the LPs' iterations.
    """
    k = cs.free_dim
    if k == 0 or ball.radius > RADIUS_TOL:
        return Hull(k, "ball" if k else "point")
    found = implicit_equalities(cs, watch=watch)
    if found is None:
        # As before the cone's LP: the rows the every-face ball's multipliers name.
        pinned, weights = np.abs(_ball_every_box_row(cs, pinned=None, watch=watch).duals) > LP_TOL, None
    elif not found.rows.any():
        # The LP's direction lifts every tight row: C reaches every way from the target
        # within its subspace, though its ball is below RADIUS_TOL.
        return Hull(k, "implicit-equalities")
    else:
        pinned, weights = found.rows, found.weights
    for _ in range(_MAX_HULL_ROUNDS):
        if not pinned.any():
            break
        rank = _rank_on_subspace(cs, pinned)
        if rank == k:  # one point: no ball to measure in it
            return Hull(0, "implicit-equalities", None, pinned, _certified(cs, pinned, weights, watch))
        flat = inscribed_ball(cs, pinned=pinned, watch=watch)
        if not np.isfinite(flat.radius):
            break
        if flat.radius > RADIUS_TOL:
            return Hull(k - rank, "implicit-equalities", dataclasses.replace(flat, pinned=pinned), pinned,
                        _certified(cs, pinned, weights, watch))
        moved = ~pinned & (np.abs(flat.duals) > LP_TOL)
        if not moved.any():
            break
        pinned, weights = pinned | moved, None  # the rounds' rows come without a certificate
    return Hull(k, "upper-bound")


def _certified(cs: CollisionSet, pinned: np.ndarray, weights: np.ndarray | None,
               watch: Heartbeat | None) -> np.ndarray | None:
    """``weights`` where the cone's LP gave them, else a certificate of their own."""
    return weights if weights is not None else certify_pinned(cs, pinned, watch=watch)
