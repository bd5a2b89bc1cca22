"""Baselines a colliding polytope is compared with: points made without the collision objective.

- :func:`random_ball`: the authors' own control (paper §3.1): points at the polytope
  vertices' distances from the target, in uniformly random directions. If these
  collide as often as the polytope's points, the polytope says only that the net is
  smooth; if they do not, the polytope is special.
- :func:`null_space_points`: Ozbulak et al., "Exact Feature Collisions in Neural
  Networks" (arXiv 2205.15763): at the first ReLU layer, a move ``δ`` with
  ``W_P δ = 0`` (``W_P``: the first layer's weight rows of the target's positive units)
  keeps every positive pre-activation; clipped to the input box, as they do. Whether
  it also keeps the non-positive units non-positive, and the deeper layers' features,
  is what the experiment measures.
- :func:`invert`: Mahendran and Vedaldi's code inversion ("Understanding Deep Image
  Representations by Inverting Them", CVPR 2015): from an init, minimise
  ``‖φ(x) − φ(t)‖²/‖φ(t)‖² + λ_TV·TV(x)`` over the box: one point whose features
  approach the target's, for comparison with the polytope's vertices.

None changes the caller's model or any global setting: models are deep-copied into
eval mode, randomness comes from explicit seeds (``numpy.random.default_rng``,
``torch.Generator``), and the only process-wide switch touched (TF32 off, in
:func:`invert`) is restored on exit by :func:`collide.precision.full_precision`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from collide.checks import require as _require
from collide.comparisons.baseline_configs import (
    NULL_SPACE_RTOL,
    BallConfig,
    InversionConfig,
    NullSpaceConfig,
    check_box,
    check_count,
)
from collide.copies import cast_copy
from collide.errors import ConfigError, DataError, LayerError
from collide.inputs import one_input, require_in_box
from collide.objective import feature_rel_error, total_variation
from collide.piecewise.linearise import affine_piece
from collide.precision import full_precision
from collide.sites import function_of
from collide.taps import layers, preactivation, site_of

__all__ = [
    "BallConfig", "BaselinePoints", "Inversion", "InversionConfig", "NullSpaceConfig", "invert", "null_space_points",
    "random_ball",
]

# Bisection on the step t stops once the interval is this small relative to its end
# (float64 cannot split it further in any useful way) or after _BISECT_MAX halvings.
_BISECT_RTOL = 4e-16
_BISECT_MAX = 200


def _check_point(x: torch.Tensor, what: str, lower: float, upper: float) -> torch.Tensor:
    """``x`` as float64 on the CPU, refused when not one finite input inside the box."""
    x = one_input(x, what).double()
    require_in_box(x, what, lower, upper, fix="scale it into the box, or set lower/upper")
    return x.clamp(lower, upper)


def _check_distances(distances: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    r = np.asarray(torch.as_tensor(distances, dtype=torch.float64).flatten())
    if r.size == 0 or not np.isfinite(r).all() or (r < 0).any():
        raise ConfigError(f"expected one or more finite distances >= 0, got {r.tolist()}")
    return r


@dataclass(frozen=True)
class BaselinePoints:
    """Points of a baseline with the distances asked for and reached.

    ``reached[k] < wanted[k]`` where the box stopped point k short (the random ball: no
    step in its direction reaches the distance; the null space: clipping shortened the
    move). ``clipped[k]``: some coordinate of point k was clipped to the box.
    ``null_dim``: the dimension of null(W_P) (null-space points only, else None).

    Shapes:
        points: (n, *input) float64; wanted, reached, clipped: (n,)
    """

    points: torch.Tensor
    wanted: np.ndarray
    reached: np.ndarray
    clipped: np.ndarray
    null_dim: int | None = None
    rank: int | None = None


def _directions(rng: np.random.Generator, n: int, basis: np.ndarray | None, d: int) -> np.ndarray:
    """``n`` unit vectors uniform on the sphere of R^d, or of span(basis) (orthonormal
    columns (d, k)): a normalised standard Gaussian. Shapes: returns (n, d)."""
    k = d if basis is None else basis.shape[1]
    z = rng.standard_normal((n, k))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z if basis is None else z @ basis.T


def _reach(t0: np.ndarray, u: np.ndarray, r: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Per row, the step ``t ≥ 0`` with ``‖clip(t0 + t·u) − t0‖ = r``, by bisection.

    Each coordinate's ``|clip(t0ᵢ + t·uᵢ) − t0ᵢ|`` is non-decreasing in t, so the
    distance is too; past the step where every moving coordinate has hit the box it is
    at its largest. A row that cannot reach ``r`` gets that step (the largest distance).

    Shapes: t0 (d,); u (n, d); r (n,); returns (n,)
    """
    room = np.where(u > 0, upper - t0, np.where(u < 0, t0 - lower, np.inf)) / np.abs(np.where(u == 0, 1, u))
    t_full = np.where(np.isfinite(room), room, 0).max(1)  # every moving coordinate clipped from here on

    def dist(t: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.clip(t0 + t[:, None] * u, lower, upper) - t0, axis=1)

    lo, hi = np.zeros(len(u)), np.minimum(r, t_full)  # ‖u‖ = 1: before any clip, distance = t
    short = dist(t_full) <= r
    hi = np.where(short, t_full, hi)
    # dist(hi) < r still where clipping made a step of r fall short: hi = t_full then brackets.
    under = (~short) & (dist(hi) < r)
    hi = np.where(under, t_full, hi)
    todo = ~short
    for _ in range(_BISECT_MAX):
        if not todo.any():
            break
        mid = 0.5 * (lo + hi)
        below = dist(mid) < r
        lo = np.where(todo & below, mid, lo)
        hi = np.where(todo & ~below, mid, hi)
        todo &= (hi - lo) > _BISECT_RTOL * np.maximum(hi, 1e-300)
    return hi


def random_ball(
    target: torch.Tensor,
    distances: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    n: int,
    seed: int,
    lower: float = 0.0,
    upper: float = 1.0,
) -> BaselinePoints:
    """``n`` points at the given distances from ``target``, in uniformly random directions, in the box.

    Point k is at distance ``r_k = distances[k mod V]`` (cycling through the polytope
    vertices' distances) along a direction u uniform on the unit sphere. Its step t
    solves ``‖clip(target + t·u) − target‖ = r_k`` by bisection (the left side is
    non-decreasing in t), so the distance is met despite clipping; where no step in
    that direction reaches ``r_k`` inside the box, the point takes the largest and
    ``reached[k] < wanted[k]`` says so.

    Args:
        target: one input (no batch dimension) inside ``[lower, upper]``.
        distances: the distances to cycle through (V,), L2 in input units.
        n: how many points.
        seed: seeds ``numpy.random.default_rng``.

    Returns:
        :class:`BaselinePoints` with ``reached`` computed from the returned points.

    Shapes:
        target: (*input); distances: (V,); points: (n, *input) float64

    References:
        Li, Zhang, Malik (2019), §3.1: the random-ball control.
    """
    check_count(n)
    check_box(lower, upper)
    t = _check_point(target, "the target", lower, upper)
    wanted = np.resize(_check_distances(distances), n)
    t0 = t.flatten().numpy()
    u = _directions(np.random.default_rng(seed), n, None, t0.size)
    step = _reach(t0, u, wanted, lower, upper)
    flat = np.clip(t0 + step[:, None] * u, lower, upper)
    clipped = (flat != t0 + step[:, None] * u).any(1)
    reached = np.linalg.norm(flat - t0, axis=1)
    return BaselinePoints(points=torch.from_numpy(flat).view(n, *t.shape), wanted=wanted, reached=reached,
                          clipped=clipped)


def first_relu_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The first ReLU call of ``model`` for one input ``example`` (no batch dimension)."""
    sites = layers(model, example)
    if not sites:
        raise LayerError("the model has no ReLU layer")
    return sites[0].name


def null_space_points(
    model: nn.Module,
    layer: str,
    target: torch.Tensor,
    *,
    distances: Sequence[float] | np.ndarray | torch.Tensor,
    n: int,
    seed: int,
    lower: float = 0.0,
    upper: float = 1.0,
    rank_rtol: float = NULL_SPACE_RTOL,
) -> BaselinePoints:
    """Ozbulak et al.'s construction: moves in null(W_P), clipped to the box.

    ``W_P`` holds the rows of the first layer's Jacobian (its weights, in float64) for
    the units where the target's pre-activation is positive; ``N`` is an orthonormal
    basis of its null space from the SVD (singular values at most ``rank_rtol`` x the
    largest count as zero). Point k is ``clip(target + r_k·u_k)`` with u_k uniform on
    the unit sphere of span(N) and ``r_k = distances[k mod V]``. Unclipped, its positive
    pre-activations are exactly the target's (up to rounding); clipped, they move, and
    ``reached`` is its distance after clipping.

    Args:
        model: not changed (:func:`collide.piecewise.linearise.affine_piece` works on a copy).
        layer: the model's first ReLU layer (deeper ones are not affine in the input).
        rank_rtol: the SVD's relative cut-off.

    Raises:
        LayerError: ``layer`` is not the first ReLU, or a piecewise call (max pooling,
            a leaky ReLU) comes before it.

    Shapes:
        target: (*input); points: (n, *input) float64

    References:
        Ozbulak et al. (2022), arXiv 2205.15763, §3.
    """
    check_count(n)
    check_box(lower, upper)
    _require(0 < rank_rtol < 1, f"expected 0 < rank_rtol < 1, got {rank_rtol}")
    t = _check_point(target, "the target", lower, upper)
    wanted = np.resize(_check_distances(distances), n)
    net = cast_copy(model, torch.float32).eval()
    example = t.float()
    site = site_of(net, layer, example.unsqueeze(0))
    first = first_relu_layer(net, example)
    if site.name != first:
        raise LayerError(f"the null-space construction needs the first ReLU layer, {first!r}: {layer!r} is deeper, "
                         f"where the features are not affine in the input; pass layer={first!r}")
    piece = affine_piece(net, site, t.float())
    if len(piece.region_bound):
        raise LayerError(f"layer {layer!r} is the first ReLU, but piecewise calls before it (max pooling, leaky "
                         "ReLU, hardtanh) make it affine only piece by piece: the null-space construction needs "
                         "a layer that is affine in the input")
    t0 = t.flatten().numpy()
    pre = piece.jac @ t0 + piece.offset
    w_p = piece.jac[pre > 0]
    d = t0.size
    if len(w_p):
        _, s, vt = np.linalg.svd(w_p, full_matrices=True)
        rank = int((s > rank_rtol * s[0]).sum())
    else:
        vt, rank = np.eye(d), 0
    basis = vt[rank:].T  # (d, d - rank), orthonormal
    if basis.shape[1] == 0:
        raise DataError(f"the target's {len(w_p)} positive units at {layer!r} pin down all {d} input "
                        "coordinates: null(W_P) is {0}, there is nothing to move along")
    moved = t0 + wanted[:, None] * _directions(np.random.default_rng(seed), n, basis, d)
    flat = np.clip(moved, lower, upper)
    return BaselinePoints(points=torch.from_numpy(flat).view(n, *t.shape), wanted=wanted,
                          reached=np.linalg.norm(flat - t0, axis=1), clipped=(flat != moved).any(1),
                          null_dim=basis.shape[1], rank=rank)


@dataclass(frozen=True)
class Inversion:
    """One inverted point (Mahendran and Vedaldi).

    ``rel_error``/``init_rel_error``: the float64 relative feature error (the project's
    :func:`collide.objective.feature_rel_error`) of the point and of the init;
    ``history``: the loss at each step (``len(history) == steps``).

    Shapes:
        point: (*input) float32 on the CPU; history: (steps,) float64
    """

    point: torch.Tensor
    rel_error: float
    init_rel_error: float
    distance_to_init: float
    distance_to_target: float
    history: np.ndarray
    seconds: float


def _smoothness(x: torch.Tensor) -> torch.Tensor:
    """TV of a batch of images (B, [C,] H, W); (B,)"""
    return total_variation(x if x.ndim >= 4 else x.unsqueeze(1))


def invert(
    model: nn.Module,
    layer: str,
    target: torch.Tensor,
    init: torch.Tensor,
    *,
    config: InversionConfig,
    device: str = "cpu",
) -> Inversion:
    """The input near ``init`` whose features at ``layer`` match the target's.

    Minimises ``‖φ(x) − φ(t)‖²/‖φ(t)‖² + λ_TV·TV(x)`` with ``φ = relu(pre-activation at
    layer)`` by Adam from ``init`` for ``config.steps`` steps, clamping x to the box
    after each step. Float32 on ``device`` with TF32 off; the reported errors are float64.

    Raises:
        DataError: target or init not finite, outside the box, or of different shapes.
        ConfigError: ``tv_weight > 0`` for inputs without two spatial dimensions.

    Shapes:
        target, init: (*input); (C, H, W) or (H, W) when ``tv_weight > 0``

    References:
        Mahendran and Vedaldi (2015), "Understanding Deep Image Representations by
        Inverting Them", eq. (1)-(3) (L2 loss, TV prior with β = 1).
    """
    lower, upper = config.lower, config.upper
    t = _check_point(target, "the target", lower, upper)
    x0 = _check_point(init, "the init", lower, upper)
    if x0.shape != t.shape:
        raise DataError(f"init has shape {tuple(x0.shape)}, the target {tuple(t.shape)}: they must match")
    if config.tv_weight > 0 and t.ndim < 2:
        raise ConfigError(f"a TV prior needs image inputs (C, H, W) or (H, W), got shape {tuple(t.shape)}: "
                          "set tv_weight=0")
    start = time.perf_counter()
    net = cast_copy(model, torch.float32, device=device).eval().requires_grad_(False)
    site = site_of(net, layer, t.float().unsqueeze(0))
    x = x0.float().unsqueeze(0)
    if config.init_noise > 0:
        gen = torch.Generator().manual_seed(config.seed)
        x = x + config.init_noise * (2 * torch.rand(x.shape, generator=gen) - 1)
    x = x.clamp(lower, upper).to(device).requires_grad_(True)
    decay = (config.lr_end / config.lr) ** (1 / max(config.steps - 1, 1))
    history = torch.empty(config.steps, dtype=torch.float64, device=device)
    with full_precision():
        with torch.no_grad():
            t_feat = preactivation(net, t.float().unsqueeze(0).to(device), site).clamp_min(0)
        scale = t_feat.pow(2).sum().clamp_min(1e-24)
        opt = torch.optim.Adam([x], lr=config.lr)
        for step in range(config.steps):
            for group in opt.param_groups:
                group["lr"] = config.lr * decay**step
            opt.zero_grad(set_to_none=True)
            loss = (preactivation(net, x, site).clamp_min(0) - t_feat).pow(2).sum() / scale
            if config.tv_weight > 0:
                loss = loss + config.tv_weight * _smoothness(x).sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lower, upper)
                history[step] = loss.detach()
    point = x.detach().to("cpu", torch.float32)[0]
    with torch.no_grad():
        net64 = cast_copy(model, device="cpu").eval()
        t_pre = preactivation(net64, t.unsqueeze(0), site)
        errors = feature_rel_error(preactivation(net64, torch.stack([point.double(), x0]), site), t_pre,
                                   act=function_of(site))
    return Inversion(
        point=point, rel_error=float(errors[0]), init_rel_error=float(errors[1]),
        distance_to_init=float((point.double() - x0).norm()), distance_to_target=float((point.double() - t).norm()),
        history=history.cpu().numpy(), seconds=time.perf_counter() - start,
    )
