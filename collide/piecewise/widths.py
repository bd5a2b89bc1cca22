"""A collision set's widths along random unit directions of its affine hull.

Each width is two LPs (the maximiser and minimiser of u·x over C) on one HiGHS model
that keeps its basis and the region rows earlier directions added; each extreme point is
moved onto the hull and, where HiGHS met a row only to its tolerance, the least way
towards the interior, so every width is certified from below by two points of C.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from collide.errors import InternalError
from collide.piecewise.collision_set import LP_TOL, CollisionSet, mm, onto, solve_with_region
from collide.piecewise.highs import Heartbeat, add_rows, lp_model

# A width below this (input units) along every random direction: the set is one point.
WIDTH_TOL = 1e-7


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

    @staticmethod
    def none(d: int) -> Widths:
        """No direction measured, in d inputs: a set of one point, or no width asked for."""
        return Widths(np.zeros((0, d)), np.zeros((0, d)), np.zeros(0))

    @property
    def mean(self) -> float:
        return float(self.widths.mean()) if len(self.widths) else 0.0

    @property
    def se(self) -> float:
        """The mean's standard error, std/√n over the directions; NaN for one direction."""
        n = len(self.widths)
        return float(self.widths.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _pull_inside(cs: CollisionSet, x: np.ndarray, center: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Each row of ``x`` moved the least way towards ``center`` (a point strictly inside
    the ``free`` rows) that meets every free row in float64: an LP optimum meets its rows
    only to HiGHS's 1e-9, and a point outside C is not a certificate of C's width.

    Rows not ``free`` (constant on the hull, or pinned to equality all over C) hold at
    every point of the hull, so they are left to the projection onto it. (n, d) -> (n, d)
    """
    a_all, b_all = cs.all_rows()
    a, b = a_all[free], b_all[free]
    room = b - mm(a, center)  # > 0: the centre's slack
    out = x.copy()
    for _ in range(3):  # a second pass only where the first one's product rounded the other way
        over = mm(out, a.T) - b
        if not (over > 0).any():
            break
        lam = np.where(over > 0, over / (over + room), 0.0).max(1)
        lam = np.minimum(1.0, lam * (1 + 1e-9) + 1e-15)
        out = out + lam[:, None] * (center - out)
    return out


def extents(cs: CollisionSet, basis: np.ndarray, *, center: np.ndarray | None, free: np.ndarray | None,
            min_directions: int, max_directions: int, rel_se: float, seed: int,
            watch: Heartbeat | None = None) -> Widths:
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

    ``watch`` hears of the LPs' iterations.

    Shapes: basis (d, k) with orthonormal columns.
    """
    start = time.perf_counter()
    d, k = cs.input_dim, basis.shape[1]
    rng = np.random.default_rng(seed)
    if k == 0:
        return Widths.none(d)
    h = lp_model(np.zeros(d), np.full(d, cs.lower), np.full(d, cs.upper), tol=LP_TOL)
    # Presolve costs more than it saves here (the first LP of a set on the MNIST MLP's
    # relu1: about 0.1 s of 1.25 s for four directions); later LPs start from the basis.
    h.setOptionValue("presolve", "off")
    eq_rhs = cs.equalities @ cs.origin
    add_rows(h, cs.equalities, eq_rhs, eq_rhs)
    add_rows(h, cs.rows[: cs.n_fixed], np.full(cs.n_fixed, -np.inf), cs.bounds[: cs.n_fixed])
    lazy_a, lazy_b = cs.rows[cs.n_fixed :], cs.bounds[cs.n_fixed :]
    added = np.zeros(len(lazy_b), dtype=bool)
    directions: list[np.ndarray] = []
    extremes: list[np.ndarray] = []
    widths: list[float] = []
    while len(directions) < max_directions:
        u = mm(rng.standard_normal(k), basis.T)
        u /= np.linalg.norm(u)
        pair = []
        for sign in (-1.0, 1.0):  # minimise −u·x (the maximiser), then u·x
            h.changeColsCost(d, np.arange(d, dtype=np.int32), sign * u)
            x = solve_with_region(h, lazy_a, lazy_b, added, watch=watch).solution
            if x is None:
                raise InternalError(f"a width LP of the collision set ended {h.getModelStatus()}, though the "
                                   "set holds the target: report this with the model and target")
            pair.append(x)
        ext = onto(cs, basis, np.array(pair))
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
