"""The exact vertex LP in layers: one variable vector per piecewise call, rows as sparse as
the weights (:mod:`collide.piecewise.layers` reads the maps).

On one linear piece (a :class:`Piece`: each earlier ReLU's sign, each Hardtanh's segment,
each max-pooling window's winner) every call's output is a sparse map of its input,
``a_j = P_j z_j + q_j``, so the LP over ``x`` and every pre-activation ``z_k`` is

    minimise   z_L[unit] + λ‖x − init‖₁
    subject to z_k − B_kx x − Σ_j B_kj P_j z_j = c_k + Σ_j B_kj q_j    (each call k and the layer L)
               ReLU signs and Hardtanh segments: bounds on z_j's columns
               max-pooling winners: z_j[e] − z_j[w] ≤ 0, two entries a row
               the layer's own rows (:func:`collision_layer`), lower ≤ x ≤ upper.

Its optimum is the dense LP's (:mod:`collide.piecewise.lp`): the same polytope in more
coordinates. The L1 term is split as the dense path splits it, ``x = init + p − q`` on
bounded columns. Pool rows that hold for every input (a pool window whose entries no input
reaches, after inactive ReLUs, or a pool pair that reads one value twice) are left out, as
the dense path drops its all-zero rows; a ReLU unit constant on the piece keeps its sign
bound, a bound on a column that its equality row fixes anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from collide.errors import LayerError
from collide.piecewise.highs import add_rows, columnwise_lp, new_highs, solve_lazily, unit_scale
from collide.piecewise.layers import Call, LayeredNet, pool_winners
from collide.piecewise.linearise import window_pairs
from collide.piecewise.lp import FAILED, INFEASIBLE, OPTIMAL, UNBOUNDED
from collide.sites import HARDTANH, MAX_POOL, RELU, Site, function_of, require_method


@dataclass(frozen=True)
class CollisionLayer:
    """The collision layer's own part of a vertex LP, on its pre-activation's variables:
    column bounds (equal to the target's value on its positive units, ≤ 0 on the rest)
    and the cost (the pushed unit). Shapes: (D,) each"""

    lower: np.ndarray
    upper: np.ndarray
    cost: np.ndarray


def collision_layer(site: Site, t_pre: np.ndarray, unit: int) -> CollisionLayer:
    """The collision layer's constraints and objective for a vertex pushing ``unit``, at the
    resolved ``site`` whose target pre-activation is ``t_pre`` (paper, Proposition 1).

    Every layered LP takes its layer's rows from here and nowhere else.

    Shapes:
        t_pre: (D,)
    """
    require_method(site, "exact")
    sat = function_of(site).at(0.0)  # the activation's flat pieces (ReLU: z ≤ 0)
    low, high = sat.low(t_pre), sat.high(t_pre)
    if not (low[unit] or high[unit]):
        raise LayerError(f"unit {unit} of {site.name!r} is not in a flat piece for the target (ReLU: it is "
                         "positive): push a unit the target has saturated")
    lower = np.where(low, -np.inf, np.where(high, sat.above, t_pre))
    upper = np.where(low, sat.below, np.where(high, np.inf, t_pre))
    cost = np.zeros(len(t_pre))
    cost[unit] = -1.0 if high[unit] else 1.0  # deeper in the upper piece is higher
    return CollisionLayer(lower, upper, cost)


@dataclass(frozen=True)
class Piece:
    """One linear piece in layered form: per call before the layer, its choice (a ReLU's
    active units, a Hardtanh's segment of each unit: -1, 0, 1, a max pool's winner of each
    window with its (entry, winner) pairs). ``None`` at the layer itself."""

    choices: tuple[object, ...]

    def same_as(self, other: Piece) -> bool:
        def eq(a: object, b: object) -> bool:
            if isinstance(a, tuple):
                return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))  # type: ignore[arg-type]
            return bool(np.array_equal(a, b))  # type: ignore[arg-type]
        return all(eq(a, b) for a, b in zip(self.choices, other.choices, strict=True))


def piece_at(net: LayeredNet, values: list[np.ndarray]) -> Piece:
    """The piece holding the point whose calls' inputs are ``values`` (ties as torch breaks
    them: a ReLU unit at 0 inactive, a pool's first largest entry)."""
    choices: list[object] = []
    for call, v in zip(net.calls[:-1], values, strict=True):
        if call.kind == RELU:
            choices.append(v > 0)
        elif call.kind == HARDTANH:
            lo, hi = call.params["min_val"], call.params["max_val"]
            choices.append(np.where(v <= lo, -1, np.where(v >= hi, 1, 0)).astype(np.int8))
        else:
            entry, winner = window_pairs(call.params, torch.from_numpy(v).view(1, *call.shape))
            choices.append((pool_winners(call.params, v, call.shape), entry, winner))
    return Piece((*choices, None))


def output_map(call: Call, choice: object) -> tuple[sp.csr_matrix, np.ndarray]:
    """``a = P z + q`` on the piece: call's output as a sparse map of its input.
    Shapes: P (m, n); q (m,)"""
    n = call.size
    if call.kind == RELU:
        s = np.asarray(choice, dtype=np.float64)
        return sp.diags(s, format="csr"), np.zeros(n)
    if call.kind == HARDTANH:
        seg = np.asarray(choice)
        q = np.where(seg < 0, call.params["min_val"], np.where(seg > 0, call.params["max_val"], 0.0))
        return sp.diags((seg == 0).astype(np.float64), format="csr"), q
    winners = choice[0]  # type: ignore[index]
    m = len(winners)
    return sp.csr_matrix((np.ones(m), (np.arange(m), winners)), shape=(m, n)), np.zeros(m)


@dataclass(frozen=True)
class Linear:
    """Every call's input as an affine map of ``x`` on one piece, kept factored:
    ``maps[k]`` is ``(B_kx, {j: B_kj P_j}, c_k + Σ B_kj q_j)``."""

    maps: tuple[tuple[sp.csr_matrix, dict[int, sp.csr_matrix], np.ndarray], ...]

    def values(self, x: np.ndarray) -> list[np.ndarray]:
        """Each call's input at ``x`` on this piece. Shapes: x (d,)"""
        out: list[np.ndarray] = []
        for bx, bz, c in self.maps:
            z = bx @ x + c
            for j, m in bz.items():
                z = z + m @ out[j]
            out.append(z)
        return out

    def terms(self, x: np.ndarray, values: list[np.ndarray]) -> list[np.ndarray]:
        """Each call's input's terms at ``x`` on this piece, what the value is summed from
        and its rounding relative to: ``|B_kx| |x| + Σ_j |B_kj P_j| |z_j| + |c_k|``, with
        ``z_j`` call j's input at x (``values``: :meth:`values` at x, which the caller has
        at hand). Shapes: x (d,)"""
        return self._sums(np.abs(x), [np.abs(v) for v in values])

    def bound(self, size: np.ndarray) -> list[np.ndarray]:
        """Per call, a bound on its input over ``|x| ≤ size`` on this piece, the terms
        carried through every earlier call: ``T_k = |B_kx| size + Σ_j |B_kj P_j| T_j + |c_k|``.
        At a point (``size = |x|``) it also bounds what the rounding of earlier values
        passes on to z_k; it grows with depth (at the last call of an 8-layer random MLP,
        214 times the dense form's ``|J| |x| + |c|`` at the median, where :meth:`terms` is
        2.7 times). Shapes: size (d,)"""
        return self._sums(size, None)

    def _sums(self, size: np.ndarray, earlier: list[np.ndarray] | None) -> list[np.ndarray]:
        """``|B_kx| size + Σ_j |B_kj P_j| e_j + |c_k|`` per call, with ``e_j`` from ``earlier``,
        or where it is None, this sum of call j itself."""
        out: list[np.ndarray] = []
        for bx, bz, c in self.maps:
            t = abs(bx) @ size + np.abs(c)
            for j, m in bz.items():
                t = t + abs(m) @ (out[j] if earlier is None else earlier[j])
            out.append(t)
        return out

    def rows(self, which: np.ndarray) -> np.ndarray:
        """Rows ``which`` of the layer's Jacobian in x, dense. Shapes: (r, d)"""
        last = len(self.maps) - 1
        n_last = self.maps[last][0].shape[0]
        pick = sp.csr_matrix((np.ones(len(which)), (np.arange(len(which)), which)), shape=(len(which), n_last))
        return self.composed(last, pick).toarray()

    def composed(self, k: int, g: sp.csr_matrix) -> sp.csr_matrix:
        """The rows ``g`` over call k's input, as rows over x on this piece: ``g`` times the
        Jacobian of call k's input, by sparse products back through the maps, its explicit
        zeros removed. Shapes: g (r, n_k); returns (r, d)"""
        grads: dict[int, sp.csr_matrix] = {k: sp.csr_matrix(g)}
        total = sp.csr_matrix((g.shape[0], self.maps[0][0].shape[1]))
        for i in range(k, -1, -1):
            gi = grads.pop(i, None)
            if gi is None:
                continue
            bx, bz, _ = self.maps[i]
            total = total + gi @ bx
            for j, m in bz.items():
                add = gi @ m
                grads[j] = grads[j] + add if j in grads else add
        total.eliminate_zeros()
        return total


def linear_on(net: LayeredNet, piece: Piece) -> Linear:
    maps = []
    for call in net.calls:
        bz, c = {}, call.offset.copy()
        for j, b in call.from_calls.items():
            p, q = output_map(net.calls[j], piece.choices[j])
            bz[j] = sp.csr_matrix(b @ p)
            c = c + b @ q
        maps.append((call.from_x, bz, c))
    return Linear(tuple(maps))


def _varies(net: LayeredNet, piece: Piece, lin: Linear, x: np.ndarray, at: list[np.ndarray]) -> list[np.ndarray]:
    """Per call before the layer, which of its region rows change with x on this piece: a
    ReLU's units, a max pool's (entry, winner) pairs; all True for other calls. A row that
    does not holds at every x, as the dense form's zero Jacobian rows do: a unit no input
    reaches (after inactive ReLUs), and a pool pair that reads one value twice (a pool
    whose overlapping windows read an earlier pool's winner twice, as GoogLeNet's
    inception branches do).

    A row is constant where its row over x (:meth:`Linear.composed`) is exactly zero: one
    value read twice cancels exactly, since both reads are the same products. Only the rows
    whose value is the same at x and at a fixed pseudo-random step from it are composed (a
    row that changes there is not constant; one that does not may still vary, along
    directions orthogonal to the step or below rounding), so that the many rows that
    clearly vary cost no product. ``at``: ``lin.values(x)``. Shapes: x (d,)"""
    moved = lin.values(x + np.random.default_rng(0).uniform(-1.0, 1.0, size=len(x)))
    out: list[np.ndarray] = []
    for k, call in enumerate(net.calls[:-1]):
        if call.kind == RELU:
            entry, winner, varies = np.arange(call.size), None, moved[k] != at[k]
        elif call.kind == MAX_POOL:
            _, entry, winner = piece.choices[k]  # type: ignore[misc]
            varies = moved[k][entry] - moved[k][winner] != at[k][entry] - at[k][winner]
        else:
            out.append(np.ones(call.size, dtype=bool))
            continue
        maybe = np.flatnonzero(~varies)
        if len(maybe):
            r = np.arange(len(maybe))
            g = sp.csr_matrix((np.ones(len(maybe)), (r, entry[maybe])), shape=(len(maybe), call.size))
            if winner is not None:
                g = g - sp.csr_matrix((np.ones(len(maybe)), (r, winner[maybe])), shape=(len(maybe), call.size))
            varies[maybe] = np.diff(lin.composed(k, g).indptr) > 0
        out.append(varies)
    return out


def tied(net: LayeredNet, piece: Piece, lin: Linear, x: np.ndarray, tol: float) -> tuple[np.ndarray, ...]:
    """Per call before the layer, its ties at ``x``, the point the net was read at: ReLU
    units at 0 and (entry, winner) pairs of equal value, among those that depend on x,
    within ``tol`` x the terms the values were summed from (:meth:`Linear.terms`), as the
    dense form's ties are relative to theirs (:func:`collide.piecewise.pieces.tied_rows`:
    ``|J| |x| + |c|``; on an 8-layer random MLP the two are within 0.5 to 60 times of each
    other, where terms carried through every call (:meth:`Linear.bound`) reach 5,900 times);
    Hardtanh segments are not tie-broken (all False).

    A row that holds at every x on the piece (:func:`_varies`) is no tie: a pool pair that
    reads one value twice counted 251 "ties" at GoogLeNet's survey site at 16 px, where the
    dense form has none. Shapes: x (d,)"""
    at = lin.values(x)
    varies = _varies(net, piece, lin, x, at)
    terms = lin.terms(x, at)
    out = []
    for k, call in enumerate(net.calls[:-1]):
        if call.kind == RELU:
            out.append(varies[k] & (np.abs(call.value) <= tol * terms[k]))
        elif call.kind == MAX_POOL:
            _, e, w = piece.choices[k]  # type: ignore[misc]
            gap = np.abs(call.value[e] - call.value[w])
            out.append(varies[k] & (gap <= tol * (terms[k][e] + terms[k][w])))
        else:
            out.append(np.zeros(call.size, dtype=bool))
    return tuple(out)


@dataclass(frozen=True)
class LayeredLp:
    """One piece's LP without its objective: the sparse rows over ``[p, q, z_0 … z_L]``, the
    columns' bounds and where each block starts; apart, the region's constraints (ReLU sign
    bounds on ``sign_cols``, max-pooling rows ``pool_rows x ≤ 0``), which the solve adds
    where a solution breaks them. Built once per piece, shared by its vertices.

    Each call's variables are its values times a power of two (``layer_scale`` the
    layer's), 1 unless the largest value the box allows them (:meth:`Linear.bound`) is
    below :data:`collide.piecewise.highs.SMALL_COEFFICIENT`, as the dense form scales a row
    whose largest coefficient is: values near 1e-9 would otherwise sit at HiGHS's absolute
    tolerances and its coefficients under its matrix floor. A bound over the box, not the
    values at ``init``: an init at 0 has terms of rounding size, where x may still move."""

    matrix: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    pixel: np.ndarray
    sign: np.ndarray
    starts: tuple[int, ...]
    init: np.ndarray
    sign_cols: np.ndarray
    sign_lower: np.ndarray
    sign_upper: np.ndarray
    pool_rows: sp.csr_matrix
    layer_scale: float = 1.0

    @property
    def n_region(self) -> int:
        """The region's constraints: ReLU sign bounds and max-pooling rows."""
        return len(self.sign_cols) + self.pool_rows.shape[0]


def build_lp(net: LayeredNet, piece: Piece, lin: Linear, init: np.ndarray, *, lower: float, upper: float,
             free: tuple[np.ndarray, ...] | None = None) -> LayeredLp:
    """The piece's LP around ``init`` without the layer's own bounds (each vertex takes them
    from :func:`collision_layer`); ``free``: per call, the sign bounds and pool pairs to
    leave out (the ties a tie-breaking LP drops)."""
    d = net.input_dim
    room = np.concatenate([upper - init, init - lower])
    cols = np.flatnonzero(room > 0)
    pixel, sign = cols % d, np.where(cols < d, 1.0, -1.0)
    sizes = [c.size for c in net.calls]
    starts = tuple(int(s) for s in np.concatenate([[len(cols)], len(cols) + np.cumsum(sizes)]))
    varies = _varies(net, piece, lin, init, lin.values(init))
    blocks, row_lo, row_hi, pool_rows = [], [], [], []
    sign_cols, sign_lo, sign_hi = [], [], []
    col_lo = [np.zeros(len(cols))]
    col_hi = [room[cols]]
    n_cols = starts[-1]
    # Each call's variables are s_k z_k, its row is multiplied by s_k (powers of two: exact).
    reach = lin.bound(np.full(d, max(abs(lower), abs(upper))))
    scales = [float(unit_scale(np.asarray(t.max(initial=0.0)))) for t in reach]
    for k, call in enumerate(net.calls):
        bx, bz, c = lin.maps[k]
        n, s_k = call.size, scales[k]
        # s_k z_k − s_k B_kx (p − q) − Σ_j (s_k / s_j) B_kj P_j s_j z_j = s_k (c_k + B_kx init)
        moves = sp.coo_matrix(bx[:, pixel].multiply(sign[None, :]))
        rr = [np.arange(n), moves.row]
        cc = [starts[k] + np.arange(n), moves.col]
        vv = [np.ones(n), -s_k * moves.data]
        for j, m in bz.items():
            mc = sp.coo_matrix(m)
            rr.append(mc.row)
            cc.append(starts[j] + mc.col)
            vv.append(-(s_k / scales[j]) * mc.data)
        blocks.append(sp.coo_matrix((np.concatenate(vv), (np.concatenate(rr), np.concatenate(cc))),
                                    shape=(n, n_cols)))
        rhs = s_k * (c + bx @ init)
        row_lo.append(rhs)
        row_hi.append(rhs)
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        choice = piece.choices[k]
        loose = free[k] if free is not None and k < len(free) and len(free[k]) else None
        if k == len(net.calls) - 1:
            pass  # the layer's columns stay free here: each vertex's collision_layer bounds them
        elif call.kind == RELU:
            act = np.asarray(choice)
            bound = np.ones(n, dtype=bool) if loose is None else ~loose
            sign_cols.append(starts[k] + np.flatnonzero(bound))
            sign_lo.append(np.where(act, 0.0, -np.inf)[bound])
            sign_hi.append(np.where(act, np.inf, 0.0)[bound])
        elif call.kind == HARDTANH:
            seg, a, b = np.asarray(choice), call.params["min_val"], call.params["max_val"]
            lo = s_k * np.where(seg == 0, a, np.where(seg > 0, b, lo))
            hi = s_k * np.where(seg == 0, b, np.where(seg < 0, a, hi))
        elif call.kind == MAX_POOL:
            _, e, w = choice  # type: ignore[misc]
            keep = varies[k].copy()
            if loose is not None:
                keep &= ~loose
            e, w = e[keep], w[keep]
            r = np.arange(len(e))
            pool_rows.append(sp.coo_matrix((np.r_[np.ones(len(e)), -np.ones(len(e))],
                                            (np.r_[r, r], np.r_[starts[k] + e, starts[k] + w])),
                                           shape=(len(e), n_cols)))
        col_lo.append(lo)
        col_hi.append(hi)
    matrix = sp.vstack(blocks).tocsc()
    cat = (lambda xs, dtype: np.concatenate(xs) if xs else np.zeros(0, dtype))  # noqa: E731
    return LayeredLp(matrix, np.concatenate(row_lo), np.concatenate(row_hi), np.concatenate(col_lo),
                     np.concatenate(col_hi), pixel, sign, starts, init,
                     cat(sign_cols, np.int64), cat(sign_lo, np.float64), cat(sign_hi, np.float64),
                     sp.csr_matrix(sp.vstack(pool_rows)) if pool_rows else sp.csr_matrix((0, n_cols)),
                     scales[-1])


@dataclass(frozen=True)
class LayeredSolution:
    """``x`` clipped to the box (NaN unless optimal), the outcome, the simplex iterations
    (of the last run) and the rounds of added region constraints."""

    x: np.ndarray
    outcome: str
    iterations: int
    rounds: int = 1


def solve_layered(lp: LayeredLp, site: Site, t_pre: np.ndarray, unit: int, lam: float, *, lower: float,
                  upper: float, tol: float, lazy: bool = False) -> LayeredSolution:
    """Minimise unit ``unit`` of the layer plus ``lam``·‖x − init‖₁ on ``lp`` (HiGHS, one thread).

    The region's sign bounds and pool rows are in the model from the start; ``lazy=True``
    adds them only where a solution breaks them (:func:`collide.piecewise.highs.
    solve_lazily`), as the dense LP's region rows enter: the answer meets every one within
    tolerance either way. Lazily was slower on LeNet-5's ``relu3`` (one vertex: 131 s in
    61 rounds against 64 s, same point to 7e-11; a loaded 2-core machine), so it is off by
    default. Each call
    builds its own HiGHS instance, which runs without the GIL: vertices may be solved side
    by side from threads."""
    layer = collision_layer(site, t_pre, unit)
    n_move = len(lp.pixel)
    cost = np.zeros(lp.matrix.shape[1])
    cost[:n_move] = lam
    cost[lp.starts[-2]:lp.starts[-1]] = layer.cost / lp.layer_scale  # on the layer's scaled variables
    cost *= unit_scale(np.abs(cost).max(initial=0.0))
    h = new_highs()
    h.setOptionValue("threads", 1)
    h.setOptionValue("primal_feasibility_tolerance", tol)
    h.setOptionValue("dual_feasibility_tolerance", tol)
    col_lower, col_upper = lp.col_lower.copy(), lp.col_upper.copy()
    col_lower[lp.starts[-2]:lp.starts[-1]] = lp.layer_scale * layer.lower
    col_upper[lp.starts[-2]:lp.starts[-1]] = lp.layer_scale * layer.upper
    n_sign = len(lp.sign_cols)
    if not lazy:
        col_lower[lp.sign_cols], col_upper[lp.sign_cols] = lp.sign_lower, lp.sign_upper
    h.passModel(columnwise_lp(cost, col_lower, col_upper, lp.row_lower, lp.row_upper, lp.matrix))
    added = np.zeros(lp.n_region, dtype=bool)
    if not lazy:
        added[:] = True
        if lp.pool_rows.shape[0]:
            add_rows(h, lp.pool_rows, np.full(lp.pool_rows.shape[0], -np.inf), np.zeros(lp.pool_rows.shape[0]))

    def excess(v: np.ndarray) -> np.ndarray:
        at = v[lp.sign_cols]
        return np.concatenate([np.maximum(lp.sign_lower - at, at - lp.sign_upper), lp.pool_rows @ v])

    def add(which: np.ndarray) -> None:
        signs, pools = which[which < n_sign], which[which >= n_sign] - n_sign
        if len(signs):
            h.changeColsBounds(len(signs), lp.sign_cols[signs].astype(np.int32), lp.sign_lower[signs],
                               lp.sign_upper[signs])
        if len(pools):
            add_rows(h, lp.pool_rows[pools], np.full(len(pools), -np.inf), np.zeros(len(pools)))

    run = solve_lazily(h, excess, np.zeros(lp.n_region), added, tol=tol, add=add)
    iterations = int(h.getInfo().simplex_iteration_count)
    d = len(lp.init)
    if run.solution is None:
        outcome = {highspy.HighsModelStatus.kInfeasible: INFEASIBLE,
                   highspy.HighsModelStatus.kUnbounded: UNBOUNDED}.get(run.status, FAILED)
        return LayeredSolution(np.full(d, np.nan), outcome, iterations, run.rounds)
    x = lp.init.copy()
    np.add.at(x, lp.pixel, run.solution[:n_move] * lp.sign)
    return LayeredSolution(np.clip(x, lower, upper), OPTIMAL, iterations, run.rounds)


def _holds(net: LayeredNet, piece: Piece, values: list[np.ndarray], bound: list[np.ndarray], tol: float) -> bool:
    """Whether the calls' inputs ``values`` meet ``piece``'s sign bounds and pool rows,
    each within ``tol`` x ``bound`` (:meth:`Linear.bound` at the point)."""
    for call, choice, v, t in zip(net.calls[:-1], piece.choices, values, bound, strict=False):
        if call.kind == RELU:
            act = np.asarray(choice)
            if (v[act] < -tol * t[act]).any() or (v[~act] > tol * t[~act]).any():
                return False
        elif call.kind == MAX_POOL:
            _, e, w = choice  # type: ignore[misc]
            if (v[e] - v[w] > tol * (t[e] + t[w])).any():
                return False
    return True


def adjacent_piece(net: LayeredNet, piece: Piece, lin: Linear, ties: tuple[np.ndarray, ...], x0: np.ndarray,
                   direction: np.ndarray, read: object, *, step: float, shrink: float, tries: int,
                   tol: float) -> tuple[Piece, Linear] | None:
    """The piece next to the point ``x0`` (where the net was read) that ``direction``
    enters, or None: the layered form of :func:`collide.piecewise.pieces.tie_broken_piece`.

    The piece is read by a real forward pass (``read(x)``: each call's input at x) a step
    from ``x0``: no coordinate moves more than ``step``, nor past half the distance at
    which ``direction`` crosses an untied bound or row; it must hold ``x0`` in its
    closure with the same pre-activations there, else the step shrinks by ``shrink``.

    Shapes:
        x0, direction: (d,)
    """
    at, bound = lin.values(x0), lin.bound(np.abs(x0))
    rate = [a - b for a, b in zip(lin.values(x0 + direction), at, strict=True)]
    crossing = [np.inf]
    for k, call in enumerate(net.calls[:-1]):
        z, dz, t = at[k], rate[k], ties[k]
        if call.kind == RELU:
            act = np.asarray(piece.choices[k])
            slack, r = np.where(act, z, -z), np.where(act, -dz, dz)
            go = ~t & (r > 0)
            crossing.append(float((slack[go] / r[go]).min(initial=np.inf)))
        elif call.kind == MAX_POOL:
            _, e, w = piece.choices[k]  # type: ignore[misc]
            slack, r = z[w] - z[e], dz[e] - dz[w]
            go = ~t & (r > 0)
            crossing.append(float((slack[go] / r[go]).min(initial=np.inf)))
    size = min(step / np.abs(direction).max(), 0.5 * min(crossing))
    for _ in range(tries):
        values = read(x0 + size * direction)  # type: ignore[operator]
        adjacent = piece_at(net, values)
        lin_adj = linear_on(net, adjacent)
        # Both pieces' values at x0, within what rounding and the ties (values within
        # tol x their terms of 0, passed on by the calls after them) can put between them:
        # bounds carried through every call.
        same = all((np.abs(a - b) <= tol * (t_a + t_b)).all()
                   for a, b, t_a, t_b in zip(lin_adj.values(x0), at, lin_adj.bound(np.abs(x0)), bound, strict=True))
        if same and _holds(net, adjacent, at, bound, tol):
            return adjacent, lin_adj
        size /= shrink
    return None
