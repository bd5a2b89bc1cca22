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
- **uniform samples** come from hit-and-run: chains started at the Chebyshev centre, each
  step a uniformly random direction in z and a uniform point on the chord of C through
  the current point. Steps are vectorised over chains (one matrix product a step).
  Hit-and-run mixes in polynomially many steps, not few: the sampler reports the
  split-chain R̂ of the distance to the target and its drift between the first and
  second half of the samples, so a reader can judge the mixing of every row.
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
import scipy.sparse as sp
import torch

from collide.config import GeometryConfig
from collide.errors import ConfigError
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
        raise ValueError(f"the target violates row {worst} of its own collision set by {over[worst]:.3g}: "
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


def extents(cs: CollisionSet, *, n_directions: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C's width along ``n_directions`` random unit directions of its subspace: two LPs
    each (max and min of u·x over C), on one HiGHS model that keeps its basis and the
    region rows added for earlier directions.

    The extreme points are points of C, so ``u·(x_max − x_min)`` is a certified lower
    bound on the width, and equal to it at the LPs' optimum. The mean over directions
    estimates C's mean width, a size that, unlike samples, needs no mixing.

    Returns directions (n, d), extremes (2n, d) (each direction's maximiser then
    minimiser) and widths (n,).
    """
    d, k = cs.input_dim, cs.free_dim
    rng = np.random.default_rng(seed)
    if k == 0:
        return np.zeros((0, d)), np.zeros((0, d)), np.zeros(0)
    g = rng.standard_normal((n_directions, k))
    directions = _mm(g, cs.basis.T)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    h = _solver(np.zeros(d), np.full(d, cs.lower), np.full(d, cs.upper))
    eq_rhs = cs.equalities @ cs.origin
    _highs_rows(h, cs.equalities, eq_rhs, eq_rhs)
    _highs_rows(h, cs.rows[: cs.n_fixed], np.full(cs.n_fixed, -np.inf), cs.bounds[: cs.n_fixed])
    lazy_a, lazy_b = cs.rows[cs.n_fixed :], cs.bounds[cs.n_fixed :]
    added = np.zeros(len(lazy_b), dtype=bool)
    extremes = []
    for u in directions:
        for sign in (-1.0, 1.0):  # minimise −u·x (the maximiser), then u·x
            h.changeColsCost(d, np.arange(d, dtype=np.int32), sign * u)
            x, _, _ = _solve_lazily(h, lazy_a, lazy_b, added)
            if x is None:
                raise RuntimeError(f"a width LP of the collision set ended {h.getModelStatus()}, though the "
                                   "set holds the target: report this with the model and target")
            # Onto the equality subspace exactly, and into the box.
            extremes.append(np.clip(cs.origin + _mm(cs.basis, _mm(cs.basis.T, x - cs.origin)), cs.lower, cs.upper))
    ext = np.array(extremes)
    widths = np.einsum("nd,nd->n", directions, ext[0::2] - ext[1::2])
    return directions, ext, widths


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


def hit_and_run(cs: CollisionSet, starts: np.ndarray, *, config: GeometryConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """``config.n_samples`` points of C by hit-and-run, chain c from ``starts[c % len(starts)]``
    (points of C).

    Each step draws a direction uniformly on the subspace's sphere and moves each chain
    to a uniform point of its chord. Returns the samples (n, d) and the sampler's record:
    chains, steps, and the mixing diagnostics of the distance to the target (split-chain
    R̂ over the chains, and the relative drift of its mean from the first to the second
    half of the samples).
    """
    k = cs.free_dim
    per_chain = math.ceil(config.n_samples / config.chains)
    steps = config.burn_in + config.thin * (per_chain - 1) + 1
    record = {"sampler": "hit-and-run", "rounding": config.rounding, "chains": config.chains,
              "per_chain": per_chain, "burn_in": config.burn_in, "thin": config.thin, "steps": steps,
              "seed": config.seed}
    if k == 0:
        return np.repeat(cs.origin[None], config.n_samples, 0), {**record, "rhat": float("nan"), "drift": 0.0}
    gen = torch.Generator().manual_seed(config.seed)
    basis = torch.from_numpy(cs.basis)
    a = torch.from_numpy(cs.rows)
    b = torch.from_numpy(cs.bounds)
    x0 = torch.from_numpy(cs.origin)
    x = torch.from_numpy(starts[np.arange(config.chains) % len(starts)]).clone()
    kept, pilot = [], []
    # Directions: isotropic in the subspace until halfway through burn-in, then shaped by
    # the covariance of the chains' positions in its second quarter (the set is far
    # longer in some directions than others). Any fixed direction law symmetric under
    # v -> -v leaves the uniform law invariant, so the change only speeds mixing.
    shape = basis.T.clone()
    adapt_at, watch_from = config.burn_in // 2, config.burn_in // 4
    for step in range(steps):
        if step % _REFRESH == 0:
            slack = (b - x @ a.T).clamp_min(0.0)
            x = x.clamp(cs.lower, cs.upper)
        if config.rounding and watch_from <= step < adapt_at and step % 5 == 0:
            pilot.append((x - x0) @ basis)
        if config.rounding and step == adapt_at and pilot:
            z = torch.cat(pilot)
            cov = torch.atleast_2d(torch.cov(z.T)) if len(z) > 1 else torch.eye(k, dtype=torch.float64)
            cov += (1e-3 * cov.trace() / k + 1e-12) * torch.eye(k, dtype=torch.float64)
            shape = torch.linalg.cholesky(cov).T @ basis.T
        v = torch.randn(config.chains, k, generator=gen, dtype=torch.float64) @ shape
        rate = v @ a.T  # how fast each row's slack falls along v
        t_hi = torch.minimum(
            torch.where(rate > 0, slack / rate, torch.inf).amin(1),
            torch.where(v > 0, (cs.upper - x) / v, torch.where(v < 0, (cs.lower - x) / v, torch.inf)).amin(1))
        t_lo = torch.maximum(
            torch.where(rate < 0, slack / rate, -torch.inf).amax(1),
            torch.where(v < 0, (cs.upper - x) / v, torch.where(v > 0, (cs.lower - x) / v, -torch.inf)).amax(1))
        t_hi, t_lo = t_hi.clamp_min(0.0), t_lo.clamp_max(0.0)
        t = t_lo + torch.rand(config.chains, generator=gen, dtype=torch.float64) * (t_hi - t_lo)
        x += t[:, None] * v
        slack = (slack - t[:, None] * rate).clamp_min(0.0)
        if step >= config.burn_in and (step - config.burn_in) % config.thin == 0:
            kept.append(x.clone())
    chains = torch.stack(kept, 1)  # (chains, per_chain, d)
    # Back onto the equality subspace exactly (steps add rounding along it).
    z = (chains - x0) @ basis
    radius = z.norm(dim=2).numpy()
    samples = cs.to_input(z.reshape(-1, k)[: config.n_samples].numpy())
    return np.clip(samples, cs.lower, cs.upper), {**record, "rhat": split_rhat(radius), "drift": _drift(radius)}


def split_rhat(draws: np.ndarray) -> float:
    """Gelman–Rubin R̂ of (chains, draws) with each chain split in two; NaN for < 4 draws."""
    n = draws.shape[1] // 2
    if n < 2:
        return float("nan")
    halves = np.concatenate([draws[:, :n], draws[:, n : 2 * n]], 0)
    within = halves.var(1, ddof=1).mean()
    between = n * halves.mean(1).var(ddof=1)
    if within == 0:
        return 1.0 if between == 0 else float("inf")
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def _drift(draws: np.ndarray) -> float:
    half = draws.shape[1] // 2
    if half == 0:
        return float("nan")
    first, second = draws[:, :half].mean(), draws[:, half:].mean()
    return float((second - first) / max(abs(draws.mean()), 1e-300))


def measure(cs: CollisionSet, *, config: GeometryConfig) -> SetGeometry:
    """Ball, dimension and samples of ``cs``."""
    start = time.perf_counter()
    ball = inscribed_ball(cs)
    if not np.isfinite(ball.radius):
        raise RuntimeError(f"the inscribed-ball LP of the collision set failed ({ball.outcome}), though the "
                           "target is in the set: report this with the model and target")
    directions, extremes, widths = extents(cs, n_directions=config.n_directions, seed=config.seed)
    if cs.free_dim and ball.radius <= RADIUS_TOL and len(widths) and widths.max() <= WIDTH_TOL:
        # A set of dimension ≥ 1 has a positive width along a random direction of its
        # subspace with probability 1: zero along every one drawn, it is one point.
        dim, how, flat = 0, "widths", None
    else:
        dim, how, flat = hull_dimension(cs, ball)
    walk, centre = cs, ball.center
    if flat is not None:
        # Chains move within the hull: the subspace cut down by the rows pinned to equality.
        a_all, _ = cs.all_rows()
        _, s_t, vt_t = torch.linalg.svd(torch.from_numpy(_mm(a_all[flat.pinned], cs.basis)), full_matrices=True)
        rank = int((s_t > s_t.max() * max(len(s_t), cs.free_dim) * np.finfo(np.float64).eps).sum())
        walk, centre = dataclasses.replace(cs, basis=_mm(cs.basis, vt_t.numpy()[rank:].T)), flat.center
    # Chains start spread over C (the centre, and halfway from it to each extreme point,
    # inside C by convexity) rather than all at the centre: R̂ then compares chains that
    # began far apart, which is what it is for. On the MNIST MLP's relu1 the set is so
    # thin near most box faces that chains from one point stay within 1 of it for
    # thousands of steps, while its widths are several units.
    starts = np.vstack([centre[None], centre + 0.5 * (extremes - centre)])
    samples, record = hit_and_run(walk, starts, config=config)
    if dim == 0:  # every chain sits on the one point: nothing to mix
        record = {**record, "rhat": float("nan"), "drift": 0.0}
    return SetGeometry(
        dim=dim, dim_method=how, radius=ball.radius, center=ball.center, samples=samples,
        directions=directions, extremes=extremes, widths=widths,
        n_positive=cs.n_positive, rank=cs.rank, free_dim=cs.free_dim, sampler=record,
        lp={"outcome": ball.outcome, "rounds": ball.rounds, "region_rows_used": ball.region_rows_used,
            "region_rows": len(cs.bounds) - cs.n_fixed, "rows": len(cs.bounds)},
        seconds=time.perf_counter() - start,
    )
