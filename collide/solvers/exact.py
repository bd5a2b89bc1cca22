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
:mod:`collide.piecewise.lp`: HiGHS, with the inequality rows added only where a solution
violates them; the vertices' LPs run side by side on ``ExactConfig.threads`` threads).
Equality rows that are linearly dependent (a layer after a linear bottleneck) reach the
dense form's LP as an orthonormal basis of their row space
(:mod:`collide.piecewise.row_space`); the layered form keeps them as they are.
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
   if the target lies in its closure (its model starts with the rows that bound step 1's
   answer, a guess at the rows that bind that saves rounds, not a change to the LP);

and keeps whichever of the two answers has the lower objective (the pushed unit plus the
L1 term, with the same λ on both pieces): the better vertex of the two pieces together.
Both LPs stay in one linear piece, so both answers are exact; :attr:`ExactResult.pieces`
says which was kept. The LP on the target's piece runs after the chain, carried on from
the model of step 1 (the same LP less the tied rows, with the same costs: its dual simplex
stays dual feasible as the tied rows come in), and stops as soon as its optimum is known
to lie above the adjacent vertex's objective (``outdone``: HiGHS's dual simplex proves a
lower bound on its way; see :func:`collide.piecewise.highs.solve_lazily`), by a margin
that covers the solver's and the region check's tolerances, so the vertex kept is the one
a full solve of both would keep. Without ties (a first
layer, an MLP off its ReLU kinks) nothing changes.
(The rows and pieces: :mod:`collide.piecewise.pieces`.)
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from collide.activations import Saturation
from collide.config import ExactConfig
from collide.copies import cast_copy
from collide.errors import ConfigError, DataError
from collide.inputs import require_in_box
from collide.objective import feature_rel_error, max_regime_violation
from collide.piecewise.budget import check_lp_size
from collide.piecewise.layered_lp import (
    LayeredLp,
    LayeredSolution,
    Linear,
    adjacent_piece,
    build_lp,
    linear_on,
    piece_at,
    solve_layered,
    tied,
)
from collide.piecewise.layers import LayeredUnsupported, layered_net
from collide.piecewise.linearise import AffinePiece, affine_piece
from collide.piecewise.lp import (
    FAILED,
    INFEASIBLE,
    OPTIMAL,
    OUTDONE,
    UNBOUNDED,
    LinearRows,
    LpFamily,
    LpSolution,
    Start,
    lp_family,
)
from collide.piecewise.pieces import (
    TIE_SHRINK,
    TIE_STEP,
    TIE_TOL,
    TIE_TRIES,
    reading_rows,
    region_subset,
    rows_on,
    same_piece,
    tie_broken_piece,
    tied_rows,
)
from collide.sites import MAX_POOL, Site, function_of, require_method
from collide.solvers.base import Found, Problem, Progress, Solver
from collide.solvers.param import Parameterisation
from collide.taps import capture, region_events, site_of
from collide.threads import one_blas_thread
from collide.validity import Criterion
from collide.workers import job_cores

LEFT_REGION = "left_region"


__all__ = ["FAILED", "INFEASIBLE", "LEFT_REGION", "OPTIMAL", "UNBOUNDED", "ExactSolver", "LayeredUnsupported",
           "solve_exact"]


# Which piece a vertex was solved on: the one autograd picked at the target, or the
# adjacent one its tie-breaking LP preferred.
PIECE_TARGET, PIECE_TIE_BROKEN = "target", "tie-broken"


@dataclass(frozen=True)
class ExactResult:
    """Vertices from :func:`solve_exact`, with the polytope's dimension facts.

    ``vertices[k]`` is NaN where ``outcomes[k]`` is not ``optimal``. ``rank_positive``
    is the rank of J⁺, the rows of the layer's Jacobian (at the target, in float64) for
    the target's positive units; -1 where the layered LP was solved and J⁺, dense over
    the input, would pass ``ExactConfig.max_entries`` (``dim_upper_bound`` is then -1 too).
    ``form`` says which LP was solved: ``dense`` or ``layered`` (:func:`solve_exact`).
    ``pieces[k]`` says which linear piece vertex k was solved on: ``"target"`` (the one
    autograd picked at the target) or ``"tie-broken"`` (an adjacent one, where the target
    sits on a tie; see :mod:`collide.solvers.exact`): the one whose answer has the lower
    objective, the LP's own (pushed unit plus the L1 term).
    ``lp_work[k]``: what vertex k cost: LPs solved, their rounds of added rows, the most
    region rows one of them held, the region rows there were, and how many of its LPs
    stopped ``outdone`` (the LP on the target's piece, once the adjacent vertex beat it).
    (A vertex's tie-breaking LPs run before its LP on the target's piece, so they count
    even where that LP failed and their answer was not used.)
    ``rel_error`` and ``violation`` are those of the LP's float64 solution, before it is
    stored as the float32 ``vertices``, whose rounding adds its own error (1.4e-7 relative
    on the survey's MNASNet vertex at 24 px, where this is 2.4e-12); the solvers' validity
    check (:mod:`collide.validity`) reads the stored vertex instead.

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
    form: str = "dense"

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
        return self.input_dim - self.rank_positive if self.rank_positive >= 0 else -1


def _family(rows: LinearRows, x_init: np.ndarray, config: ExactConfig) -> LpFamily:
    return lp_family(rows, x_init, lower=config.lower, upper=config.upper, tol=config.feasibility_tol,
                     solver=config.lp_solver)


LP_FORMS = ("auto", "dense", "layered")


# The LP on the target's piece stops once its optimum is known to exceed the adjacent
# vertex's objective by more than this, relative to 1 + |that objective| (at least 1e3 x
# the LP's feasibility tolerance, far above what HiGHS's bound can be off by), plus the
# region check's own allowance (region_allowance): the candidates are compared by forward
# passes that may differ from their pieces' linear maps by that much.
OUTDONE_MARGIN = 1e-6


def region_allowance(t_pre: np.ndarray, region_tol: float) -> float:
    """How far a vertex's float64 forward pass may stray from its piece's linear map at the
    layer and still count as on the piece: ``region_tol`` relative to the target's largest
    pre-activation there (absolute where that is 0). Relative, not ``1 + max|t|`` as before:
    a deep layer of a randomly initialised model can have pre-activations near 3e-8, where
    the absolute part let a point that left its piece pass the check."""
    scale = float(np.abs(t_pre).max())
    return region_tol * (scale if scale > 0 else 1.0)


def _outdone_bound(beaten: float, t_pre: np.ndarray, config: ExactConfig) -> float:
    """The objective the LP on the target's piece must exceed to be ``outdone`` by an
    adjacent vertex of objective ``beaten``: a full solve of both would then keep the
    adjacent vertex too."""
    relative = max(OUTDONE_MARGIN, 1e3 * config.feasibility_tol)
    return beaten + relative * (1 + abs(beaten)) + region_allowance(t_pre, config.region_tol)


@dataclass(frozen=True)
class _Candidate:
    """A candidate vertex: the layer's pre-activation on the piece it was solved on (a
    function of x), the point, the LP's outcome and, where it was checked already, the
    layer's pre-activation at the point by a real float64 forward pass."""

    linear: Callable[[np.ndarray], np.ndarray]
    x: np.ndarray
    outcome: str
    pre: torch.Tensor | None = None


@dataclass(frozen=True)
class _Handoff:
    """What a vertex's tie-breaking chain hands its LP on the target's piece: the objective
    above which that LP stops, ``outdone`` (the adjacent vertex's, with a margin), and the
    model of the LP without the tied rows to carry on from (dense form; None where it did
    not end optimal)."""

    bound: float = math.inf
    start: Start | None = None


@dataclass(frozen=True)
class _Found:
    per_vertex: list[list[_Candidate]]
    lp_work: tuple[dict[str, int], ...]
    t_pre: np.ndarray
    rank: int
    form: str
    lams: list[float]


class _Check:
    """The float64 forward pass every candidate is checked with: it must stay on the piece
    it was solved on. One copy of the model; the chains' threads take turns (its hooks
    would otherwise collect each other's calls)."""

    def __init__(self, model: nn.Module, site: Site, shape: torch.Size, region_tol: float) -> None:
        self.net = cast_copy(model).eval()
        self.site, self.shape, self.region_tol = site, shape, region_tol
        self.lock = threading.Lock()

    def features(self, points: np.ndarray) -> torch.Tensor:
        """The layer's pre-activation at each point (NaN read as 0). Shapes: (n, d) → (n, D)"""
        with self.lock, torch.no_grad():
            return capture(self.net, torch.from_numpy(np.nan_to_num(points)).view(len(points), *self.shape),
                           self.site)

    def on_piece(self, candidate: _Candidate, pre: torch.Tensor, t_pre: np.ndarray) -> bool:
        lin = torch.from_numpy(candidate.linear(np.nan_to_num(candidate.x)))
        return not bool((pre - lin).abs().amax() > region_allowance(t_pre, self.region_tol))


def _objective(pushed: float, x: np.ndarray, x_init: np.ndarray, lam: float) -> float:
    """What a vertex's LP minimises, at ``x``: the pushed unit's value (signed so that
    lower is deeper in its flat piece) plus ``lam`` times the L1 distance to the init."""
    return pushed + lam * float(np.abs(x - x_init).sum())


def chosen_form(form: str) -> str:
    """``dense`` or ``layered``: ``auto`` is ``dense``, any other form as given.

    Measured side by side (benchmarks/exact_forms.py, 2 cores), the dense form wins
    wherever it fits ``ExactConfig.max_entries``: its region rows enter lazily and few
    bind, while the layered LP carries every layer's equality rows (LeNet-5 at ``relu3``:
    15,143 rows, 14,296 columns, 9,410 dual simplex iterations for one vertex). Past the
    budget the dense form is refused, as ``max_entries`` promises, rather than switched
    silently to a form that may run for many minutes (ResNet-18 at layer2.1.relu#1, from
    the image's mirror: no layered vertex within 9 minutes at 16, 32 or 64 px, where the
    dense form took 17 s at 16 px); ``form="layered"`` asks for it.
    """
    if form not in LP_FORMS:
        raise ConfigError(f"expected form in {LP_FORMS}, got {form!r}")
    return "dense" if form == "auto" else form


# A polytope whose LP rows hold at most this many entries (rows x input coordinates,
# 8 MiB in float64) runs all its LPs at once under threads=0: measured faster than one
# per core for the MNIST MLP, slower for LeNet-5 (see _threads).
AT_ONCE_ENTRIES = 2**20


def _threads(n: int, config: ExactConfig, *, small: bool) -> int:
    """How many threads a polytope's ``n`` tasks run on.

    Its vertices' LPs are independent: they run side by side (HiGHS releases the GIL);
    only the Jacobians of re-linearisation take turns (_TRANSFORMS). ``threads=0``: the
    cores this job may take (on a Dask worker its share of the host's, not every core).
    Small LPs (``small``) then all run at once: a few equal LPs on fewer cores leave a core
    idle for the last wave (5 LPs on 2 cores: three waves where 2.5 would do), and sharing
    the cores instead took the MNIST MLP's relu1 polytope from 0.31-0.34 s to 0.28-0.30 s.
    LeNet-5's relu3 LPs (7 M entries of rows) were slower run all at once (11 on 2 cores:
    5.8 s against 5.0 s), so larger LPs keep one per core.
    """
    return min(config.threads or (n if small else job_cores()), n)


def _with_chains(first_of: Callable[[int, _Handoff], Any], chain_of: Callable[[int], tuple[Any, _Handoff]], n: int,
                 ties: bool, config: ExactConfig, *, beside: Callable[[], Any], small: bool = False
                 ) -> tuple[list[tuple[Any, Any]], Any]:
    """Each vertex's LP on the target's piece, and where the target sits on ties its
    tie-breaking chain (the LP without the tied rows, the adjacent piece, the LP there;
    None without ties), as ``(first, chain)`` per vertex.

    ``chain_of(k)`` returns its result and a :class:`_Handoff`: ``first_of(k, handoff)``
    runs once chain k is done (an empty one without ties), may carry on from the model it
    hands over and may stop once its LP cannot beat its bound. On several threads the
    chains go first and each queues its vertex's first LP as it ends, so the threads stay
    evenly busy to the end (one task per vertex, chain and LP together, left one thread
    with three of LeNet-5's five vertices); on one, each chain is followed by its LP.

    ``beside`` (work no vertex waits for, J⁺'s rank) is one task more, the last, and its
    result comes second: it takes the thread the LPs leave idle first. On the MNIST MLP's
    relu1, 5 LPs on 2 threads leave one idle for an LP's time, and the rank's SVD there
    took the polytope from 0.37-0.39 s to 0.33 s. The price: its copy of J⁺ and the SVD's
    workspace now live beside the LPs' models, and the SVD runs on one BLAS thread; on a
    J⁺ near the budget it is the run's tail only where it outlasts the last LP.

    ``small``: the LPs are small enough to run all at once (see ``_threads``). The answers
    do not depend on the threads: each LP's bound comes from its own vertex's chain.
    """
    threads = _threads((2 * n if ties else n) + 1, config, small=small)
    # One BLAS thread under each LP thread, and under a single one too: there the BLAS
    # threads took a second core and saved no time (collide.threads.one_blas_thread).
    # A handoff is dropped once its LP has taken it: the solver model it may carry would
    # otherwise stay alive, one per vertex, until every LP is done.
    with one_blas_thread():
        if threads <= 1:
            chains, firsts = [], []
            for k in range(n):
                chain, handoff = chain_of(k) if ties else (None, _Handoff())
                chains.append(chain)
                firsts.append(first_of(k, handoff))
            aside = beside()
        else:
            with ThreadPoolExecutor(threads) as pool:
                queued: list[Future[Any] | None] = [None] * n

                def chain_then_queue(k: int) -> Any:
                    chain, handoff = chain_of(k)
                    queued[k] = pool.submit(first_of, k, handoff)
                    return chain

                if ties:
                    chains = [f.result() for f in [pool.submit(chain_then_queue, k) for k in range(n)]]
                else:
                    chains = [None] * n
                    queued = [pool.submit(first_of, k, _Handoff()) for k in range(n)]
                later = pool.submit(beside)  # queued behind every LP
                firsts = [f.result() for f in queued if f is not None]
                aside = later.result()
    return list(zip(firsts, chains, strict=True)), aside


def _candidates(on_target: _Candidate, adjacent: _Candidate | None) -> list[_Candidate]:
    """A vertex's candidates: its LP's answer on the target's piece, then the adjacent
    piece's where its chain found one (kept even where the LP on the target's piece failed:
    each answer is checked on its own piece)."""
    return [on_target] if adjacent is None else [on_target, adjacent]


def flat_pieces(site: Site) -> Saturation:
    """The collision layer's flat pieces, where the exact LP keeps the saturated units
    (ReLU: z ≤ 0); refused where the layer's activation has none the LP models."""
    require_method(site, "exact")
    return function_of(site).at(0.0)


def _require_saturated(free: np.ndarray, units: list[int]) -> None:
    for unit in units:
        if free[unit]:
            raise DataError(f"unit {unit} is not in a flat piece of the activation for the target (ReLU: it is "
                            "positive): push a unit the target has saturated")


def _dense(model: nn.Module, site: Site, target: torch.Tensor, x_init: np.ndarray, unit_list: list[int], *,
           config: ExactConfig, break_ties: bool, check: _Check) -> _Found:
    check_lp_size(model, site, target, max_entries=config.max_entries)
    piece = affine_piece(model, site, target, sparse=True)
    x0 = target.double().flatten().numpy()
    t_pre = piece.jac @ x0 + piece.offset
    sat = flat_pieces(site)
    pos = ~sat.saturated(t_pre)
    sign = sat.sign(t_pre)  # deeper in an upper flat piece is higher: maximise there
    tied = tied_rows(piece, x0) if break_ties else np.zeros(len(piece.region_bound), dtype=bool)
    _require_saturated(pos, unit_list)
    # λ from the target's piece throughout: the same trade-off on either piece.
    lams = [config.proximity * float(np.abs(piece.jac[unit]).mean()) for unit in unit_list]
    # Every vertex's LPs on the target's piece share their rows: written for the solver once.
    target_rows = rows_on(piece, t_pre, sat)
    piece = reading_rows(piece, target_rows)
    target_lps = _family(target_rows, x_init, config)
    # The LP without the tied rows hands its model on to the target piece's LP (the same
    # cost and columns): ``loose_index`` says where its rows sit among the target piece's.
    loose_lps, loose_index = None, np.zeros(0, dtype=np.int64)
    if tied.any():
        loose_rows, loose_index = region_subset(target_rows, ~tied)
        loose_lps = _family(loose_rows, x_init, config)

    def on(p: AffinePiece) -> Callable[[np.ndarray], np.ndarray]:
        # The layer's map alone: a candidate lives to the end of the solve, and holding
        # its whole piece kept each adjacent piece's region rows too (56 MB a vertex on
        # LeNet-5's relu3), so that every re-linearisation wrote to memory never touched
        # before, which costs page faults (0.15 s a vertex on this 2-core VM).
        jac, offset = p.jac, p.offset
        return lambda x: x @ jac.T + offset

    def first_of(k: int, handoff: _Handoff) -> LpSolution:
        """Vertex k's LP on the target's piece, carried on from its LP without the tied rows
        where that ended optimal; it stops once its objective is known to exceed the
        adjacent vertex's (``handoff.bound``, which in the LP's own terms leaves out the
        pushed unit's offset on this piece)."""
        unit = unit_list[k]
        return target_lps.solve(sign[unit] * piece.jac[unit], lams[k],
                                stop_above=handoff.bound - sign[unit] * piece.offset[unit], start=handoff.start)

    def chain_of(k: int) -> tuple[tuple[_Candidate | None, list[LpSolution]], _Handoff]:
        """Vertex k's candidate on the adjacent piece its tie-free LP points to (None where
        there is none) and the LPs solved for it; and what its LP on the target's piece
        takes over: the tie-free LP's model, and the bound it need not beat (the
        candidate's objective, where it is optimal and on its piece)."""
        unit, lam = unit_list[k], lams[k]
        # Without the tied rows the LP may leave the piece: it only says which way to
        # break the ties. Its objective keeps the target's Jacobian.
        loose = loose_lps.solve(sign[unit] * piece.jac[unit], lam, keep=True)
        start = Start(loose.solved, loose_index) if loose.solved is not None else None
        loose = dataclasses.replace(loose, solved=None)  # the model is the next LP's now
        direction = loose.x - x0
        if loose.outcome != OPTIMAL or not np.abs(direction).max() > 0:
            return (None, [loose]), _Handoff(start=start)
        adjacent = tie_broken_piece(model, site, target, piece, tied, direction, t_pre)
        if adjacent is None or same_piece(adjacent, piece):
            return (None, [loose]), _Handoff(start=start)
        # The rows that bind the LP without the tied rows, at the same places among the
        # adjacent piece's rows, go in from the start: a guess at the rows that bind there
        # (on LeNet-5's relu3 it held about a quarter of them and saved a round or two). Only
        # where both pieces have as many rows of each kind: a place then mostly holds the
        # same ReLU unit's or pool pair's row on both. A wrong guess costs time only.
        aligned = (adjacent.n_relu_rows, adjacent.n_pool_rows) == (piece.n_relu_rows, piece.n_pool_rows)
        seed = loose_index[start.solved.binding()] if aligned and start is not None else None
        adjacent_lps = _family(rows_on(adjacent, t_pre, sat), x_init, config)
        cost, layer_map = sign[unit] * adjacent.jac[unit], on(adjacent)
        del adjacent  # its region rows: the LPs' rows are a copy of them
        second = adjacent_lps.solve(cost, lam, seed=seed)
        candidate = _Candidate(layer_map, second.x, second.outcome)
        if second.outcome != OPTIMAL:
            return (candidate, [loose, second]), _Handoff(start=start)
        pre = check.features(second.x[None])[0]
        candidate = dataclasses.replace(candidate, pre=pre)
        if not check.on_piece(candidate, pre, t_pre):
            return (candidate, [loose, second]), _Handoff(start=start)
        beaten = _objective(float(sign[unit] * pre[unit]), second.x, x_init, lam)
        return (candidate, [loose, second]), _Handoff(_outdone_bound(beaten, t_pre, config), start)

    def rank() -> int:
        return int(np.linalg.matrix_rank(piece.jac[pos])) if pos.any() else 0

    rows = target_lps.rows
    small = (len(rows.b_ub) + len(rows.b_eq)) * len(x0) <= AT_ONCE_ENTRIES
    chains, rank_positive = _with_chains(first_of, chain_of, len(unit_list), loose_lps is not None, config,
                                         beside=rank, small=small)
    per_vertex = []
    for first, chain in chains:
        candidate, solved = chain if chain is not None else (None, [])
        per_vertex.append((_candidates(_Candidate(on(piece), first.x, first.outcome), candidate), [first, *solved]))
    lp_work = tuple({"lps": len(solved), "rounds": sum(sol.rounds for sol in solved),
                     "region_rows": max(sol.region_rows_used for sol in solved),
                     "region_rows_total": len(piece.region_bound),
                     "outdone": sum(sol.outcome == OUTDONE for sol in solved)} for _, solved in per_vertex)
    return _Found([c for c, _ in per_vertex], lp_work, t_pre, rank_positive, "dense", lams)


def _layered(model: nn.Module, site: Site, target: torch.Tensor, x_init: np.ndarray, unit_list: list[int], *,
             config: ExactConfig, break_ties: bool, check: _Check) -> _Found:
    net = layered_net(model, site, target)
    x0 = target.double().flatten().numpy()
    piece = piece_at(net, [c.value for c in net.calls[:-1]])
    lin = linear_on(net, piece)
    t_pre = net.calls[-1].value
    pos = ~flat_pieces(site).saturated(t_pre)
    _require_saturated(pos, unit_list)
    d = net.input_dim
    lams = [config.proximity * float(np.abs(row).mean()) for row in lin.rows(np.array(unit_list))]
    ties = tied(net, piece, lin, x0, TIE_TOL) if break_ties else tuple(np.zeros(0, bool) for _ in net.calls[:-1])
    any_tie = any(t.any() for t in ties)
    box = {"lower": config.lower, "upper": config.upper}
    lp = build_lp(net, piece, lin, x_init, **box)
    loose_lp = build_lp(net, piece, lin, x_init, free=ties, **box) if any_tie else None
    n_region = int(sum(c.size for c in net.calls[:-1] if c.kind != MAX_POOL)) + lp.matrix.shape[0] - sum(
        c.size for c in net.calls)
    def read(x: np.ndarray) -> list[np.ndarray]:
        # The checker's float64 copy, and its lock: region_events hooks the model it reads.
        with check.lock, torch.no_grad():
            events = region_events(check.net, torch.from_numpy(x).view(1, *target.shape), site)
        return [e.value.flatten().numpy() for e in events[:-1]]

    def solve(p: LayeredLp, unit: int, lam: float) -> LayeredSolution:
        return solve_layered(p, site, t_pre, unit, lam, lower=config.lower, upper=config.upper,
                             tol=config.feasibility_tol)

    def on(p: Linear) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: p.values(x)[-1]

    def first_of(k: int, _handoff: _Handoff) -> LayeredSolution:
        # Solved to the end: the layered LP has no lazy rounds to stop between.
        return solve(lp, unit_list[k], lams[k])

    def chain_of(k: int) -> tuple[tuple[_Candidate | None, int], _Handoff]:
        """Vertex k's candidate on the adjacent piece (None where there is none), and the
        LPs solved for it."""
        unit, lam = unit_list[k], lams[k]
        loose = solve(loose_lp, unit, lam)
        direction = loose.x - x0
        if loose.outcome != OPTIMAL or not np.abs(direction).max() > 0:
            return (None, 1), _Handoff()
        found = adjacent_piece(net, piece, lin, ties, x0, direction, read, step=TIE_STEP,
                               shrink=TIE_SHRINK, tries=TIE_TRIES, tol=TIE_TOL)
        if found is None or found[0].same_as(piece):
            return (None, 1), _Handoff()
        adjacent, lin_adj = found
        second = solve(build_lp(net, adjacent, lin_adj, x_init, **box), unit, lam)
        return (_Candidate(on(lin_adj), second.x, second.outcome), 2), _Handoff()

    def rank() -> int:
        # J⁺ is dense over the input: its rank only where the dense budget would hold it.
        if pos.sum() * d > config.max_entries:
            return -1
        return int(np.linalg.matrix_rank(lin.rows(np.flatnonzero(pos)))) if pos.any() else 0

    chains, rank_positive = _with_chains(first_of, chain_of, len(unit_list), loose_lp is not None, config,
                                         beside=rank)
    per_vertex = []
    for first, chain in chains:
        candidate, chain_lps = chain if chain is not None else (None, 0)
        per_vertex.append((_candidates(_Candidate(on(lin), first.x, first.outcome), candidate), 1 + chain_lps))
    lp_work = tuple({"lps": n, "rounds": n, "region_rows": n_region, "region_rows_total": n_region, "outdone": 0}
                    for _, n in per_vertex)
    return _Found([c for c, _ in per_vertex], lp_work, t_pre, rank_positive, "layered", lams)


def solve_exact(
    model: nn.Module,
    layer: str | Site,
    target: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: ExactConfig,
    break_ties: bool = True,
    form: str = "auto",
) -> ExactResult:
    """Find one exact vertex per unit in ``units`` by linear programming (HiGHS).

    Where the target's piece has ties (region rows that hold with equality at the
    target), each vertex also tries the adjacent piece its LP prefers (see the module
    docstring) and keeps whichever piece's answer has the lower objective.

    Args:
        model: the classifier (not changed).
        layer: the ReLU layer where features must collide.
        target: the target input; init: where the L1 proximity term pulls.
        units: the non-positive unit each vertex minimises.
        config: see :class:`ExactConfig`.
        break_ties: False solves on the target's own piece only (for comparison).
        form: ``dense`` (rows over the input, :mod:`collide.piecewise.lp`; refused past
            ``config.max_entries``), ``layered`` (a variable vector per layer,
            :mod:`collide.piecewise.layered_lp`; no budget: its memory grows with the
            weights' nonzeros; a model it cannot read, such as a leaky ReLU before the
            layer, raises :class:`LayeredUnsupported`) or ``auto`` (:func:`chosen_form`).

    Returns:
        An :class:`ExactResult`; each optimal vertex is checked by a float64 forward
        pass and reported ``left_region`` where the layer left the piece it was solved on.
        Every LP holds the target, so one the solver calls infeasible or unbounded is
        reported ``failed``.

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
    x_init = init.double().flatten().numpy()
    unit_list = units.tolist()
    check = _Check(model, site, target.shape, config.region_tol)
    solve_form = _layered if chosen_form(form) == "layered" else _dense
    found = solve_form(model, site, target, x_init, unit_list, config=config, break_ties=break_ties, check=check)
    t_pre, candidates = found.t_pre, found.per_vertex

    # Every optimal candidate through a real float64 forward pass (where its chain did not
    # run it already): it must match its own piece. The others have no point to check.
    flat = [c for tried in candidates for c in tried]
    todo = [i for i, c in enumerate(flat) if c.pre is None and c.outcome == OPTIMAL]
    fresh = iter(check.features(np.stack([flat[i].x for i in todo])) if todo else [])
    none = torch.full((len(t_pre),), float("nan"), dtype=torch.float64)
    pre_all = torch.stack([c.pre if c.pre is not None else next(fresh) if c.outcome == OPTIMAL else none
                           for c in flat])
    tgt = torch.from_numpy(t_pre).unsqueeze(0)
    checked = []
    for c, pre in zip(flat, pre_all, strict=True):
        # Every LP here holds the target and lies in the box: a solver that calls one
        # infeasible or unbounded has failed, and saying otherwise would claim no collision.
        outcome = FAILED if c.outcome in (INFEASIBLE, UNBOUNDED) else c.outcome
        checked.append(LEFT_REGION if (outcome == OPTIMAL and not check.on_piece(c, pre, t_pre)) else outcome)

    # Per vertex, the candidate that stayed on its piece with the lowest objective (the
    # pushed unit, deepest in its flat piece, plus the L1 term); the target's piece's
    # answer where none did. A target-piece LP that its chain's vertex outdid is never kept.
    sat = flat_pieces(site)
    sign = sat.sign(tgt[0])
    vertices, outcomes, pieces, pre_rows = [], [], [], []
    at = 0
    for k, (unit, tried) in enumerate(zip(units.tolist(), candidates, strict=True)):
        here = range(at, at + len(tried))
        good = [i for i in here if checked[i] == OPTIMAL]
        best = min(good, key=lambda i: _objective(float(sign[unit] * pre_all[i, unit]), flat[i].x, x_init,
                                                 found.lams[k])) if good else at
        vertices.append(flat[best].x)
        outcomes.append(checked[best])
        pieces.append(PIECE_TARGET if best == at else PIECE_TIE_BROKEN)
        pre_rows.append(pre_all[best])
        at += len(tried)

    verts = torch.from_numpy(np.stack(vertices)).view(len(vertices), *target.shape)
    pre = torch.stack(pre_rows)
    rel = feature_rel_error(pre, tgt, act=sat.activation)
    viol = max_regime_violation(pre, tgt, sat=sat)
    ok = torch.tensor([o == OPTIMAL for o in outcomes])
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return ExactResult(
        vertices=verts.float(),
        outcomes=tuple(outcomes),
        rel_error=torch.where(ok, rel, nan).float(),
        violation=torch.where(ok, viol, nan).float(),
        input_dim=target.numel(),
        n_positive=int((t_pre > 0).sum()),
        rank_positive=found.rank,
        seconds=time.perf_counter() - start,
        pieces=tuple(pieces),
        lp_work=found.lp_work,
        form=found.form,
    )


class ExactSolver(Solver):
    """The exact solver (:func:`solve_exact`, :class:`ExactConfig`): a vertex counts only
    where its LP ended ``optimal``. Its LPs are per vertex, so targets run one after another."""

    method = "exact"
    config_type = ExactConfig
    exact = True

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
