"""Uniform samples of a polytope by a walk in rounded coordinates.

By default the billiard walk (straight runs of random length that reflect off the
facets), else hit-and-run. Chains start spread over the set and run until every
statistic reported from them has rank-normalised split-R̂ and bulk ESS within the
config's bounds (:mod:`collide.piecewise.diagnostics`), or a budget ends. No point is
ever clipped into the set: one outside is a bug, raised.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats
import torch

from collide.config import GeometryConfig
from collide.errors import InternalError
from collide.piecewise.collision_set import mm
from collide.piecewise.diagnostics import diagnose
from collide.piecewise.hull import HullPolytope
from collide.piecewise.rounding import analytic_center, shape_from

# A slack is recomputed from scratch this often, so that rounding does not accumulate.
_REFRESH = 50


# What a chain's slack may fall below 0 by (relative to 1 + max|h|) before it is a bug:
# float64 slack updates drift by ~1e-15 per step between refreshes.
SLACK_TOL = 1e-9


@dataclass
class _Walk:
    """Chains of a walk in the rounded coordinates y of C: ``z = center + shape @ y``.

    Positions are kept as y and each row's slack ``s = h − g z`` is kept exactly, updated
    with the step and recomputed every :data:`_REFRESH` steps. Nothing is clipped: a
    slack below −:data:`SLACK_TOL` after a refresh is a point outside C, raised as the
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
        if worst < -SLACK_TOL * (1 + float(np.abs(self.poly.h).max(initial=0.0))):
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
        self.gs = mm(self.poly.g, self.shape)
        self.gram = mm(self.gs, self.gs.T)
        # The loop multiplies by these transposes at every trajectory's start: made
        # contiguous once here, not copied by every product (a third of the walk's time).
        self.shape_t = np.ascontiguousarray(self.shape.T)
        self.gs_t = np.ascontiguousarray(self.gs.T)
        self.g_t = np.ascontiguousarray(self.poly.g.T)
        self.norm2 = self.gram.diagonal().copy()
        slack = self.poly.h - mm(self.z_now, self.poly.g.T)
        worst = float(slack.min())
        if worst < -SLACK_TOL * (1 + float(np.abs(self.poly.h).max())):
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
                slack[f] = h - mm(self.center + mm(y[f], shape_t), g_t)
                rate[f] = mm(v[f], gs_t)
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
                out[e, done[e]] = self.center + mm(y[e], shape_t)
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
            walk.reshape(shape_from(z[:, length // 2 :].reshape(-1, k).numpy()))
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
