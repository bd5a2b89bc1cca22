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
:mod:`collide.piecewise.lp`: HiGHS, with the region rows added only where a solution
violates them; the vertices' LPs run side by side on ``ExactConfig.threads`` threads).
The affine map and the region rows come from :mod:`collide.piecewise.linearise`; an
LP too large for ``ExactConfig.max_entries`` is refused before any work
(:mod:`collide.piecewise.budget`), and every solution is checked with a real float64
forward pass: one that left the piece it was solved on is reported as ``left_region``.

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
(The rows and pieces: :mod:`collide.piecewise.pieces`.)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from collide.config import ExactConfig
from collide.errors import DataError
from collide.inputs import require_in_box
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.piecewise.budget import check_lp_size
from collide.piecewise.linearise import AffinePiece, affine_piece
from collide.piecewise.lp import FAILED, INFEASIBLE, OPTIMAL, UNBOUNDED, LpProblem, LpSolution, solve_lp
from collide.piecewise.pieces import rows_on, same_piece, tie_broken_piece, tied_rows
from collide.sites import Site
from collide.solvers.base import Found, Problem, Progress, Solver
from collide.solvers.param import Parameterisation
from collide.taps import capture, site_of
from collide.validity import Criterion

LEFT_REGION = "left_region"


__all__ = ["FAILED", "INFEASIBLE", "LEFT_REGION", "OPTIMAL", "UNBOUNDED", "ExactSolver", "solve_exact"]


# Which piece a vertex was solved on: the one autograd picked at the target, or the
# adjacent one its tie-breaking LP preferred.
PIECE_TARGET, PIECE_TIE_BROKEN = "target", "tie-broken"


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


def _solve(problem: LpProblem, config: ExactConfig) -> LpSolution:
    return solve_lp(problem, lower=config.lower, upper=config.upper, tol=config.feasibility_tol,
                    solver=config.lp_solver)


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
    require_in_box(target, "the target", config.lower, config.upper)
    require_in_box(init, "the init", config.lower, config.upper)
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
    tied = tied_rows(piece, x0) if break_ties else np.zeros(len(piece.region_bound), dtype=bool)
    unit_list = units.tolist()
    for unit in unit_list:
        if pos[unit]:
            raise DataError(f"unit {unit} is positive for the target: push a non-positive unit")
    # λ from the target's piece throughout: the same trade-off on either piece.
    lams = [config.proximity * float(np.abs(piece.jac[unit]).mean()) for unit in unit_list]
    rows = rows_on(piece, t_pre, pos)
    loose_rows = rows_on(piece, t_pre, pos, ~tied)

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
                adjacent = tie_broken_piece(model, site, target, piece, tied, direction, t_pre)
                if adjacent is not None and not same_piece(adjacent, piece):
                    second = _solve(LpProblem(rows_on(adjacent, t_pre, pos), adjacent.jac[unit], lam, x_init),
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


class ExactSolver(Solver):
    """The exact solver (:func:`solve_exact`, :class:`ExactConfig`): a vertex counts only
    where its LP ended ``optimal``. Its LPs are per vertex, so targets run one after another."""

    method = "exact"
    config_type = ExactConfig

    @property
    def criterion(self) -> Criterion:
        return dataclasses.replace(super().criterion, outcome=OPTIMAL)

    @property
    def loss_name(self) -> str:
        return "lp"

    def solve(
        self, model: nn.Module, site: Site, problems: list[Problem], *, device: str,
        param: Parameterisation | None, progress: Progress | None,
    ) -> list[Found]:
        found = []
        for pr in problems:
            ex = solve_exact(model, site, pr.target, pr.init, pr.units, config=self.config)
            found.append(Found(ex.vertices, None, {
                "seconds": ex.seconds, "converged": all(o == OPTIMAL for o in ex.outcomes),
                "outcomes": list(ex.outcomes), "input_dim": ex.input_dim, "n_positive": ex.n_positive,
                "rank_positive": ex.rank_positive, "dim_upper_bound": ex.dim_upper_bound}, pr.init))
        return found
