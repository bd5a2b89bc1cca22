"""Rounding a polytope before sampling it: the Dikin ellipsoid at its analytic centre,
then the chains' pooled covariance, shrunk towards a multiple of the identity.

A walk in ~700 dimensions through a set that is thin near the box faces does not mix
from a few start points without rounding (DESIGN.md, "Pitfalls already known").
"""

from __future__ import annotations

import numpy as np
import torch

from collide.piecewise.hull import HullPolytope

# The least shrinkage of a pilot covariance towards a multiple of the identity: pooled draws of
# a few chains number not far above the ~700 dimensions, and a rank-deficient shape
# would leave directions the walk never takes.
_SHRINK = 0.05


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


def shape_from(z: np.ndarray) -> np.ndarray:
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
