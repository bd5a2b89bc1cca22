"""The largest ball inside a collision set, and the dimension of the set's affine hull.

The ball (Chebyshev centre and radius) is one LP in x, the region rows taken in lazily
and the box held both as the columns' bounds and as rows (no row pinned).
A positive radius puts a ball of the equality subspace's dimension in C; a radius of 0
means some rows hold with equality all over C, found from the LP's multipliers
(Fukuda's "largest common slack" LP) and pinned until a positive radius is left.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from collide.piecewise.collision_set import FLAT_ROW, LP_TOL, CollisionSet, mm, solve_with_region
from collide.piecewise.highs import add_rows, lp_model

# A radius above this (input units) is a ball, not LP rounding: HiGHS meets rows to 1e-9.
RADIUS_TOL = 1e-7


# Rounds of the implicit-equality search before giving the subspace's dimension as a bound.
_MAX_HULL_ROUNDS = 10


@dataclass(frozen=True)
class Ball:
    """The largest ball in C within its equality subspace; radius 0 when there is none."""

    center: np.ndarray
    radius: float
    outcome: str
    rounds: int
    region_rows_used: int
    duals: np.ndarray
    box_rows_used: int = 0
    pinned: np.ndarray | None = None


def inscribed_ball(cs: CollisionSet, *, pinned: np.ndarray | None = None) -> Ball:
    """The Chebyshev ball of C in its equality subspace: one LP, region rows added lazily.

    Solved in x, not in the subspace's coordinates: a row ``a x ≤ b`` holds on the ball
    of centre c and radius r within the subspace iff ``a c + r‖Bᵀa‖ ≤ b``, and the box
    rows then keep two entries each instead of k (on the MNIST MLP's ``relu1``: seconds
    against 26 s for the dense LP in z). ``pinned`` (over :meth:`CollisionSet.all_rows`)
    marks rows taken as equalities: the ball then lies in the flat they leave.
    ``Ball.duals`` are the rows' multipliers (0 for rows never added).

    Without ``pinned`` rows the box is in the model twice: as the columns' bounds, which
    HiGHS's dual simplex meets by flipping a bound instead of a basis change, and as the
    rows that carry r's coefficient, all from the start and with presolve off. On the
    MNIST MLP's ``relu1`` that solves in about 0.55 s, where the box rows taken in
    lazily (5 to 7 rounds to find the ~730 that bind) took 0.9 s and every box row with
    free columns 4 s (``exact_row`` in ``benchmarks/scan.json``). A radius that comes
    out as 0 is solved again in the last form, since :func:`hull_dimension` reads the
    rows' multipliers, and a column's bound would carry a box face's multiplier in its
    row's place.
    """
    if pinned is None or not pinned.any():
        ball = _ball_boxed(cs)
        if ball.radius > RADIUS_TOL:
            return ball
    return _ball_every_box_row(cs, pinned=pinned)


def _reach(cs: CollisionSet, a_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's norm on the subspace (its coefficient on r) and whether it moves there."""
    reach_all = np.linalg.norm(mm(a_all, cs.basis), axis=1)
    # A row constant on the subspace (an earlier positive unit's sign row, whose weights
    # lie in the equalities' span) holds on it as a whole; its reach is rounding.
    moving = reach_all > FLAT_ROW * (1 + np.linalg.norm(a_all, axis=1))
    return reach_all, moving


def _inside(cs: CollisionSet, sol: np.ndarray, reach_all: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, float]:
    """The LP's centre put back on the equality subspace exactly, and its radius shrunk by
    what any row then misses, so that the ball is inside every row."""
    a_all, b_all = cs.all_rows()
    d = cs.input_dim
    center = cs.origin + mm(cs.basis, mm(cs.basis.T, sol[:d] - cs.origin))
    gap = (b_all - mm(a_all, center))[free] / reach_all[free]
    return center, max(0.0, min(float(sol[d]), float(gap.min(initial=np.inf))))


def _ball_boxed(cs: CollisionSet) -> Ball:
    """:func:`inscribed_ball` with no row pinned: the box both as the columns' bounds and
    as rows, the region rows lazy, presolve off."""
    d, k = cs.input_dim, cs.free_dim
    a_all, b_all = cs.all_rows()
    m = len(b_all)
    if k == 0:
        return Ball(cs.origin.copy(), 0.0, "optimal", 0, 0, np.zeros(m))
    reach_all, moving = _reach(cs, a_all)
    coef = np.where(moving, reach_all, 0.0)
    cost = np.zeros(d + 1)
    cost[-1] = -1.0  # maximise r
    h = lp_model(cost, np.r_[np.full(d, cs.lower), 0.0], np.r_[np.full(d, cs.upper), np.inf], tol=LP_TOL)
    # HiGHS's presolve takes longer than it saves on this model: on the MNIST MLP's relu1
    # the whole solve is 0.65 s with it and 0.56 s without (benchmarks/scan.json).
    h.setOptionValue("presolve", "off")
    eq_rhs = cs.equalities @ cs.origin
    add_rows(h, np.hstack([cs.equalities, np.zeros((cs.rank, 1))]), eq_rhs, eq_rhs)
    n = len(cs.bounds)
    box_rows = np.arange(n, m)
    eye = sp.identity(d, format="csr")
    add_rows(h, sp.hstack([sp.vstack([eye, -eye]), sp.csr_matrix(coef[box_rows, None])]),
             np.full(len(box_rows), -np.inf), b_all[box_rows])
    fixed = np.arange(cs.n_fixed)
    add_rows(h, np.hstack([a_all[fixed], coef[fixed][:, None]]), np.full(len(fixed), -np.inf), b_all[fixed])
    lazy = np.arange(cs.n_fixed, n)
    added = np.zeros(len(lazy), dtype=bool)
    run = solve_with_region(h, np.hstack([a_all[lazy], coef[lazy][:, None]]), b_all[lazy], added)
    if run.solution is None:
        return Ball(cs.origin.copy(), float("nan"), str(run.status), run.rounds, int(added.sum()), np.zeros(m),
                    box_rows_used=len(box_rows))
    in_model = np.r_[box_rows, fixed, lazy[np.asarray(run.order, dtype=int)]]
    duals = np.zeros(m)
    duals[in_model] = np.asarray(h.getSolution().row_dual)[cs.rank :]
    center, radius = _inside(cs, run.solution, reach_all, moving)
    return Ball(center, radius, "optimal", run.rounds, int(added.sum()), duals, box_rows_used=len(box_rows))


def _ball_every_box_row(cs: CollisionSet, *, pinned: np.ndarray | None) -> Ball:
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
    run = solve_with_region(h, lazy_a, lazy_b, added)
    sol, order, rounds = run.solution, run.order, run.rounds
    if sol is None:
        return Ball(cs.origin.copy(), float("nan"), str(h.getModelStatus()), rounds, int(added.sum()), np.zeros(m))
    in_model += list(lazy[order])
    duals = np.zeros(m)
    duals[np.array(in_model, dtype=int)] = np.asarray(h.getSolution().row_dual)[cs.rank :]
    center, radius = _inside(cs, sol, reach_all, moving & ~pinned)
    return Ball(center, radius, "optimal", rounds, int(added.sum()), duals)


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
        moved = ~pinned & (np.abs(duals) > LP_TOL)
        if not moved.any():
            break
        pinned |= moved
        flat = inscribed_ball(cs, pinned=pinned)
        if not np.isfinite(flat.radius):
            break
        if flat.radius > RADIUS_TOL:
            flat = dataclasses.replace(flat, pinned=pinned)
            return k - int(np.linalg.matrix_rank(mm(a_all[pinned], cs.basis))), "implicit-equalities", flat
        duals = flat.duals
    return k, "upper-bound", None
