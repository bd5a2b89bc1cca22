"""A collision set in the coordinates of its affine hull, where the sampler walks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from collide.piecewise.ball import Ball
from collide.piecewise.collision_set import CollisionSet, mm, moving_rows
from collide.piecewise.row_space import rank_of


@dataclass(frozen=True)
class HullPolytope:
    """C in coordinates of its affine hull: ``x = origin + basis @ z``, ``C = {z : g z ≤ h}``.

    ``basis`` has orthonormal columns, so ‖z‖ is the distance to ``origin`` (the target)
    and ``w = basisᵀ u`` turns a unit direction u of the hull into one of z. Rows
    constant on the hull (pinned to equality, or in the equalities' span) are left out:
    they hold at every point of it.

    Shapes: origin (d,); basis (d, k); g (m, k); h (m,)
    """

    origin: np.ndarray
    basis: np.ndarray
    g: np.ndarray
    h: np.ndarray

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def coords(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k)"""
        return mm(x - self.origin, self.basis)


def hull_polytope(cs: CollisionSet, basis: np.ndarray) -> HullPolytope:
    """C's rows, box included, in the coordinates of the flat ``cs.origin + span(basis)``."""
    a_all, b_all = cs.all_rows()
    g = mm(a_all, basis)
    moves = moving_rows(a_all, np.linalg.norm(g, axis=1))
    return HullPolytope(cs.origin, basis, np.ascontiguousarray(g[moves]), (b_all - mm(a_all, cs.origin))[moves])


def hull_frame(cs: CollisionSet, ball: Ball, flat: Ball | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The affine hull's orthonormal basis, a point strictly inside C within it, and the
    rows that move on the hull (the others, pinned to equality or constant on it, hold at
    every point of the hull since the target meets them).

    Shapes: -> (d, k'), (d,), (m + 2d,) bool
    """
    a_all, _ = cs.all_rows()
    basis, centre = cs.basis, ball.center
    if flat is not None:
        # The subspace cut down by the rows pinned to equality.
        _, s_t, vt_t = torch.linalg.svd(torch.from_numpy(mm(a_all[flat.pinned], cs.basis)), full_matrices=True)
        rank = rank_of(s_t.numpy(), (len(s_t), cs.free_dim))
        basis, centre = mm(cs.basis, vt_t.numpy()[rank:].T), flat.center
    # On the set's own subspace, the reach the ball LP used: the same rows move for both.
    reach = cs.reach_all() if flat is None else np.linalg.norm(mm(a_all, basis), axis=1)
    return basis, centre, moving_rows(a_all, reach)
