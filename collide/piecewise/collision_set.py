"""The exact collision set of an input: the rows that bound it, in its equality subspace.

For a target t and a ReLU layer, the exact solver's polytope lives in

    C = {x : lower ≤ x ≤ upper, x in t's activation region,
             ỹⱼ(x) = ỹⱼ(t) for t's positive units j, ỹⱼ(x) ≤ 0 for the others},

every point of which has t's features at the layer exactly (within the region the
pre-activation is ``J x + c``, :func:`collide.piecewise.linearise.affine_piece`). Several
models' sets stack on one input: their rows together give the inputs that collide with
t in every model at once.

Everything is computed in the coordinates of C's equality subspace: ``x = t + B z``
with ``B`` an orthonormal basis of the null space of the stacked positive rows, so that
‖z‖ is the distance to the target and a ball in z is a ball in x. C becomes
``{z : G z ≤ h}`` with ``h ≥ 0`` (t itself is in C).

This module builds C from the pieces (:func:`collision_set`) and holds what its
measures share: float64 products with a fixed thread count (:func:`mm`) and the LP
with the region rows taken in lazily (:func:`solve_with_region`). The measures live
one per module: :mod:`~collide.piecewise.ball` (inscribed ball, dimension),
:mod:`~collide.piecewise.widths`, :mod:`~collide.piecewise.hull` (C in its hull's
coordinates), :mod:`~collide.piecewise.rounding` and :mod:`~collide.piecewise.sampler`
(uniform samples) with :mod:`~collide.piecewise.diagnostics` (R̂, ESS), and
:mod:`~collide.piecewise.geometry`, which runs them in order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highspy
import numpy as np
import torch

from collide.activations import RELU_SATURATION, Saturation
from collide.errors import ConfigError, InternalError
from collide.piecewise.highs import Heartbeat, LazyRun, add_rows, row_scales, solve_lazily
from collide.piecewise.linearise import AffinePiece, layer_rows
from collide.piecewise.row_space import rank_of, svd

# A row whose norm on the equality subspace is below this (relative to 1 + its norm) is
# constant there: float64 projections of a row in the equalities' span leave ~1e-14.
FLAT_ROW = 1e-10


LP_TOL = 1e-9


def moving_rows(a: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Which rows ``a`` move on a flat where each reaches ``reach`` (its norm there): the
    others are constant on it, their reach rounding (:data:`FLAT_ROW`). (n, d), (n,) -> (n,)"""
    return reach > FLAT_ROW * (1 + np.linalg.norm(a, axis=1))


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64 through torch: its thread count is what the engine fixes per
    job, so a job's set is the same bits in a Dask worker (BLAS on one thread) and in
    plain Python (numpy's BLAS rounds differently with its thread count)."""
    return (_tensor(a) @ _tensor(b)).numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor without a copy. torch warns of a read-only array though a product
    only reads it: a read-only view of a writable array (:meth:`CollisionSet.all_rows`)
    is taken through a writable view of the same memory, any other read-only array copied."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        view = a.view()
        try:
            view.flags.writeable = True  # numpy allows it only where the memory's owner is writable
        except ValueError:
            view = a.copy()
        a = view
    return torch.from_numpy(a)


@dataclass(frozen=True)
class CollisionSet:
    """C as the rows that bound it: ``{x : E x = E t, A x ≤ b, lower ≤ x ≤ upper}``.

    ``equalities`` are orthonormal (the row space of the stacked positive rows), ``basis``
    spans their null space, so ``x = t + basis @ z``. ``rows[:n_fixed]`` are the layer's
    own inequality rows; the rest are activation-region rows (earlier ReLU signs,
    max-pooling winners), which an LP takes in only where a solution violates them. A row
    far below unit size is held rescaled by a power of two
    (:func:`collide.piecewise.highs.unit_scale`): the same half-space.

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
        return self.origin + mm(z, self.basis.T)

    def all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Every inequality of C, the box's included, as ``a x ≤ b``: built once per set
        (on LeNet-5's relu3, 10,700 dense rows, 67 MB, asked for by every measure) and
        handed out read-only. (m + 2d, d), (m + 2d,)"""
        a, b = self._all_rows
        return _read_only(a), _read_only(b)

    @functools.cached_property
    def _all_rows(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.input_dim
        return (np.vstack([self.rows, np.eye(d), -np.eye(d)]),
                np.concatenate([self.bounds, np.full(d, self.upper), np.full(d, -self.lower)]))

    def reach(self, a: np.ndarray) -> np.ndarray:
        """Each row's norm on the equality subspace, ``‖basisᵀ a‖``. (n, d) -> (n,)

        Through the basis, though where the equalities' rank is the smaller the norm of
        what is left of ``a`` off their span is the same quantity in fewer products (on
        LeNet-5's relu3 set, rank 47 against k = 737: 0.14 s against 0.33 s): its other
        rounding sent the ball LP's lazy rows in by another path, one round more, which
        cost more than it saved (docs/performance.md)."""
        return np.linalg.norm(mm(a, self.basis), axis=1)

    def reach_all(self) -> np.ndarray:
        """:meth:`reach` of every row of :meth:`all_rows`, computed once per set (the ball
        LPs and the hull's frame all ask) and handed out read-only; a box row ``±e_j``
        reaches as far as the basis's row j. (m + 2d,)"""
        return _read_only(self._reach_all)

    @functools.cached_property
    def _reach_all(self) -> np.ndarray:
        box = np.linalg.norm(self.basis, axis=1)
        return np.concatenate([self.reach(self.rows), box, box])


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def collision_set(
    pieces: Sequence[tuple[AffinePiece, np.ndarray]], target: np.ndarray, *, lower: float, upper: float,
    max_entries: int, flats: Sequence[Saturation] | None = None,
) -> CollisionSet:
    """Stack each piece's rows at ``target``.

    Args:
        pieces: one ``(piece, t_pre)`` per model: its affine piece at the target and the
            target's pre-activation at its layer (float64).
        target: the input, flattened (d,), float64.
        flats: per piece, its layer activation's flat pieces (ReLU's z ≤ 0 by default;
            ReLU6's z ≤ 0 and z ≥ 6): where the saturated units stay.
    """
    x0 = np.asarray(target, dtype=np.float64)
    d = len(x0)
    eq, fixed, region = [], [], []
    n_positive = 0
    for k, (piece, t_pre) in enumerate(pieces):
        a_eq, _, a_ub, b_ub = layer_rows(piece.jac, piece.offset, t_pre, RELU_SATURATION if flats is None else flats[k])
        n_positive += len(a_eq)
        eq.append(a_eq)
        # ỹ_N(x) ≤ 0 (the saturated units in their flat pieces) and the region rows, both as a x ≤ b.
        fixed.append((a_ub, b_ub))
        region.append((piece.region_jac, piece.region_bound))
    n_rows = sum(len(a) for a, _ in fixed) + sum(len(a) for a, _ in region)
    if n_rows * d > max_entries:
        raise ConfigError(f"the collision set has {n_rows} dense rows x {d} inputs = {n_rows * d:,} entries, over "
                          f"geometry.max_entries={max_entries:,}: raise it (memory grows with it) or measure the "
                          "set at a smaller layer or input")
    a_eq = np.vstack(eq)
    if len(a_eq):
        _, s, vt = svd(a_eq, full=True)
        rank = rank_of(s, a_eq.shape)
    else:
        rank, vt = 0, np.eye(d)
    rows = np.vstack([a for a, _ in fixed] + [a for a, _ in region])
    bounds = np.concatenate([b for _, b in fixed] + [b for _, b in region])
    # Rows far below unit size, rescaled (unit_scale): the LPs that measure C, and the
    # tolerances below, would otherwise treat them with absolute tolerances near their size.
    scale_rows = row_scales(rows)
    if (scale_rows != 1).any():
        rows *= scale_rows[:, None]
        bounds *= scale_rows
    # The target is in C: a row it violates by more than rounding means a wrong piece.
    at_target = mm(rows, x0)
    over = at_target - bounds
    scale = 1 + np.abs(bounds) + mm(np.abs(rows), np.abs(x0))
    if (over > 1e-7 * scale).any():
        worst = int(np.argmax(over / scale))
        raise InternalError(f"the target violates row {worst} of its own collision set by {over[worst]:.3g}: "
                         "its activation region was not taken at this input")
    return CollisionSet(origin=x0, equalities=vt[:rank], basis=vt[rank:].T, rows=rows,
                        bounds=np.maximum(bounds, np.minimum(at_target, bounds + 1e-7 * scale)),
                        n_fixed=sum(len(a) for a, _ in fixed), lower=lower, upper=upper, n_positive=n_positive)


def onto(cs: CollisionSet, basis: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` put onto the flat ``origin + span(basis)`` (orthonormal columns). (n, d) -> (n, d)"""
    return cs.origin + mm(mm(x - cs.origin, basis), basis.T)


def solve_with_region(h: highspy.Highs, lazy_a: np.ndarray, lazy_b: np.ndarray, added: np.ndarray, *,
                      watch: Heartbeat | None = None, adding: Callable[[np.ndarray], None] | None = None) -> LazyRun:
    """``h`` solved with the region rows ``lazy_a x ≤ lazy_b`` taken in lazily
    (:func:`collide.piecewise.highs.solve_lazily`, ``watch`` hearing of its iterations);
    ``added`` marks those it holds. ``adding``: told the rows of each round before they
    enter (its caller may change ``h``'s options for the next run)."""
    def add(rows: np.ndarray) -> None:
        if adding is not None:
            adding(rows)
        add_rows(h, lazy_a[rows], np.full(len(rows), -np.inf), lazy_b[rows])

    return solve_lazily(h, lambda sol: mm(lazy_a, sol) - lazy_b, lazy_b, added, tol=LP_TOL, add=add, watch=watch)
