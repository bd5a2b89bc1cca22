"""The exact vertex solver: linear programming where the layer is affine in the input.

Up to the first ReLU, a ReLU net's pre-activation is affine in its input. Deeper, it is
affine within the target's *activation region*: the set of inputs that give every
earlier ReLU the target's sign pattern and every earlier max-pooling window the target's
winner. Within that region a colliding input is a point of a convex polytope (paper,
Proposition 1), and a vertex is the solution of

    minimise   ỹᵢ(x) + λ‖x − init‖₁
    subject to ỹⱼ(x) = ỹᵗⱼ  for the target's positive units j,
               ỹⱼ(x) ≤ 0    for its non-positive units,
               earlier ReLUs keep the target's signs,
               earlier max-pooling windows keep the target's winners,
               lower ≤ x ≤ upper,

which stays linear with the usual split of the L1 term (solved by
:mod:`collide.solvers.lp`: HiGHS, with the region rows added only where a solution
violates them; the vertices' LPs run side by side on ``ExactConfig.threads`` threads).
The affine map is read off as
the Jacobian at the target in float64, in forward mode when the input has fewer
coordinates than the values it must cover (every earlier pre-activation and pool input),
in reverse mode otherwise.

Which modules need region rows:

- ``nn.ReLU``: one sign row per unit.
- ``nn.MaxPool1d/2d/3d``: max pooling switches linear pieces without a ReLU to show it.
  For each window with winner a* at the target and each other entry a, the row
  ``ỹ_a(x) ≤ ỹ_a*(x)`` on the pool's input. Fixing the winner is correct wherever the
  pool sits, before or after its ReLU; after a ReLU, rows between inactive entries are
  identically ``0 ≤ 0`` and are dropped.
- Nothing else that is affine: convolutions, linear layers, average pooling, batch norm
  in eval mode, dropout in eval mode, flattening and residual additions.

Ties. A target can sit on the boundary of several linear pieces: a max-pooling window
whose entries are equal (blank background gives whole windows of one bias value) or a
ReLU unit at exactly 0. Autograd then picks one piece, and its tied rows can confine the
LP where an adjacent piece, whose closure also holds the target, would let the unit go
lower. Where the target's piece has tied rows, each vertex therefore also solves

1. the same LP without the tied rows; its solution ``x₁`` only gives a direction
   ``x₁ − x0``, which breaks each tie one way (it may leave every piece it touches);
2. the LP on the piece that direction enters: re-linearised a tiny step from the target
   along it, with the target's own pre-activation as the right-hand sides, and kept only
   if the target lies in its closure;

and keeps whichever of the two pieces pushes its unit lower. Both LPs stay in one linear
piece, so both answers are exact; :attr:`ExactResult.pieces` says which was kept. Without
ties (a first layer, an MLP off its ReLU kinks) nothing changes.

Every ReLU call counts, module or functional (``F.relu``, ``x.relu_()``), found the way
every layer is (:mod:`collide.sites`); LeakyReLU/PReLU calls add sign rows like a ReLU's
and Hardtanh/ReLU6 calls the rows of their piece. Calls that are not piecewise linear
before the layer (smooth activations, softmax, normalisation by the input's own
statistics, adaptive max pooling) are refused before any work, and so is an LP larger
than ``ExactConfig.max_entries``. Piecewise operations no call reveals (``clamp``,
``maximum``, ``abs``) are not modelled: every solution is therefore checked with a real
float64 forward pass, and one that left the target's piece is reported as ``left_region``.
"""

from __future__ import annotations

import copy
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collide.config import ExactConfig
from collide.errors import ConfigError, DataError, LayerError
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.sites import ADAPTIVE_MAX_POOL, HARDTANH, LEAKY, MAX_POOL, NONLINEAR, RELU, SMOOTH, Event, Site, eval_mode
from collide.solvers.gradient import check_inputs
from collide.solvers.lp import FAILED, INFEASIBLE, OPTIMAL, UNBOUNDED, LinearRows, LpProblem, LpSolution, solve_lp
from collide.taps import capture, region_events, site_of

LEFT_REGION = "left_region"
__all__ = ["FAILED", "INFEASIBLE", "LEFT_REGION", "OPTIMAL", "UNBOUNDED", "solve_exact"]
JACOBIAN_MODES = ("auto", "forward", "reverse")
# Which piece a vertex was solved on: the one autograd picked at the target, or the
# adjacent one its tie-breaking LP preferred.
PIECE_TARGET, PIECE_TIE_BROKEN = "target", "tie-broken"

_MAX_POOLS: dict[int, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d,
}
# Calls before the layer that no LP row models, and why.
_UNMODELLED = {
    SMOOTH: "a smooth activation is not piecewise linear",
    NONLINEAR: "it divides by or exponentiates the input's own values (softmax, normalisation by the input's "
               "statistics)",
    ADAPTIVE_MAX_POOL: "adaptive max pooling's windows are not modelled by collide's LP",
}
# float64 numbers one Jacobian chunk may hold across its captured tensors (2 GiB).
_JACOBIAN_BUDGET = 2**28
# A region row is tied at the target when its slack there is within this of 0, relative
# to the terms the slack is computed from (_slack_scale): far above float64 rounding
# (~1e-16 per term), far below the gaps between values that merely happen to be close.
_TIE_TOL = 1e-9
# The re-linearisation point moves no input coordinate by more than this: enough for
# every tie the direction breaks at first order to show in a float64 forward pass (by
# about 1e-6 x its rate, against rounding near 1e-16), and small against the slack of
# untied rows. Where the piece found does not contain the target, the step is divided
# by _TIE_SHRINK, at most _TIE_TRIES times in all.
_TIE_STEP = 1e-6
_TIE_SHRINK = 16
_TIE_TRIES = 4
# torch.func's forward-AD levels are numbered per process, not per thread: two jvp/vmap
# transforms running at once from threads fail ("forward AD level with an invalid
# index"). Jacobians therefore take turns; the vertices' LPs still run side by side.
_TRANSFORMS = threading.Lock()


@dataclass(frozen=True)
class AffinePiece:
    """The layer's pre-activation as ``J x + c`` on the target's activation region.

    The region is ``region_jac @ x <= region_bound``: the sign rows of every earlier
    ReLU, then the winner rows of every earlier max pool, in forward order, without the
    rows that hold for every x.

    Shapes:
        jac: (D, d); offset: (D,); region_jac: (R, d); region_bound: (R,)
    """

    jac: np.ndarray
    offset: np.ndarray
    region_jac: np.ndarray
    region_bound: np.ndarray
    n_relu_rows: int
    n_pool_rows: int


@dataclass(frozen=True)
class ExactResult:
    """Vertices from :func:`solve_exact`, with the polytope's dimension facts.

    ``vertices[k]`` is NaN where ``outcomes[k]`` is not ``optimal``. ``rank_positive``
    is the rank of J⁺, the rows of the layer's Jacobian (at the target, in float64) for
    the target's positive units. ``pieces[k]`` says which linear piece vertex k was
    solved on: ``"target"`` (the one autograd picked at the target) or ``"tie-broken"``
    (an adjacent one, where the target sits on a tie; see :mod:`collide.solvers.exact`).
    ``lp_work[k]``: what vertex k cost: LPs solved, their rounds of added rows, the most
    region rows one of them held, and the region rows there were.

    Shapes:
        vertices: (V, *input) float32; rel_error, violation: (V,)
    """

    vertices: torch.Tensor
    outcomes: tuple[str, ...]
    rel_error: torch.Tensor
    violation: torch.Tensor
    input_dim: int
    n_positive: int
    rank_positive: int
    seconds: float
    pieces: tuple[str, ...] = ()
    lp_work: tuple[dict[str, int], ...] = ()

    @property
    def dim_upper_bound(self) -> int:
        """d − rank(J⁺): an upper bound on the dimension of the collisions the LP searches.

        It is the dimension of the affine subspace ``{x : J⁺x + c⁺ = ỹᵗ⁺}`` on which the
        target's affine piece keeps every positive unit at the target's value. The
        collision set the LP searches is that subspace cut by the non-positive units'
        half-spaces, the box ``lower ≤ x ≤ upper`` and, past the first ReLU, the region
        rows (earlier ReLU signs and max-pool winners), so its dimension is at most this,
        with equality when some point of the subspace meets every one of those
        inequalities strictly (for instance a target strictly inside the box, its region
        and its non-positive half-spaces). At the first layer the subspace is exactly the
        set of inputs with the target's positive pre-activations; deeper it is only so
        on the target's region, and collisions in other regions are not counted.

        Not the paper's figure: Proposition 1's ``d − N⁺`` is a lower bound on the
        subspace's dimension, with ``d`` the previous layer's width; here ``d`` is the
        input's dimension and the rank is ``np.linalg.matrix_rank`` of J⁺ in float64.
        """
        return self.input_dim - self.rank_positive


def _region_events(net: nn.Module, x: torch.Tensor, site: Site) -> list[Event]:
    """The calls before ``site`` that shape the linear piece, then the site's own
    (:func:`collide.taps.region_events`); a call the LP cannot model is refused."""
    events = region_events(net, x, site)
    for e in events[:-1]:
        if e.kind in _UNMODELLED:
            raise LayerError(
                f"the exact solver cannot model {e.base if e.call == 0 else f'{e.base}#{e.call}'} ({e.op}) before "
                f"layer {site.name!r}: "
                f"{_UNMODELLED[e.kind]}, so the layer is not piecewise linear in the input there (or not with "
                "pieces the LP knows); use method='gradient', or a layer before it")
    return events


def _window_pairs(params: dict[str, Any], value: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (entry, winner) pair of a max pool's windows at ``value``, entry ≠ winner.

    Windows follow the pool's own kernel, stride, padding, dilation and ceil mode
    (``params``, from the call); the winner is the index ``return_indices`` gives.
    Indices are into ``value.flatten()``.

    Shapes:
        value: (1, C, *spatial), the pool's input for one example; returns (P,), (P,)
    """
    nd = params["nd"]
    pool_fn = _MAX_POOLS[nd]

    def per_dim(v: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    kernel = per_dim(params["kernel_size"])
    stride = per_dim(params["stride"])
    padding, dilation = per_dim(params["padding"]), per_dim(params["dilation"])
    _, winners = pool_fn(
        value, kernel, stride, padding, dilation, ceil_mode=params["ceil_mode"], return_indices=True,
    )
    spatial, out = value.shape[-nd:], winners.shape[-nd:]
    plane = int(np.prod(spatial))
    # Window positions per dimension, broadcast to (*out, *kernel).
    flat = np.zeros((1,) * 2 * nd, dtype=np.int64)
    valid = np.ones((1,) * 2 * nd, dtype=bool)
    for j in range(nd):
        pos = np.arange(out[j])[:, None] * stride[j] - padding[j] + np.arange(kernel[j])[None, :] * dilation[j]
        shape = [1] * 2 * nd
        shape[j], shape[nd + j] = out[j], kernel[j]
        pos = pos.reshape(shape)
        flat = flat * spatial[j] + pos
        valid = valid & (pos >= 0) & (pos < spatial[j])
    n_windows, n_kernel = int(np.prod(out)), int(np.prod(kernel))
    flat = np.broadcast_to(flat, (*out, *kernel)).reshape(n_windows, n_kernel)
    valid = np.broadcast_to(valid, (*out, *kernel)).reshape(n_windows, n_kernel)
    n_planes = winners.numel() // n_windows
    base = (np.arange(n_planes) * plane)[:, None, None]
    entries = base + flat[None]
    won = base[:, :, 0] + winners.reshape(n_planes, n_windows).numpy()
    keep = valid[None] & (entries != won[:, :, None])
    pairs = np.stack([entries[keep], np.broadcast_to(won[:, :, None], entries.shape)[keep]], axis=1)
    # Overlapping windows can share an (entry, winner) pair: one row is enough.
    pairs = np.unique(pairs, axis=0)
    return pairs[:, 0], pairs[:, 1]


def _jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_out: int, mode: str) -> torch.Tensor:
    """The Jacobian of ``fn`` at ``x`` by forward or reverse mode, vectorised in chunks.

    Forward mode pushes one tangent per input coordinate, reverse mode one cotangent per
    output: ``auto`` takes the fewer. Chunks keep the batched intermediates within
    ``_JACOBIAN_BUDGET`` numbers.

    Shapes:
        x: (d,); fn(x): (n_out,); returns (n_out, d)
    """
    if mode not in JACOBIAN_MODES:
        raise ConfigError(f"expected mode in {JACOBIAN_MODES}, got {mode!r}")
    d = x.numel()
    forward = n_out > d if mode == "auto" else mode == "forward"
    n_seeds = d if forward else n_out
    chunk = max(1, min(n_seeds, _JACOBIAN_BUDGET // (n_out + d)))
    if forward:
        def push(t: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(fn, (x,), (t,))[1]
    else:
        _, pull = torch.func.vjp(fn, x)

        def push(t: torch.Tensor) -> torch.Tensor:
            return pull(t)[0]
    parts = []
    with _TRANSFORMS, warnings.catch_warnings():
        # torch's own forward-mode decompositions script a helper and warn that scripting is
        # deprecated, on every solve: nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        for start in range(0, n_seeds, chunk):
            stop = min(start + chunk, n_seeds)
            seeds = torch.zeros(stop - start, n_seeds, dtype=x.dtype)
            seeds[torch.arange(stop - start), torch.arange(start, stop)] = 1
            parts.append(torch.func.vmap(push)(seeds))
    jac = torch.cat(parts)
    return jac.T if forward else jac


def _lp_size(events: list[Event], d: int) -> tuple[int, int]:
    """Rows of the LP before any are dropped (layer units, ReLU and Hardtanh rows, an upper
    bound on the max-pooling pairs) and its dense constraint entries, rows x ``d``."""
    rows = events[-1].value[0].numel()
    for e in events[:-1]:
        n = e.value[0].numel()
        if e.kind == MAX_POOL:
            kernel = e.params["kernel_size"]
            size = int(np.prod(kernel)) if isinstance(kernel, tuple | list) else int(kernel) ** e.params["nd"]
            rows += n * (size - 1)  # at most one row per entry and window it loses in
        else:
            rows += n * (2 if e.kind == HARDTANH else 1)
    return rows, rows * d


def lp_entries(model: nn.Module, layer: str | Site, target: torch.Tensor) -> tuple[int, int]:
    """The exact LP's rows and dense constraint entries at ``layer`` for an input shaped like
    ``target``, from one forward pass (no Jacobian, no LP).

    Shapes:
        target: (*input), one example
    """
    site = site_of(model, layer, target.unsqueeze(0))
    with torch.no_grad(), eval_mode(model):
        events = _region_events(model, target.unsqueeze(0), site)
    return _lp_size(events, target.numel())


def largest_side(model: nn.Module, layer: str, target: torch.Tensor, *, max_entries: int) -> int | None:
    """The largest square image side (same channels) whose LP at ``layer`` fits ``max_entries``,
    found by measuring sides, not by a scaling rule: strides round, so the entries do not
    grow exactly with the fourth power of the side. None when no side down to 1 fits or the
    model takes no smaller image.

    Shapes:
        target: (C, H, W)
    """
    _, entries = lp_entries(model, layer, target)
    # Rows and inputs both grow about with the area: start a little above that estimate.
    side = max(1, int(target.shape[-1] * (max_entries / entries) ** 0.25) + 2)
    while side >= 1:
        try:
            if lp_entries(model, layer, torch.zeros(*target.shape[:-2], side, side))[1] <= max_entries:
                return side
        except (DataError, LayerError):  # too small for the model, or the layer gone
            return None
        side -= 1
    return None


def check_lp_size(model: nn.Module, layer: str | Site, target: torch.Tensor, *, max_entries: int) -> int:
    """Refuse, before any Jacobian or LP, an exact problem larger than ``max_entries``.

    The message names the LP's size and the largest input it would take (measured by
    :func:`largest_side`). Returns the entry count.

    Shapes:
        target: (*input), one example
    """
    site = site_of(model, layer, target.unsqueeze(0))
    rows, entries = lp_entries(model, site, target)
    if entries <= max_entries:
        return entries
    d = target.numel()
    shape = "x".join(str(s) for s in target.shape)
    side = largest_side(model, site.name, target, max_entries=max_entries) if target.ndim == 3 else None
    if side is not None:
        smaller = f"the largest input it takes is {'x'.join(str(s) for s in target.shape[:-2])}x{side}x{side}"
    elif target.ndim == 3:
        smaller = "no smaller square input fits either"
    else:
        smaller = "the input's size is fixed by the model, so only an earlier layer is smaller"
    raise ConfigError(
        f"the exact LP at layer {site.name!r} for a {shape} input is too large: about {rows:,} rows over "
        f"{d:,} input coordinates, {entries:.2e} dense float64 entries ({entries * 8 / 2**30:.1f} GiB), above "
        f"max_entries={max_entries:.2e} (ExactConfig.max_entries); {smaller}. Use a smaller input, an earlier "
        "layer, or method='gradient'")


def affine_piece(model: nn.Module, layer: str | Site, target: torch.Tensor, *, mode: str = "auto") -> AffinePiece:
    """Linearise ``layer``'s pre-activation at ``target`` and collect the region's rows.

    Args:
        model: the classifier (not changed: a float64 eval-mode copy is used).
        layer: the ReLU layer (a name or a resolved site).
        target: one input, no batch dim.
        mode: ``forward`` or ``reverse`` mode for the Jacobian; ``auto`` takes forward
            mode when the input has fewer coordinates than the captured values (every
            earlier pre-activation and pool input plus the layer's).

    Shapes:
        target: (*input), d = target.numel()
    """
    net = copy.deepcopy(model).double().eval().requires_grad_(False)
    x0 = target.double().unsqueeze(0)
    site = site_of(net, layer, x0)

    def all_values(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e.value.flatten() for e in region_events(net, x.view_as(x0), site)])

    with torch.no_grad():
        captures = _region_events(net, x0, site)
    sizes = [e.value.numel() for e in captures]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    flat = x0.flatten()
    jac = _jacobian(all_values, flat, int(starts[-1]), mode).numpy()
    values = torch.cat([e.value.flatten() for e in captures]).numpy()
    offset = values - jac @ flat.numpy()

    relu_rows, pool_rows = [], []
    for k, event in enumerate(captures[:-1]):
        at = slice(starts[k], starts[k + 1])
        if event.kind in (RELU, LEAKY):
            # Each unit keeps its side of 0: −s·(Jx + c) ≤ 0 with s = ±1 (a leaky unit's
            # slope changes at 0 just as a ReLU's does).
            sign = np.where(values[at] > 0, 1.0, -1.0)
            relu_rows.append((-sign[:, None] * jac[at], sign * offset[at]))
        elif event.kind == HARDTANH:
            # Three pieces: below min (y ≤ min), between (min ≤ y ≤ max), above (y ≥ max).
            lo, hi = event.params["min_val"], event.params["max_val"]
            v, j, c = values[at], jac[at], offset[at]
            upper = v < hi  # y ≤ hi on the lower two pieces, y ≤ lo on the lowest
            cap = np.where(v <= lo, lo, hi)
            relu_rows.append((j[upper], cap[upper] - c[upper]))
            lower = v > lo  # y ≥ lo on the upper two pieces, y ≥ hi on the highest
            floor = np.where(v >= hi, hi, lo)
            relu_rows.append((-j[lower], c[lower] - floor[lower]))
        else:
            entry, winner = _window_pairs(event.params, event.value)
            entry, winner = entry + starts[k], winner + starts[k]
            pool_rows.append((jac[entry] - jac[winner], offset[winner] - offset[entry]))

    def stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        a = np.concatenate([r[0] for r in rows]) if rows else np.zeros((0, flat.numel()))
        b = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
        needed = np.any(a != 0, axis=1) | (b < 0)
        return a[needed], b[needed]

    relu_a, relu_b = stack(relu_rows)
    pool_a, pool_b = stack(pool_rows)
    return AffinePiece(
        jac=jac[starts[-2]:],
        offset=offset[starts[-2]:],
        region_jac=np.concatenate([relu_a, pool_a]),
        region_bound=np.concatenate([relu_b, pool_b]),
        n_relu_rows=len(relu_b),
        n_pool_rows=len(pool_b),
    )


def _slack_scale(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row of ``a x ≤ b``, the size of the terms its slack at ``x`` is computed from.

    Shapes:
        a: (R, d); b: (R,); x: (d,); returns (R,)
    """
    return 1 + np.abs(b) + np.abs(a) @ np.abs(x)


def _tied_rows(piece: AffinePiece, x: np.ndarray) -> np.ndarray:
    """The region rows that hold with equality at ``x``: ties at the target.

    A pool row is tied where its entry equals the window's winner, a ReLU row where the
    unit's pre-activation is 0. Such a target sits on the boundary of several linear
    pieces, and the one autograd picked can be the wrong one for a vertex's LP.

    Shapes:
        x: (d,); returns (R,) bool
    """
    slack = piece.region_bound - piece.region_jac @ x
    return slack <= _TIE_TOL * _slack_scale(piece.region_jac, piece.region_bound, x)


def _contains(piece: AffinePiece, x: np.ndarray, t_pre: np.ndarray) -> bool:
    """Whether ``x`` lies in the closure of ``piece``, with its pre-activation ``t_pre`` there."""
    over = piece.region_jac @ x - piece.region_bound
    if (over > _TIE_TOL * _slack_scale(piece.region_jac, piece.region_bound, x)).any():
        return False
    err = np.abs(piece.jac @ x + piece.offset - t_pre)
    return bool((err <= _TIE_TOL * _slack_scale(piece.jac, piece.offset, x)).all())


def _rows_on(piece: AffinePiece, t_pre: np.ndarray, pos: np.ndarray, keep: np.ndarray | None = None) -> LinearRows:
    """The LP's rows on one piece: positive units at the target's values ``t_pre``, the
    others ≤ 0, then the region rows ``keep`` (all by default), which may be added lazily."""
    region_jac, region_bound = piece.region_jac, piece.region_bound
    if keep is not None:
        region_jac, region_bound = region_jac[keep], region_bound[keep]
    return LinearRows(
        a_ub=np.vstack([piece.jac[~pos], region_jac]),
        b_ub=np.concatenate([-piece.offset[~pos], region_bound]),
        a_eq=piece.jac[pos],
        b_eq=t_pre[pos] - piece.offset[pos],
        lazy=len(region_bound),
    )


def _solve(problem: LpProblem, config: ExactConfig) -> LpSolution:
    return solve_lp(problem, lower=config.lower, upper=config.upper, tol=config.feasibility_tol,
                    solver=config.lp_solver)


def _tie_broken_piece(
    model: nn.Module, layer: Site, target: torch.Tensor, piece: AffinePiece, tied: np.ndarray,
    direction: np.ndarray, t_pre: np.ndarray,
) -> AffinePiece | None:
    """The linear piece next to the target that ``direction`` enters, or None.

    Re-linearises at ``x0 + step·direction``, where every tie that ``direction`` breaks
    at first order is broken its way. The step moves no coordinate by more than
    ``_TIE_STEP`` and stays below half the distance at which ``direction`` would cross an
    untied row of the target's piece; the piece found must still hold the target in its
    closure (with the target's pre-activation there), else the step shrinks.

    Shapes:
        target: (*input); tied: (R,); direction: (d,); t_pre: (D,)
    """
    x0 = target.double().flatten().numpy()
    step = _TIE_STEP / np.abs(direction).max()
    rate = piece.region_jac[~tied] @ direction
    slack = piece.region_bound[~tied] - piece.region_jac[~tied] @ x0
    crossing = slack[rate > 0] / rate[rate > 0]
    if len(crossing):
        step = min(step, 0.5 * float(crossing.min()))
    for _ in range(_TIE_TRIES):
        moved = torch.from_numpy(x0 + step * direction).view(target.shape)
        adjacent = affine_piece(model, layer, moved)
        if _contains(adjacent, x0, t_pre):
            return adjacent
        step /= _TIE_SHRINK
    return None


def _same_piece(a: AffinePiece, b: AffinePiece) -> bool:
    """Whether two linearisations picked the same piece: within a piece the Jacobians are
    computed by the same operations on the same weights, so they agree bit for bit."""
    return (a.region_jac.shape == b.region_jac.shape and np.array_equal(a.region_jac, b.region_jac)
            and np.array_equal(a.jac, b.jac))


def solve_exact(
    model: nn.Module,
    layer: str | Site,
    target: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: ExactConfig,
    break_ties: bool = True,
) -> ExactResult:
    """Find one exact vertex per unit in ``units`` by linear programming (HiGHS).

    Where the target's piece has ties (region rows that hold with equality at the
    target), each vertex also tries the adjacent piece its LP prefers (see the module
    docstring) and keeps whichever piece pushes its unit lower.

    Args:
        model: the classifier (not changed).
        layer: the ReLU layer where features must collide.
        target: the target input; init: where the L1 proximity term pulls.
        units: the non-positive unit each vertex minimises.
        config: see :class:`ExactConfig`.
        break_ties: False solves on the target's own piece only (for comparison).

    Returns:
        An :class:`ExactResult`; each optimal vertex is checked by a float64 forward
        pass and reported ``left_region`` where the layer left the piece it was solved on.

    Shapes:
        target, init: (*input), one example; units: (V,)

    References:
        Paper, §2 and Proposition 1 (the polytope of colliding inputs).
    """
    if target.shape != init.shape:
        raise DataError(f"target {tuple(target.shape)} and init {tuple(init.shape)} differ in shape")
    check_inputs(target, "the target", config.lower, config.upper)
    check_inputs(init, "the init", config.lower, config.upper)
    start = time.perf_counter()
    site = site_of(model, layer, target.unsqueeze(0))
    check_lp_size(model, site, target, max_entries=config.max_entries)
    piece = affine_piece(model, site, target)
    x0 = target.double().flatten().numpy()
    t_pre = piece.jac @ x0 + piece.offset
    pos = t_pre > 0
    d = piece.jac.shape[1]
    rank = int(np.linalg.matrix_rank(piece.jac[pos])) if pos.any() else 0
    x_init = init.double().flatten().numpy()
    tied = _tied_rows(piece, x0) if break_ties else np.zeros(len(piece.region_bound), dtype=bool)
    unit_list = units.tolist()
    for unit in unit_list:
        if pos[unit]:
            raise DataError(f"unit {unit} is positive for the target: push a non-positive unit")
    # λ from the target's piece throughout: the same trade-off on either piece.
    lams = [config.proximity * float(np.abs(piece.jac[unit]).mean()) for unit in unit_list]
    rows = _rows_on(piece, t_pre, pos)
    loose_rows = _rows_on(piece, t_pre, pos, ~tied)

    def candidates_of(k: int) -> tuple[list[tuple[AffinePiece, np.ndarray, str]], list[LpSolution]]:
        """Vertex k's candidates: (piece, solution, outcome), the target's piece first;
        and every LP solved for it."""
        unit, lam = unit_list[k], lams[k]
        first = _solve(LpProblem(rows, piece.jac[unit], lam, x_init), config)
        tried, solved = [(piece, first.x, first.outcome)], [first]
        if tied.any() and first.outcome == OPTIMAL:
            # Without the tied rows the LP may leave the piece: it only says which way
            # to break the ties. Its objective keeps the target's Jacobian.
            loose = _solve(LpProblem(loose_rows, piece.jac[unit], lam, x_init), config)
            solved.append(loose)
            direction = loose.x - x0
            if loose.outcome == OPTIMAL and np.abs(direction).max() > 0:
                adjacent = _tie_broken_piece(model, site, target, piece, tied, direction, t_pre)
                if adjacent is not None and not _same_piece(adjacent, piece):
                    second = _solve(LpProblem(_rows_on(adjacent, t_pre, pos), adjacent.jac[unit], lam, x_init),
                                    config)
                    solved.append(second)
                    tried.append((adjacent, second.x, second.outcome))
        return tried, solved

    # Vertices are independent: their LPs run side by side (HiGHS releases the GIL), and
    # so do their forward passes, each on its own copy of the model; only the Jacobians
    # of re-linearisation take turns (_TRANSFORMS).
    threads = min(config.threads or os.cpu_count() or 1, len(unit_list))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            per_vertex = list(pool.map(candidates_of, range(len(unit_list))))
    else:
        per_vertex = [candidates_of(k) for k in range(len(unit_list))]
    candidates = [c for c, _ in per_vertex]
    lp_work = tuple({"lps": len(solved), "rounds": sum(sol.rounds for sol in solved),
                     "region_rows": max(sol.region_rows_used for sol in solved),
                     "region_rows_total": len(piece.region_bound)} for _, solved in per_vertex)

    # Every candidate through a real float64 forward pass: it must match its own piece.
    flat = [c for tried in candidates for c in tried]
    points = torch.from_numpy(np.stack([x for _, x, _ in flat]))
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        pre_all = capture(net, torch.nan_to_num(points).view(len(flat), *target.shape), site)
    tgt = torch.from_numpy(t_pre).unsqueeze(0)
    scale = config.region_tol * (1 + tgt.abs().amax())
    checked = []
    for (p, x, outcome), pre in zip(flat, pre_all, strict=True):
        lin = torch.from_numpy(np.nan_to_num(x) @ p.jac.T + p.offset)
        off_piece = bool((pre - lin).abs().amax() > scale)
        checked.append(LEFT_REGION if (outcome == OPTIMAL and off_piece) else outcome)

    # Per vertex, the candidate that stayed on its piece with the lowest pushed unit;
    # the target's piece's answer where none did.
    vertices, outcomes, pieces, pre_rows = [], [], [], []
    at = 0
    for unit, tried in zip(units.tolist(), candidates, strict=True):
        here = range(at, at + len(tried))
        good = [i for i in here if checked[i] == OPTIMAL]
        best = min(good, key=lambda i: float(pre_all[i, unit])) if good else at
        vertices.append(flat[best][1])
        outcomes.append(checked[best])
        pieces.append(PIECE_TARGET if best == at else PIECE_TIE_BROKEN)
        pre_rows.append(pre_all[best])
        at += len(tried)

    verts = torch.from_numpy(np.stack(vertices)).view(len(vertices), *target.shape)
    pre = torch.stack(pre_rows)
    rel = feature_rel_error(pre, tgt)
    viol = max_nonpositive_violation(pre, tgt)
    ok = torch.tensor([o == OPTIMAL for o in outcomes])
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return ExactResult(
        vertices=verts.float(),
        outcomes=tuple(outcomes),
        rel_error=torch.where(ok, rel, nan).float(),
        violation=torch.where(ok, viol, nan).float(),
        input_dim=d,
        n_positive=int(pos.sum()),
        rank_positive=rank,
        seconds=time.perf_counter() - start,
        pieces=tuple(pieces),
        lp_work=lp_work,
    )
