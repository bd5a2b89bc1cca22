"""The approximation frontier: the input closest to another image whose features are
within ε of the target's, for a list of feature-error budgets ε.

The paper's row-2 vertices (§3.1), started from another digit, are "clearly not 7s"
yet classified as 7: collisions that hold only approximately. This module asks how far
from the other digit an input must move for its first-layer features to come within
relative error ε of the target's, and returns that point for each ε.

Formulation (first ReLU layer only, where ỹ(x) = W x + b is affine in the input; the
same problem deeper is not convex). With c = ỹ(t) the target's pre-activation, P its
positive units and N the others, the feature error is
``‖relu(ỹ(x)) − relu(c)‖ / ‖relu(c)‖`` (:func:`collide.objective.feature_rel_error`).
Its numerator is not convex in x, but

    E(x)² = Σ_{j∈P} (ỹⱼ(x) − cⱼ)² + Σ_{j∈N} relu(ỹⱼ(x))²

is, and E(x) ≥ ‖relu(ỹ(x)) − relu(c)‖ (a positive unit that drops below 0 costs
(ỹⱼ − cⱼ)² ≥ cⱼ² in E, cⱼ² in the true error; equal wherever P's units stay ≥ 0). So

    minimise ‖x − other‖₂  subject to  E(x) ≤ ε‖relu(c)‖,  lower ≤ x ≤ upper

is convex, and its solution truly has feature error ≤ ε (each point is certified by a
float64 forward pass). Its feasible set is a convex *inner* approximation of the true
ε-sublevel set, so a point of the true set may lie closer still; the one returned is
the closest point of the inner set.

How it is solved. For a penalty μ > 0 the penalised problem

    x_μ = argmin_{lower ≤ x ≤ upper} ‖x − other‖² + μ E(x)²

has a unique solution, and by Lagrangian duality x_μ is exactly the closest point with
E ≤ E(x_μ); E(x_μ) falls continuously as μ grows. So for each ε a root-finder on log μ
(secant in log E against log μ, safeguarded by bisection) looks for E(x_μ) in
``[(1 − rel_tol) εR, εR]`` with R = ‖relu(c)‖; the point kept always lies on the
feasible side (E ≤ εR). Every μ solved is kept and shared by all ε: they all search
the one monotone curve μ ↦ E(x_μ).

Each x_μ is found through the dual of the penalised problem, written with
y_P = W_P x + b_P − c_P and s_N ≥ W_N x + b_N, s_N ≥ 0 (the diagonal-Hessian QP
``‖x − other‖² + μ(‖y‖² + ‖s‖²)``): with multipliers λ (D,), λ_N ≥ 0,

    g(λ) = ‖x(λ) − other‖² + λ·(W x(λ) + b − ĉ) − ‖λ‖²/(4μ),
    x(λ) = clip(other − Wᵀλ/2, lower, upper),   ĉ = c on P, 0 on N,

a smooth concave function of D variables with simple bounds, maximised by scipy's
L-BFGS-B. Why not HiGHS's QP solver on the primal: on the MNIST MLP's relu1 (784
inputs, 256 units) HiGHS's penalised QP and scipy's ``lsq_linear`` on the equivalent
bounded least squares are far slower than the dual, and L-BFGS-B on the primal loses
accuracy as μ grows (its conditioning is about μ‖W‖²); the dual converges for μ from
1e2 to 1e5 with a duality gap below 1e-9 relative. The gap is a
certificate: ``f(x(λ)) − g(λ)`` bounds how far x(λ)'s squared distance is from the
optimum for its own E, and ``g(λ) − μ(εR)²`` is a lower bound on the squared distance
any point with E ≤ εR can have (:attr:`FrontierPoint.distance_lower_bound_inner`): a bound
over the convex inner set only, not over every input whose true feature error is ≤ ε.

ε = 0 is the limit μ → ∞: the closest point of the exact collision set
``{W_P x + b_P = c_P, W_N x + b_N ≤ 0, box}``, an ordinary QP that HiGHS solves exactly.

References:
    Li, Zhang, Malik, "Approximate Feature Collisions in Neural Nets", NeurIPS 2019,
    §2 (the collision objective) and §3.1 (Table 1's second row).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import scipy.optimize
import scipy.sparse as sp
import torch
from torch import nn

from collide.comparisons.frontier_config import FrontierConfig
from collide.copies import cast_copy
from collide.errors import DataError, LayerError
from collide.inputs import require_finite, require_in_box
from collide.objective import feature_rel_error
from collide.piecewise.highs import columnwise_lp, new_highs
from collide.piecewise.linearise import affine_piece
from collide.taps import preactivation, site_of

OPTIMAL, LOOSE, FAILED = "optimal", "loose", "failed"
# The penalty grows or shrinks by at most this factor a step while no bracket holds ε:
# E(x_μ) falls roughly as 1/μ once μ is large, so the extrapolated step is usually
# right, and the cap keeps a bad first guess from overshooting by decades.
_MAX_STEP = 1e3
# Beyond this penalty the dual's curvature (≥ 1/(2μ)) is lost in rounding: the exact QP
# (ε = 0) answers instead, which is feasible for every ε.
_MU_CEILING = 1e12


@dataclass(frozen=True)
class FrontierPoint:
    """The closest point to ``other`` with convex feature-error bound ≤ ``epsilon``.

    ``feature_error`` is the true relative feature error (float64 forward pass through
    the model); ``feature_error_bound`` is E(x)/R ≥ it (see the module docstring), and
    ≤ ``epsilon`` whenever the point is finite. ``mu`` is the penalty whose minimiser
    the point is (``inf`` for the exact QP, 0 when ``other`` itself is within ε).
    ``distance_lower_bound_inner``: no point of the convex inner set {E ≤ εR} lies closer to
    ``other`` than this; a point outside it whose true feature error is ≤ ε may
    (a dual bound; NaN for the exact QP). ``solves`` counts the penalised problems this
    ε started (shared ones included once, where first solved).

    Shapes:
        point: (*input) float64, NaN where ``outcome`` is ``failed``
    """

    point: torch.Tensor
    epsilon: float
    feature_error: float
    feature_error_bound: float
    distance_to_other: float
    distance_to_target: float
    distance_lower_bound_inner: float
    outcome: str
    mu: float
    solves: int
    seconds: float


@dataclass(frozen=True)
class _Problem:
    """The first layer's affine map and the target's split, in float64.

    Shapes:
        w: (D, d); b, c, c_hat: (D,); positive: (D,) bool; other: (d,)
    """

    w: np.ndarray
    b: np.ndarray
    c: np.ndarray
    positive: np.ndarray
    other: np.ndarray
    lower: float
    upper: float

    @property
    def scale(self) -> float:
        """R = ‖relu(c)‖, the denominator of the relative feature error."""
        return float(np.linalg.norm(np.maximum(self.c, 0)))

    @property
    def c_hat(self) -> np.ndarray:
        return np.where(self.positive, self.c, 0.0)

    def residual(self, x: np.ndarray) -> np.ndarray:
        """(ỹ_P − c_P, relu(ỹ_N)): E(x) is its norm."""
        y = self.w @ x + self.b
        return np.where(self.positive, y - self.c, np.maximum(y, 0.0))


@dataclass(frozen=True)
class _Solve:
    mu: float
    x: np.ndarray
    lam: np.ndarray
    e: float  # E(x), absolute
    dual: float  # g(λ)


def _dual(prob: _Problem, lam: np.ndarray, mu: float) -> tuple[float, np.ndarray, np.ndarray]:
    """g(λ), its gradient and x(λ) (module docstring)."""
    x = np.clip(prob.other - prob.w.T @ lam / 2, prob.lower, prob.upper)
    slack = prob.w @ x + prob.b - prob.c_hat
    g = float(((x - prob.other) ** 2).sum() + lam @ slack - lam @ lam / (4 * mu))
    return g, slack - lam / (2 * mu), x


def _solve_penalised(prob: _Problem, mu: float, lam0: np.ndarray, config: FrontierConfig) -> _Solve:
    bounds = [(None, None) if p else (0.0, None) for p in prob.positive]
    scale = 1.0 + float(prob.other @ prob.other)

    def negated(lam: np.ndarray) -> tuple[float, np.ndarray]:
        g, grad, _ = _dual(prob, lam, mu)
        return -g / scale, -grad / scale

    res = scipy.optimize.minimize(
        negated, lam0, jac=True, method="L-BFGS-B", bounds=bounds,
        options={"maxiter": 20_000, "maxfun": 40_000, "ftol": 1e-16, "gtol": config.dual_tol, "maxcor": 30},
    )
    g, _, x = _dual(prob, res.x, mu)
    return _Solve(mu=mu, x=x, lam=res.x, e=float(np.linalg.norm(prob.residual(x))), dual=g)


def _exact_qp(prob: _Problem, config: FrontierConfig) -> np.ndarray | None:
    """The closest point of the exact collision set (ε = 0), or None where HiGHS fails.

    minimise ‖x − other‖² = xᵀx − 2 otherᵀx + const, rows W_P x = c_P − b_P and
    W_N x ≤ −b_N: HiGHS minimises ½xᵀQx + qᵀx, so Q = 2I, q = −2 other.
    """
    w, pos = prob.w, prob.positive
    d = w.shape[1]
    m = sp.csc_matrix(np.vstack([w[pos], w[~pos]]))
    eq = prob.c[pos] - prob.b[pos]
    model = highspy.HighsModel()
    model.lp_ = columnwise_lp(-2 * prob.other, np.full(d, prob.lower), np.full(d, prob.upper),
                              np.concatenate([eq, np.full(int((~pos).sum()), -np.inf)]),
                              np.concatenate([eq, -prob.b[~pos]]), m)
    hess = model.hessian_
    hess.dim_, hess.format_ = d, highspy.HessianFormat.kTriangular
    hess.start_, hess.index_, hess.value_ = np.arange(d + 1), np.arange(d), np.full(d, 2.0)
    h = new_highs()
    h.setOptionValue("threads", 1)
    h.setOptionValue("primal_feasibility_tolerance", config.qp_tol)
    h.setOptionValue("dual_feasibility_tolerance", config.qp_tol)
    h.passModel(model)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return np.clip(np.asarray(h.getSolution().col_value, dtype=np.float64), prob.lower, prob.upper)


def _next_mu(solves: list[_Solve], budget: float, aim: float, e_other: float) -> float:
    """The next penalty to try for the absolute budget ``budget`` (> 0): a secant step in
    (log μ, log E) towards ``aim`` between the tightest bracket, bisection in log μ where
    that step lands near an end, and extrapolation with slope −1 (E ∝ 1/μ) while one
    side is missing.

    Aiming inside the accepted window rather than at its edge ends the regula falsi
    stall: iterates that creep towards the aim from one side enter the window."""
    above = [s for s in solves if s.e > budget]
    below = [s for s in solves if s.e <= budget]
    if not solves:
        # E(x_μ) ≈ E(other) / (1 + μ·κ) with κ of order 1: a first guess.
        return max(e_other / budget, 1.0)
    if not below:
        s = max(above, key=lambda s: s.mu)
        return s.mu * min(_MAX_STEP, max(2.0, 1.5 * s.e / aim))
    if not above:
        s = min(below, key=lambda s: s.mu)
        return s.mu / min(_MAX_STEP, max(2.0, 1.5 * aim / max(s.e, 1e-300)))
    lo = max(above, key=lambda s: s.mu)
    hi = min(below, key=lambda s: s.mu)
    a, b = math.log(lo.mu), math.log(hi.mu)
    if hi.e > 0 and lo.e > hi.e:
        fa, fb, f = math.log(lo.e), math.log(hi.e), math.log(aim)
        guess = a + (f - fa) * (b - a) / (fb - fa)
        if a + 0.01 * (b - a) < guess < b - 0.01 * (b - a):
            return math.exp(guess)
    return math.exp((a + b) / 2)


def _check(x: torch.Tensor, what: str, shape: torch.Size | None, config: FrontierConfig) -> None:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if shape is not None and x.shape != shape:
        raise DataError(f"{what} has shape {tuple(x.shape)}, the target {tuple(shape)}: pass one input of the "
                        "target's shape, without a batch dimension")
    require_finite(x, what, fix="pass a finite image")
    require_in_box(x, what, config.lower, config.upper, fix="scale it, or set config.lower/upper")


def closest_within(
    model: nn.Module, layer: str, target: torch.Tensor, other: torch.Tensor, *, config: FrontierConfig,
) -> list[FrontierPoint]:
    """For each ε of ``config.epsilons``, the input closest to ``other`` whose features at
    ``layer`` (a first ReLU layer) are within ε of ``target``'s.

    Args:
        model: the classifier (not changed: a float64 eval-mode copy is used).
        layer: a ReLU layer with nothing piecewise before it (the first ReLU).
        target: the image whose features are matched, no batch dim.
        other: the image the point must stay close to, no batch dim.
        config: see :class:`FrontierConfig`.

    Returns:
        One :class:`FrontierPoint` per ε, in ``config.epsilons``' order.

    Raises:
        LayerError: ``layer`` has ReLUs or max pools before it (the problem is then not
            convex).
        DataError: ``target`` or ``other`` is not finite, out of the box, or of
            another shape.

    Shapes:
        target, other: (*input); each point: (*input) float64

    References:
        Paper §2 (the collision objective), §3.1 (Table 1, second row).
    """
    _check(target, "target", None, config)
    _check(other, "other", target.shape, config)
    net = cast_copy(model).eval().requires_grad_(False)
    t64 = target.detach().double()
    piece = affine_piece(net, layer, t64)
    if piece.region_jac.shape[0] != 0:
        raise LayerError(
            f"layer {layer!r} has {piece.n_relu_rows} ReLU sign rows and {piece.n_pool_rows} max-pool rows "
            "before it: the approximation frontier is convex only at a first ReLU layer (nothing piecewise "
            "before it); pick that layer"
        )
    site = site_of(net, layer, t64.unsqueeze(0))
    c = piece.jac @ t64.flatten().numpy() + piece.offset
    # _check allowed 1e-6 outside the box; the box the problem has is exact.
    o64 = np.clip(other.detach().double().flatten().numpy(), config.lower, config.upper)
    prob = _Problem(w=piece.jac, b=piece.offset, c=c, positive=c > 0, other=o64, lower=config.lower,
                    upper=config.upper)
    scale = prob.scale
    if scale == 0:
        raise DataError(f"the target has no positive unit at {layer!r}: every relative feature error is "
                        "undefined; pick another target or layer")
    t_pre = preactivation(net, t64.unsqueeze(0), site)[0]

    def certified(x: np.ndarray) -> float:
        pre = preactivation(net, torch.from_numpy(x).view_as(t64).unsqueeze(0), site)
        return float(feature_rel_error(pre, t_pre)[0])

    e_other = float(np.linalg.norm(prob.residual(prob.other)))
    solves: list[_Solve] = []
    exact: dict[str, Any] = {}
    points = []
    for eps in config.epsilons:
        start = time.perf_counter()
        n_before = len(solves)
        budget = eps * scale
        lower_bound = math.nan
        if eps > 0 and e_other <= budget:
            x, mu, outcome, lower_bound = prob.other, 0.0, OPTIMAL, 0.0
        elif eps == 0:
            if "x" not in exact:
                exact["x"] = _exact_qp(prob, config)
            x, mu = exact["x"], math.inf
            outcome = FAILED if x is None else OPTIMAL
        else:
            best = _frontier_solve(prob, budget, e_other, solves, config)
            if best is None:
                # The dual cannot reach the budget in floating point: the exact QP's point
                # meets every ε.
                if "x" not in exact:
                    exact["x"] = _exact_qp(prob, config)
                x, mu = exact["x"], math.inf
                outcome = FAILED if x is None else LOOSE
            else:
                x, mu = best.x, best.mu
                outcome = OPTIMAL if best.e >= (1 - config.rel_tol) * budget else LOOSE
                lower_bound = math.sqrt(max(0.0, max(s.dual - s.mu * budget**2 for s in solves)))
        if x is None:
            point = torch.full_like(t64, math.nan)
            fe = bound = dist_o = dist_t = math.nan
        else:
            point = torch.from_numpy(x.copy()).view_as(t64)
            fe, bound = certified(x), float(np.linalg.norm(prob.residual(x))) / scale
            dist_o = float(np.linalg.norm(x - prob.other))
            dist_t = float(np.linalg.norm(x - t64.flatten().numpy()))
        points.append(FrontierPoint(
            point=point, epsilon=eps, feature_error=fe, feature_error_bound=bound, distance_to_other=dist_o,
            distance_to_target=dist_t, distance_lower_bound_inner=lower_bound, outcome=outcome, mu=mu,
            solves=len(solves) - n_before, seconds=time.perf_counter() - start,
        ))
    return points


def _frontier_solve(prob: _Problem, budget: float, e_other: float, solves: list[_Solve],
                    config: FrontierConfig) -> _Solve | None:
    """The feasible solve (E ≤ budget) with the smallest μ after searching the curve
    μ ↦ E(x_μ) for E within ``rel_tol`` below ``budget``; None if none is feasible.
    ``solves`` (every μ solved so far, for any ε) grows in place."""
    for _ in range(config.max_solves):
        below = [s for s in solves if s.e <= budget]
        if below:
            best = min(below, key=lambda s: s.mu)
            if best.e >= (1 - config.rel_tol) * budget:
                return best
        mu = _next_mu(solves, budget, (1 - config.rel_tol / 2) * budget, e_other)
        if mu > _MU_CEILING or any(s.mu == mu for s in solves):
            break
        # λ = 2μ·residual is nearly constant in μ once μ is large: the nearest μ's λ is
        # a good start.
        near = min(solves, key=lambda s: abs(math.log(s.mu / mu)), default=None)
        lam0 = near.lam if near is not None else np.zeros(len(prob.b))
        solves.append(_solve_penalised(prob, mu, lam0, config))
    below = [s for s in solves if s.e <= budget]
    return min(below, key=lambda s: s.mu) if below else None
