"""Which linear piece an LP is solved on: the rows of a piece, its ties at the target, and
the adjacent piece a direction enters: the exact solver's tie-breaking
(:mod:`collide.solvers.exact`).

A target can sit on the boundary of several pieces (a max-pooling window of equal
entries, a ReLU unit at exactly 0). Autograd then picks one piece; a direction that
breaks the ties picks a neighbour, re-linearised a tiny step away and kept only if the
target lies in its closure.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from collide.activations import Saturation
from collide.piecewise.linearise import AffinePiece, affine_piece, layer_rows
from collide.piecewise.lp import LinearRows
from collide.piecewise.row_space import independent_rows
from collide.sites import Site

# A region row is tied at the target when its slack there is within this of 0, relative
# to the terms its values were computed from (AffinePiece.region_scale): far above float64
# rounding (~1e-16 per term), far below the gaps between values that merely happen to be
# close. Relative only: with an absolute part (1 + the row's own terms, as before) a
# layer whose values lie near 1e-8 (the test MLP scaled by 2**-27) had rows 1e-9 apart
# counted as tied, and so did randomly initialised GoogLeNet (71 rows) and MobileNet-v2
# (12) at their middle sites, whose slacks there were 1e-5 of their terms.
TIE_TOL = 1e-9


# The re-linearisation point moves no input coordinate by more than this: enough for
# every tie the direction breaks at first order to show in a float64 forward pass (by
# about 1e-6 x its rate, against rounding near 1e-16), and small against the slack of
# untied rows. Where the piece found does not contain the target, the step is divided
# by TIE_SHRINK, at most TIE_TRIES times in all.
TIE_STEP = 1e-6


TIE_SHRINK = 16


TIE_TRIES = 4


def tied_rows(piece: AffinePiece, x: np.ndarray) -> np.ndarray:
    """The region rows that hold with equality at ``x``, where ``piece`` was linearised:
    ties at the target.

    A pool row is tied where its entry equals the window's winner, a ReLU row where the
    unit's pre-activation is 0. Such a target sits on the boundary of several linear
    pieces, and the one autograd picked can be the wrong one for a vertex's LP.

    Shapes:
        x: (d,); returns (R,) bool
    """
    slack = piece.region_bound - piece.region_jac @ x
    return slack <= TIE_TOL * piece.region_scale


def _contains(piece: AffinePiece, x: np.ndarray, t_pre: np.ndarray) -> bool:
    """Whether ``x``, a step from where ``piece`` was linearised, lies in the closure of
    ``piece``, with its pre-activation ``t_pre`` there."""
    if (piece.region_jac @ x - piece.region_bound > TIE_TOL * piece.region_scale).any():
        return False
    err = np.abs(piece.jac @ x + piece.offset - t_pre)
    return bool((err <= TIE_TOL * piece.scale).all())


def rows_on(piece: AffinePiece, t_pre: np.ndarray, sat: Saturation) -> LinearRows:
    """The LP's rows on one piece: the layer's own (:func:`layer_rows`: ReLU's positive
    units at the target's values ``t_pre``, the others ≤ 0; dependent equalities as an
    orthonormal basis of their row space, :func:`independent_rows`), then every region
    row, which may be added lazily."""
    a_eq, b_eq, a_ub, b_ub = layer_rows(piece.jac, piece.offset, t_pre, sat)
    a_eq, b_eq = independent_rows(a_eq, b_eq)
    if sp.issparse(piece.region_jac):
        a_ub = sp.vstack([sp.csr_array(a_ub), piece.region_jac], format="csr")
    else:
        a_ub = np.vstack([a_ub, piece.region_jac])
    return LinearRows(
        a_ub=a_ub,
        b_ub=np.concatenate([b_ub, piece.region_bound]),
        a_eq=a_eq,
        b_eq=b_eq,
        lazy=len(piece.region_bound),
    )


def reading_rows(piece: AffinePiece, rows: LinearRows) -> AffinePiece:
    """``piece`` with its region rows read from ``rows`` (:func:`rows_on` of it), which
    hold a copy of them, so that the piece's own array can go: one copy of the region's
    rows instead of two while the polytope's LPs run (56 MB dense on LeNet-5's relu3, 7 MB
    compressed). Compressed rows are ``csr_array``s, as :func:`rows_on` writes them."""
    first = len(rows.b_ub) - rows.lazy
    if not sp.issparse(rows.a_ub):
        return dataclasses.replace(piece, region_jac=rows.a_ub[first:])
    # Compressed rows' slicing copies them: these share the LP's entries instead, where the
    # region holds at least half of them (as on LeNet-5); scipy copies a smaller share.
    a, start = rows.a_ub, rows.a_ub.indptr[first]
    view = sp.csr_array((a.data[start:], a.indices[start:], a.indptr[first:] - start), shape=(rows.lazy, a.shape[1]))
    return dataclasses.replace(piece, region_jac=view)


def region_subset(rows: LinearRows, keep: np.ndarray) -> tuple[LinearRows, np.ndarray]:
    """``rows`` (from :func:`rows_on`) with only the region rows ``keep``, the layer's own
    rows as they are (so their equalities' SVD is not taken again); and where each of the
    subset's inequality rows sits among ``rows``'s (an LP over the subset can hand its
    model on to one over ``rows``: :class:`collide.piecewise.lp.Start`).
    Shapes: keep (lazy,); returns the subset and (U',)"""
    take = np.concatenate([np.ones(len(rows.b_ub) - rows.lazy, dtype=bool), keep])
    subset = dataclasses.replace(rows, a_ub=rows.a_ub[take], b_ub=rows.b_ub[take], lazy=int(keep.sum()))
    return subset, np.flatnonzero(take)


def tie_broken_piece(
    model: nn.Module, layer: Site, target: torch.Tensor, piece: AffinePiece, tied: np.ndarray,
    direction: np.ndarray, t_pre: np.ndarray,
) -> AffinePiece | None:
    """The linear piece next to the target that ``direction`` enters, or None.

    Re-linearises at ``x0 + step·direction``, where every tie that ``direction`` breaks
    at first order is broken its way. The step moves no coordinate by more than
    ``TIE_STEP`` and stays below half the distance at which ``direction`` would cross an
    untied row of the target's piece; the piece found must still hold the target in its
    closure (with the target's pre-activation there), else the step shrinks. Its region
    rows are asked for compressed where the target's are (:func:`affine_piece`).

    Shapes:
        target: (*input); tied: (R,); direction: (d,); t_pre: (D,)
    """
    x0 = target.double().flatten().numpy()
    step = TIE_STEP / np.abs(direction).max()
    # Products over every row, then the untied ones: indexing the rows first copies them.
    rate = (piece.region_jac @ direction)[~tied]
    slack = (piece.region_bound - piece.region_jac @ x0)[~tied]
    crossing = slack[rate > 0] / rate[rate > 0]
    if len(crossing):
        step = min(step, 0.5 * float(crossing.min()))
    for _ in range(TIE_TRIES):
        moved = torch.from_numpy(x0 + step * direction).view(target.shape)
        adjacent = affine_piece(model, layer, moved, sparse=sp.issparse(piece.region_jac))
        if _contains(adjacent, x0, t_pre):
            return adjacent
        step /= TIE_SHRINK
    return None


def same_piece(a: AffinePiece, b: AffinePiece) -> bool:
    """Whether two linearisations picked the same piece: within a piece the Jacobians are
    computed by the same operations on the same weights, so they agree bit for bit."""
    return _same_rows(a.region_jac, b.region_jac) and np.array_equal(a.jac, b.jac)


def _same_rows(a: np.ndarray | sp.csr_array, b: np.ndarray | sp.csr_array) -> bool:
    """Whether two pieces' region rows, dense or compressed, hold the same entries."""
    if a.shape != b.shape:
        return False
    if sp.issparse(a) and sp.issparse(b):
        # Both canonical (column order within each row, no explicit zeros: affine_piece).
        return (np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
                and np.array_equal(a.data, b.data))
    return np.array_equal(a.toarray() if sp.issparse(a) else a, b.toarray() if sp.issparse(b) else b)
