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

which stays linear with the usual split of the L1 term. The affine map is read off as
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

Piecewise operations the solver cannot see (functional ``F.relu``, adaptive max pooling,
other activations) are not modelled; every solution is therefore checked with a real
float64 forward pass, and one that left the target's piece is reported as ``left_region``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from collide.config import ExactConfig
from collide.errors import DataError
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.solvers.gradient import check_inputs
from collide.taps import _Stop, relu_layers, resolve_layer

OPTIMAL, INFEASIBLE, UNBOUNDED, LEFT_REGION, FAILED = (
    "optimal", "infeasible", "unbounded", "left_region", "failed",
)
JACOBIAN_MODES = ("auto", "forward", "reverse")
# Which piece a vertex was solved on: the one autograd picked at the target, or the
# adjacent one its tie-breaking LP preferred.
PIECE_TARGET, PIECE_TIE_BROKEN = "target", "tie-broken"

_MAX_POOLS: dict[type[nn.Module], tuple[int, Callable[..., tuple[torch.Tensor, torch.Tensor]]]] = {
    nn.MaxPool1d: (1, F.max_pool1d),
    nn.MaxPool2d: (2, F.max_pool2d),
    nn.MaxPool3d: (3, F.max_pool3d),
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


def _ordered_captures(net: nn.Module, x: torch.Tensor, layer: str) -> list[tuple[nn.Module, torch.Tensor]]:
    """The input of every ReLU and max pool reached before ``layer``, then ``layer``'s own.

    Inputs are cloned (an inplace ReLU overwrites its argument) and keep their shapes;
    the last entry is the layer's pre-activation.
    """
    target_name = resolve_layer(net, layer)
    pools = {n: m for n, m in net.named_modules() if isinstance(m, tuple(_MAX_POOLS))}
    watched = {**relu_layers(net), **pools}
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in watched.items():
        def hook(m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            seen.append((m, args[0].clone()))
            if name == target_name:
                raise _Stop
        handles.append(module.register_forward_pre_hook(hook))
    try:
        net(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def _ordered_preactivations(net: nn.Module, x: torch.Tensor, layer: str) -> list[torch.Tensor]:
    """Pre-activations of every ReLU reached before ``layer``, then ``layer``'s own.

    Shapes:
        x: (B, *input); returns a list of (B, n_k)
    """
    return [v.flatten(1) for m, v in _ordered_captures(net, x, layer) if isinstance(m, nn.ReLU)]


def _window_pairs(pool: nn.Module, value: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (entry, winner) pair of ``pool``'s windows at ``value``, entry ≠ winner.

    Windows follow the pool's own kernel, stride, padding, dilation and ceil mode; the
    winner is the index ``return_indices`` gives. Indices are into ``value.flatten()``.

    Shapes:
        value: (1, C, *spatial), the pool's input for one example; returns (P,), (P,)
    """
    nd, pool_fn = next(v for kind, v in _MAX_POOLS.items() if isinstance(pool, kind))

    def per_dim(v: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    kernel = per_dim(pool.kernel_size)
    stride = per_dim(pool.stride if pool.stride else pool.kernel_size)
    padding, dilation = per_dim(pool.padding), per_dim(pool.dilation)
    _, winners = pool_fn(
        value, kernel, stride, padding, dilation, ceil_mode=pool.ceil_mode, return_indices=True,
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
        raise ValueError(f"expected mode in {JACOBIAN_MODES}, got {mode!r}")
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
    for start in range(0, n_seeds, chunk):
        stop = min(start + chunk, n_seeds)
        seeds = torch.zeros(stop - start, n_seeds, dtype=x.dtype)
        seeds[torch.arange(stop - start), torch.arange(start, stop)] = 1
        parts.append(torch.func.vmap(push)(seeds))
    jac = torch.cat(parts)
    return jac.T if forward else jac


def affine_piece(model: nn.Module, layer: str, target: torch.Tensor, *, mode: str = "auto") -> AffinePiece:
    """Linearise ``layer``'s pre-activation at ``target`` and collect the region's rows.

    Args:
        model: the classifier (not changed: a float64 eval-mode copy is used).
        layer: the ReLU layer.
        target: one input, no batch dim.
        mode: ``forward`` or ``reverse`` mode for the Jacobian; ``auto`` takes forward
            mode when the input has fewer coordinates than the captured values (every
            earlier pre-activation and pool input plus the layer's).

    Shapes:
        target: (*input), d = target.numel()
    """
    net = copy.deepcopy(model).double().eval().requires_grad_(False)
    x0 = target.double().unsqueeze(0)

    def all_values(x: torch.Tensor) -> torch.Tensor:
        captures = _ordered_captures(net, x.view_as(x0), layer)
        return torch.cat([v.flatten() for _, v in captures])

    with torch.no_grad():
        captures = _ordered_captures(net, x0, layer)
    sizes = [v.numel() for _, v in captures]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    flat = x0.flatten()
    jac = _jacobian(all_values, flat, int(starts[-1]), mode).numpy()
    values = torch.cat([v.flatten() for _, v in captures]).numpy()
    offset = values - jac @ flat.numpy()

    relu_rows, pool_rows = [], []
    for k, (module, value) in enumerate(captures[:-1]):
        at = slice(starts[k], starts[k + 1])
        if isinstance(module, nn.ReLU):
            # Positive units stay ≥ 0, the others ≤ 0: −s·(Jx + c) ≤ 0 with s = ±1.
            sign = np.where(values[at] > 0, 1.0, -1.0)
            relu_rows.append((-sign[:, None] * jac[at], sign * offset[at]))
        else:
            entry, winner = _window_pairs(module, value)
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


@dataclass(frozen=True)
class _Constraints:
    """The LP's rows on one piece: ``a_ub x ≤ b_ub`` and ``a_eq x = b_eq``, plus the box.

    Shapes:
        a_ub: (U, d); b_ub: (U,); a_eq: (E, d); b_eq: (E,)
    """

    a_ub: np.ndarray
    b_ub: np.ndarray
    a_eq: np.ndarray
    b_eq: np.ndarray

    @classmethod
    def on(cls, piece: AffinePiece, t_pre: np.ndarray, pos: np.ndarray, keep: np.ndarray | None = None) -> _Constraints:
        """Positive units at the target's values ``t_pre``, the others ≤ 0, the region rows ``keep``."""
        region_jac, region_bound = piece.region_jac, piece.region_bound
        if keep is not None:
            region_jac, region_bound = region_jac[keep], region_bound[keep]
        return cls(
            a_ub=np.vstack([piece.jac[~pos], region_jac]),
            b_ub=np.concatenate([-piece.offset[~pos], region_bound]),
            a_eq=piece.jac[pos],
            b_eq=t_pre[pos] - piece.offset[pos],
        )


def _solve_lp(
    rows: _Constraints, cost: np.ndarray, lam: float, x_init: np.ndarray, config: ExactConfig,
) -> tuple[np.ndarray, str]:
    """Minimise ``cost·x + lam‖x − x_init‖₁`` subject to ``rows`` and the box (HiGHS).

    Returns the minimiser clipped to the box (NaN unless optimal) and its outcome.

    Shapes:
        cost, x_init: (d,); returns (d,)
    """
    d = len(cost)
    a_ub, a_eq = rows.a_ub, rows.a_eq
    if lam > 0:
        # x and t with t ≥ |x − init|: x − t ≤ init and −x − t ≤ −init.
        eye = sp.identity(d, format="csr")
        ub = sp.vstack([
            sp.hstack([sp.csr_matrix(a_ub), sp.csr_matrix((len(a_ub), d))]),
            sp.hstack([eye, -eye]),
            sp.hstack([-eye, -eye]),
        ]).tocsr()
        rhs = np.concatenate([rows.b_ub, x_init, -x_init])
        eq = sp.hstack([sp.csr_matrix(a_eq), sp.csr_matrix((len(a_eq), d))]).tocsr()
        full_cost = np.concatenate([cost, np.full(d, lam)])
        bounds = [(config.lower, config.upper)] * d + [(0, None)] * d
    else:
        ub, rhs, eq = a_ub, rows.b_ub, a_eq
        full_cost, bounds = cost, [(config.lower, config.upper)] * d
    res = scipy.optimize.linprog(
        full_cost, A_ub=ub, b_ub=rhs, A_eq=eq if len(a_eq) else None, b_eq=rows.b_eq if len(a_eq) else None,
        bounds=bounds, method="highs",
        options={"primal_feasibility_tolerance": config.feasibility_tol,
                 "dual_feasibility_tolerance": config.feasibility_tol},
    )
    if res.status == 0:
        return np.clip(res.x[:d], config.lower, config.upper), OPTIMAL
    return np.full(d, np.nan), {2: INFEASIBLE, 3: UNBOUNDED}.get(res.status, FAILED)


def _tie_broken_piece(
    model: nn.Module, layer: str, target: torch.Tensor, piece: AffinePiece, tied: np.ndarray,
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
    layer: str,
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
    piece = affine_piece(model, layer, target)
    x0 = target.double().flatten().numpy()
    t_pre = piece.jac @ x0 + piece.offset
    pos = t_pre > 0
    d = piece.jac.shape[1]
    rank = int(np.linalg.matrix_rank(piece.jac[pos])) if pos.any() else 0
    x_init = init.double().flatten().numpy()
    rows = _Constraints.on(piece, t_pre, pos)
    tied = _tied_rows(piece, x0) if break_ties else np.zeros(len(piece.region_bound), dtype=bool)

    # Per vertex, its candidates: (piece, solution, outcome), the target's piece first.
    candidates: list[list[tuple[AffinePiece, np.ndarray, str]]] = []
    for unit in units.tolist():
        if pos[unit]:
            raise DataError(f"unit {unit} is positive for the target: push a non-positive unit")
        lam = config.proximity * float(np.abs(piece.jac[unit]).mean())
        x, outcome = _solve_lp(rows, piece.jac[unit], lam, x_init, config)
        tried = [(piece, x, outcome)]
        if tied.any() and outcome == OPTIMAL:
            # Without the tied rows the LP may leave the piece: it only says which way
            # to break the ties. Its objective keeps the target's Jacobian.
            loose, loose_outcome = _solve_lp(_Constraints.on(piece, t_pre, pos, ~tied), piece.jac[unit], lam,
                                             x_init, config)
            direction = loose - x0
            adjacent = None
            if loose_outcome == OPTIMAL and np.abs(direction).max() > 0:
                adjacent = _tie_broken_piece(model, layer, target, piece, tied, direction, t_pre)
            if adjacent is not None and not _same_piece(adjacent, piece):
                # λ from the target's piece: the same trade-off on either piece.
                x2, outcome2 = _solve_lp(_Constraints.on(adjacent, t_pre, pos), adjacent.jac[unit], lam,
                                         x_init, config)
                tried.append((adjacent, x2, outcome2))
        candidates.append(tried)

    # Every candidate through a real float64 forward pass: it must match its own piece.
    flat = [c for tried in candidates for c in tried]
    points = torch.from_numpy(np.stack([x for _, x, _ in flat]))
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        pre_all = _ordered_preactivations(net, torch.nan_to_num(points).view(len(flat), *target.shape), layer)[-1]
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
    )
