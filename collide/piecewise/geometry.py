"""The exact collision set measured: its dimension, inscribed ball, widths and samples.

Of the set C of :mod:`collide.piecewise.collision_set`:

- the **inscribed ball** (Chebyshev centre and radius) is one LP:
  maximise r subject to ``G z + r‖Gᵢ‖ ≤ h`` (HiGHS; the activation-region rows, thousands
  at LeNet-5's ``relu3``, are added only where a solution violates them, as the exact
  solver does);
- the **dimension** of C's affine hull is ``k = d − rank`` when the radius is positive
  (a k-ball lies inside C). When it is 0, some inequalities hold with equality all over
  C: all are tight at the target, and one LP over the cone of directions that keep the
  tight rows finds every one (:func:`collide.piecewise.ball.implicit_equalities`); the
  dimension is k less their rank, confirmed by a ball in the flat they leave, with
  Fukuda's largest-common-slack rounds as the fallback. The LP's dual certifies that
  those rows hold all over C (:class:`collide.piecewise.ball.Equalities`), and is kept
  with them for a referee;
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

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from collide.config import GeometryConfig
from collide.errors import InternalError
from collide.piecewise.ball import RADIUS_TOL, Ball, Hull, hull_dimension, inscribed_ball
from collide.piecewise.collision_set import CollisionSet, mm, onto
from collide.piecewise.highs import LpProgress, heartbeat
from collide.piecewise.hull import hull_frame, hull_polytope
from collide.piecewise.sampler import SLACK_TOL, sample
from collide.piecewise.widths import WIDTH_TOL, Widths, extents


@dataclass(frozen=True)
class SetGeometry:
    """What :func:`measure` found: dimension (and how), ball, widths, samples, costs.

    The ball (``center``, ``radius``) is the largest in C's affine hull: in the flat left
    by the rows pinned to equality where C is flat. ``pinned``: those rows, as indices
    into :meth:`~collide.piecewise.collision_set.CollisionSet.all_rows` (None where the
    dimension needed none), and ``pinned_weights`` their certificate
    (:class:`collide.piecewise.ball.Equalities`; None where it has none).

    Shapes: center (d,); samples (n, d); directions (w, d); extremes (2w, d); widths (w,),
    float64 in input units; pinned (p,) int64; pinned_weights (p,) float64.
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
    pinned: np.ndarray | None = None
    pinned_weights: np.ndarray | None = None


def measure(cs: CollisionSet, *, config: GeometryConfig, progress: LpProgress | None = None) -> SetGeometry:
    """Ball, dimension, widths and samples of ``cs``.

    The sizes come first and need no mixing: the radius is an LP optimum, each width two
    (their mean over uniform directions, with its standard error, estimates the mean
    width). The samples come with the diagnostics of every statistic they are used for;
    ``sampler["converged"]`` False means those statistics are not to be reported.
    ``lp`` says how the ball's LP went, ``solver`` naming which of HiGHS's solvers found it
    (:attr:`collide.piecewise.ball.Ball.solver`).
    ``progress(stage, iterations, seconds)`` hears as each stage (``ball``, ``dimension``,
    ``widths``, ``samples``) begins and, about once a second, how far its LPs have come
    (:class:`collide.piecewise.highs.Heartbeat`).
    """
    start = time.perf_counter()
    deadline = start + config.max_seconds if config.max_seconds > 0 else None
    ball = inscribed_ball(cs, watch=heartbeat(progress, "ball"))
    if not np.isfinite(ball.radius):
        raise InternalError(f"the inscribed-ball LP of the collision set failed ({ball.outcome}), though the "
                           "target is in the set: report this with the model and target")
    widths_config = {"min_directions": config.n_directions, "max_directions": config.max_directions,
                     "rel_se": config.width_rel_se, "seed": config.seed}
    hull, widths = Hull(cs.free_dim, "ball" if cs.free_dim else "point"), None
    if cs.free_dim and ball.radius <= RADIUS_TOL:
        searching = heartbeat(progress, "dimension")
        hull = hull_dimension(cs, ball, watch=searching)
        if hull.method == "upper-bound":
            # The search gave up, but a set of dimension ≥ 1 has a positive width along a
            # random direction of its subspace with probability 1: zero along every one
            # drawn, it is one point. (Only now: these width LPs took 13 s on LeNet-5's
            # relu2 set, where the search and its certificate take 0.9 s.)
            probe = extents(cs, cs.basis, center=None, free=None, **{**widths_config, "max_directions": max(
                1, config.n_directions)}, watch=searching)
            if probe.widths.max() <= WIDTH_TOL:
                hull, widths = Hull(0, "widths"), probe
    if hull.dim == 0 and widths is None:  # one point: no direction to measure along
        widths = Widths.none(cs.input_dim)
    dim, how, flat = hull.dim, hull.method, hull.flat
    if config.sizes_only:
        return _sizes_only(cs, ball, hull, widths, config, start)
    basis, centre, free = hull_frame(cs, ball, flat)
    if widths is None:
        # Directions uniform on the hull's own sphere (not the subspace's): a direction
        # partly across the hull would count a zero extent along its normal part.
        interior = ball.radius > RADIUS_TOL or flat is not None
        widths = extents(cs, basis, center=centre if interior else None, free=free if interior else None,
                         **widths_config, watch=heartbeat(progress, "widths"))
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
        heartbeat(progress, "samples")  # announced; the walk has no LP to watch
        z_centre = poly.coords(centre[None])[0]
        starts = np.vstack([z_centre[None], z_centre + 0.5 * (poly.coords(widths.extremes) - z_centre)])
        z, record = sample(poly, z_centre, starts[np.r_[1 : len(starts), 0]], mm(widths.directions, basis),
                           config=config, deadline=deadline)
        samples = onto(cs, basis, cs.origin + mm(z, basis.T))
        _check_inside(cs, samples, free)
    in_hull = hull.ball_in(ball)
    return SetGeometry(
        dim=dim, dim_method=how, radius=in_hull.radius, center=in_hull.center, samples=samples,
        directions=widths.directions, extremes=widths.extremes, widths=widths.widths,
        n_positive=cs.n_positive, rank=cs.rank, free_dim=cs.free_dim, sampler=record,
        lp=_lp_record(cs, in_hull, widths), seconds=time.perf_counter() - start, **hull.pinned_rows(),
    )


def _lp_record(cs: CollisionSet, ball: Ball, widths: Widths) -> dict[str, Any]:
    """How the ball's LP went (``ball``: the one in C's hull), for the row's record."""
    return {"outcome": ball.outcome, "solver": ball.solver, "rounds": ball.rounds,
            "region_rows_used": ball.region_rows_used, "region_rows": len(cs.bounds) - cs.n_fixed,
            "rows": len(cs.bounds), "width_seconds": widths.seconds}


def _sizes_only(cs: CollisionSet, ball: Ball, hull: Hull, widths: Widths | None, config: GeometryConfig,
                start: float) -> SetGeometry:
    """``measure``'s result for ``config.sizes_only``: the radius and the dimension, the
    widths only where the dimension's probe drew some (a set of one point), and the
    target as every sample, their statistics not to be reported (one point's are 0)."""
    d, dim, in_hull = cs.input_dim, hull.dim, hull.ball_in(ball)
    widths = widths or Widths.none(d)
    record: dict[str, Any] = {"sampler": config.walk, "converged": dim == 0, "rhat": float("nan"),
                              "ess": float("nan"), "draws": 0, "seed": config.seed,
                              "reason": "" if dim == 0 else "not sampled: sizes only (geometry.sizes_only)"}
    if dim == 0:
        record.update(mean_distance_to_target=0.0, mean_distance_to_target_mcse=0.0,
                      mean_pairwise_distance=0.0, mean_pairwise_distance_mcse=0.0)
    return SetGeometry(
        dim=dim, dim_method=hull.method, radius=in_hull.radius, center=in_hull.center,
        samples=np.repeat(cs.origin[None], config.n_samples, 0), directions=widths.directions,
        extremes=widths.extremes, widths=widths.widths, n_positive=cs.n_positive, rank=cs.rank,
        free_dim=cs.free_dim, sampler=record, lp=_lp_record(cs, in_hull, widths),
        seconds=time.perf_counter() - start, **hull.pinned_rows(),
    )


def _check_inside(cs: CollisionSet, points: np.ndarray, free: np.ndarray) -> None:
    """Every point meets every row of C to rounding: nothing was clipped to hide one."""
    a_all, b_all = cs.all_rows()
    over = mm(points, a_all[free].T) - b_all[free]
    scale = 1 + np.abs(b_all[free]) + mm(np.abs(points), np.abs(a_all[free]).T)
    worst = float((over / scale).max(initial=-np.inf))
    if worst > SLACK_TOL:
        raise InternalError(f"a sample of the collision set misses one of its rows by {worst:.3g} (relative): a "
                           "sampler bug, report it with the model and target")
