"""The row space of the collision layer's equality rows, from one SVD.

The rows ``J⁺x = b`` (one per positive unit) can be linearly dependent: a layer right
after a linear bottleneck has more units than the bottleneck has values, and every unit
is a combination of those values. MNASNet's ``layers.10.1.layers.5`` at 24 px has 783
positive units whose rows span only 277 dimensions (the singular values drop from 1e-1
to 1e-16 at once). HiGHS, run without presolve on these dense rows, then carries 506
redundant equalities in every basis: one vertex took 658 s, where the same LP with an
orthonormal basis of the row space as its equalities took 132 s to the same optimum
(relative 1e-10; one-off, 2026-12-06, two LPs sharing 2 cores). A subset of the
original rows spanning the same space (pivoted QR) was slower still: those rows are
nearly parallel.

:func:`independent_rows` therefore leaves independent rows as they are (the MNIST
models' vertices keep their bits) and replaces dependent ones by ``Vᵣᵀx = Σᵣ⁻¹Uᵣᵀb``,
the SVD taken of the rows scaled to unit norm (HiGHS sees each row at its own scale, so
a row far smaller than the others is not a zero row). That is the same affine subspace
wherever the rows are consistent, as they are at the target; rows that are not keep
their own form, and the LP says what it makes of them. Ranks use numpy's
``matrix_rank`` cut-off (:func:`rank_of`), as the collision set's dimension does.
"""

from __future__ import annotations

import numpy as np
import torch

# Rows whose unit-norm Gram matrix has its smallest eigenvalue above this have smallest
# singular value above 1e-4, far above rank_of's cut-off (about 1e-12 of the largest):
# independent, without an SVD. The eigenvalues' own error is near 1e-16 x the rows.
GRAM_FLOOR = 1e-8


# Unit-norm rows whose right-hand sides lie this close to their row space (relative to
# 1 + max|b|) are consistent: the target meets its own piece's rows to rounding and an
# adjacent piece's to the tie tolerance (collide.piecewise.pieces.TIE_TOL, also 1e-9).
CONSISTENT_TOL = 1e-9


def rank_of(singular: np.ndarray, shape: tuple[int, ...]) -> int:
    """The rank of a matrix of ``shape`` with these singular values, at numpy's
    ``matrix_rank`` cut-off (largest x max(shape) x float64 eps)."""
    return int((singular > singular.max(initial=0.0) * max(shape) * np.finfo(np.float64).eps).sum())


def svd(a: np.ndarray, *, full: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u, s, vt`` of ``a`` in float64, by torch: its thread count is what the engine
    fixes per job, so a job's factors are the same bits wherever it runs (numpy's BLAS
    rounds differently with its thread count). Shapes: a (m, n)"""
    u, s, vt = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(a)), full_matrices=full)
    return u.numpy(), s.numpy(), vt.numpy()


def clearly_independent(a: np.ndarray) -> bool:
    """Whether the rows of ``a`` are independent by a margin (:data:`GRAM_FLOOR`), judged
    on the rows scaled to unit norm, from their Gram matrix: 1.3 ms on 130 rows over 784
    columns (the MNIST MLP's relu1; median, one-off, 2026-12-06, 2 loaded cores), where
    the SVD takes longer. Shapes: a (m, n)"""
    m, n = a.shape
    if m > n:
        return False
    norms = np.linalg.norm(a, axis=1)
    if not (norms > 0).all():
        return False
    unit = a / norms[:, None]
    return bool(np.linalg.eigvalsh(unit @ unit.T)[0] > GRAM_FLOOR)


def independent_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with the solutions of ``a x = b``: ``a`` and ``b`` themselves where the rows
    are independent (at unit norm) or inconsistent, else an orthonormal basis of their
    row space and its right-hand sides (see the module docstring).
    Shapes: a (m, n); b (m,) -> (r, n), (r,)"""
    if len(a) == 0 or clearly_independent(a):
        return a, b
    norms = np.linalg.norm(a, axis=1)
    b = np.asarray(b, dtype=np.float64)
    if (b[norms == 0] != 0).any():  # 0 = b ≠ 0: no point meets it
        return a, b
    keep = norms > 0  # 0 = 0 holds everywhere
    unit, unit_b = a[keep] / norms[keep, None], b[keep] / norms[keep]
    u, s, vt = svd(unit)
    r = rank_of(s, unit.shape)
    if r == len(a):
        return a, b
    along = (torch.from_numpy(u[:, :r].T.copy()) @ torch.from_numpy(unit_b)).numpy()
    off = unit_b - (torch.from_numpy(u[:, :r].copy()) @ torch.from_numpy(along)).numpy()
    if np.abs(off).max(initial=0.0) > CONSISTENT_TOL * (1 + np.abs(unit_b).max(initial=0.0)):
        return a, b
    return vt[:r], along / s[:r]
