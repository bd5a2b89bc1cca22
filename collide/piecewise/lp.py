"""The exact solver's linear program, and the two ways collide solves it.

Every vertex of an exact polytope is the solution of

    minimise   c·x + λ‖x − init‖₁
    subject to A_eq x = b_eq,  A_ub x ≤ b_ub,  lower ≤ x ≤ upper.

``highs`` (the default) hands HiGHS, through its own Python interface ``highspy``, the
split ``x = init + p − q`` with ``0 ≤ p ≤ upper − init`` and ``0 ≤ q ≤ init − lower``:
the L1 term becomes a linear cost on bounded columns, with no extra rows, and a
coordinate whose init sits on a bound loses the column that would leave the box. The
inequality rows (the layer's non-positive units, and the rows that model the target's
activation region: earlier ReLU signs, max-pooling winners; thousands of dense rows at
LeNet-5's ``relu3``) start out of the model and are added where the solution violates
them, a round at a time (:func:`collide.piecewise.highs.solve_lazily`), HiGHS's dual
simplex carrying on from its last basis. The answer meets every row within tolerance, so
it is an optimum of the whole LP, not of a relaxation: the rows left out never bind.
LPs that share their rows and init (the vertices of one polytope) share one
:class:`LpFamily`, which writes the rows in the split columns once.
HiGHS's tolerances and matrix-entry floor are absolute, so a row (or a cost) far below
unit size reaches it rescaled by a power of two (:data:`collide.piecewise.highs.SMALL_COEFFICIENT`),
and the lazy rows' violations are judged on the rows as HiGHS holds them.

``linprog`` is scipy's ``linprog(method="highs")`` with every row from the start and the
L1 term as ``t ≥ |x − init|`` rows: what collide did before, kept as the reference the
benchmark and the tests compare with. Both take the rows they are given: the exact
solver's equality rows reach either as :func:`collide.piecewise.pieces.rows_on` writes
them (a basis of their row space where they are dependent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.optimize
import scipy.sparse as sp

from collide.config import LP_SOLVERS
from collide.errors import ConfigError
from collide.piecewise.highs import add_rows, columnwise_lp, new_highs, row_scales, solve_lazily, unit_scale

OPTIMAL, INFEASIBLE, UNBOUNDED, FAILED = "optimal", "infeasible", "unbounded", "failed"

# An LP stopped once its optimum was known to lie above a bound it was given
# (``LpFamily.solve(..., stop_above=)``): another candidate beats it.
OUTDONE = "outdone"


@dataclass(frozen=True)
class LinearRows:
    """The LP's rows: ``a_eq x = b_eq`` and ``a_ub x ≤ b_ub``; the last ``lazy`` rows of
    ``a_ub`` are the region's (``highs`` adds every row of ``a_ub`` only where a solution
    violates it, and reports how many of the region's it took). ``a_ub`` may be compressed
    rows (``scipy.sparse.csr_array``) where few of its entries are nonzero.

    Shapes:
        a_ub: (U, d); b_ub: (U,); a_eq: (E, d); b_eq: (E,)
    """

    a_ub: np.ndarray | sp.csr_array
    b_ub: np.ndarray
    a_eq: np.ndarray
    b_eq: np.ndarray
    lazy: int = 0


@dataclass(frozen=True)
class LpProblem:
    """One vertex's LP: the rows, the cost ``c`` and the L1 weight ``lam`` around ``init``.

    Shapes:
        cost, init: (d,)
    """

    rows: LinearRows
    cost: np.ndarray
    lam: float
    init: np.ndarray


@dataclass(frozen=True)
class Solved:
    """An LP's HiGHS model as it ended (``LpFamily.solve(..., keep=True)``): the instance,
    its basis, and the family's inequality rows it took, in the order the model holds them
    after its equality rows (``order``)."""

    highs: highspy.Highs
    order: np.ndarray

    def binding(self) -> np.ndarray:
        """The family's inequality rows that bind at the optimum: nonbasic in its final
        basis, so held at their bound. Shapes: returns (k,) indices into the family's rows"""
        status = self.highs.getBasis().row_status
        first = len(status) - len(self.order)
        basic = highspy.HighsBasisStatus.kBasic
        return self.order[np.array([s != basic for s in status[first:]], dtype=bool)]


@dataclass(frozen=True)
class Start:
    """Where an LP carries on from: ``solved``, the model of an LP with the same cost and
    L1 weight over the same columns and equality rows and a subset of the inequality rows,
    which this LP's family holds at ``rows`` (one index per inequality row of the other's)."""

    solved: Solved
    rows: np.ndarray


@dataclass(frozen=True)
class LpSolution:
    """The minimiser clipped to the box (NaN unless ``outcome`` is optimal); for ``highs``,
    the rounds of added rows, how many of the region's rows the final model held and,
    where it was asked for, the model itself (:class:`Solved`).

    Shapes:
        x: (d,)
    """

    x: np.ndarray
    outcome: str
    rounds: int = 1
    region_rows_used: int = 0
    solved: Solved | None = None


def _split_columns(init: np.ndarray, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's columns, p (moves up) then q (moves down), without those a bound leaves
    no room for: each column's input coordinate, its sign and its upper bound."""
    d = len(init)
    room = np.concatenate([upper - init, init - lower])
    cols = np.flatnonzero(room > 0)
    return cols % d, np.where(cols < d, 1.0, -1.0), room[cols]


@dataclass(frozen=True)
class _Split:
    """A family's rows in the split columns, written once for every cost solved over them.

    ``model`` is the HiGHS model of the equality rows with zero cost: each LP passes it to
    its own instance (a copy inside HiGHS, no conversion from numpy) and sets its cost.
    ``ub_scale``: what each inequality row is multiplied by before HiGHS sees it
    (:func:`collide.piecewise.highs.unit_scale`; the equality rows in ``model`` already are).
    ``spread``: for compressed inequality rows, the map from input coordinates to the
    split columns (``sign`` at ``(pixel, column)``), else None.

    Shapes:
        pixel, sign, room: (n,); ub_rhs, ub_scale: (U,); spread: (d, n)
    """

    pixel: np.ndarray
    sign: np.ndarray
    room: np.ndarray
    ub_rhs: np.ndarray
    ub_scale: np.ndarray
    model: highspy.HighsLp
    spread: sp.csr_array | None = None


def _split(rows: LinearRows, init: np.ndarray, lower: float, upper: float) -> _Split:
    pixel, sign, room = _split_columns(init, lower, upper)
    n = len(pixel)
    eq_scale = row_scales(rows.a_eq)[:, None]
    eq, eq_rhs = sp.csc_matrix(rows.a_eq[:, pixel] * sign * eq_scale), (rows.b_eq - rows.a_eq @ init) * eq_scale[:, 0]
    lp = columnwise_lp(np.zeros(n), np.zeros(n), room, eq_rhs, eq_rhs, eq)
    ub_scale = row_scales(rows.a_ub)
    spread = None
    if sp.issparse(rows.a_ub):
        spread = sp.csr_array((sign, (pixel, np.arange(n))), shape=(len(init), n))
    return _Split(pixel, sign, room, rows.b_ub - rows.a_ub @ init, ub_scale, lp, spread)


def _highs(rows: LinearRows, init: np.ndarray, split: _Split, cost: np.ndarray, lam: float, lower: float,
           upper: float, tol: float, stop_above: float = math.inf, keep: bool = False,
           start: Start | None = None, seed: np.ndarray | None = None) -> LpSolution:
    d, n = len(init), len(split.pixel)
    col_cost = cost[split.pixel] * split.sign + lam
    scale = unit_scale(np.abs(col_cost).max(initial=0.0))
    # Every inequality row is taken lazily, the layer's too: on the MNIST MLP's relu1 about
    # 15 of its 150 bind at a vertex, and leaving the rest out took 13% less time.
    added = np.zeros(len(rows.b_ub), dtype=bool)
    held = np.zeros(0, dtype=np.int64)  # the rows the model holds before the first round
    if start is not None:
        # The dual simplex carries on from the other LP's optimal basis: with the same
        # costs it stays dual feasible as rows come in.
        h = start.solved.highs
        held = start.rows[start.solved.order]
        added[held] = True
    else:
        h = new_highs()
        h.setOptionValue("threads", 1)
        # Measured on the MNIST MLP's relu1 (benchmarks/exact_vs_gradient.py): presolve and
        # scaling cost more than they save on these small dense rows, with the same optima.
        h.setOptionValue("presolve", "off")
        h.setOptionValue("simplex_scale_strategy", 0)
        h.setOptionValue("primal_feasibility_tolerance", tol)
        h.setOptionValue("dual_feasibility_tolerance", tol)
        h.passModel(split.model)
        h.changeColsCost(n, np.arange(n, dtype=np.int32), col_cost * scale)

    def point(moves: np.ndarray) -> np.ndarray:
        x = init.copy()
        np.add.at(x, split.pixel, moves * split.sign)
        return x

    def add(at: np.ndarray) -> None:
        scale = split.ub_scale[at]
        if split.spread is None:
            a = rows.a_ub[at][:, split.pixel] * split.sign * scale[:, None]
        else:
            # Each entry is one row entry times its column's sign, then the row's scale: the
            # same numbers as the dense rows give.
            a = rows.a_ub[at] @ split.spread
            a.data *= np.repeat(scale, np.diff(a.indptr))
        add_rows(h, a, np.full(len(at), -np.inf), split.ub_rhs[at] * scale)

    if seed is not None:
        fresh = np.unique(seed[~added[seed]])
        if len(fresh):
            add(fresh)
            added[fresh] = True
            held = np.concatenate([held, fresh])

    # Violations are judged on the rows as HiGHS holds them: its tolerance, relative to
    # each row's size.
    # HiGHS's objective is the LP's less c·init (it counts the moves from init), scaled.
    run = solve_lazily(h, lambda moves: (rows.a_ub @ point(moves) - rows.b_ub) * split.ub_scale,
                       rows.b_ub * split.ub_scale, added, tol=tol, add=add,
                       stop_above=float(scale * (stop_above - cost @ init)))
    region_rows_used = int(added[len(added) - rows.lazy:].sum())
    solved = Solved(h, np.concatenate([held, np.asarray(run.order, dtype=np.int64)])) if keep else None
    if run.outdone:
        return LpSolution(np.full(d, np.nan), OUTDONE, run.rounds, region_rows_used)
    if run.solution is None:
        # A relaxation with no solution means the whole LP has none; the box keeps
        # every relaxation bounded, so anything else is a solver failure.
        outcome = {highspy.HighsModelStatus.kInfeasible: INFEASIBLE,
                   highspy.HighsModelStatus.kUnbounded: UNBOUNDED}.get(run.status, FAILED)
        return LpSolution(np.full(d, np.nan), outcome, run.rounds, region_rows_used)
    return LpSolution(np.clip(point(run.solution), lower, upper), OPTIMAL, run.rounds, region_rows_used, solved)


def _linprog(problem: LpProblem, lower: float, upper: float, tol: float) -> LpSolution:
    rows, cost, lam, init = problem.rows, problem.cost, problem.lam, problem.init
    d = len(cost)
    a_ub, a_eq = rows.a_ub, rows.a_eq
    if lam > 0:
        # x and t with t ≥ |x − init|: x − t ≤ init and −x − t ≤ −init.
        eye = sp.identity(d, format="csr")
        ub = sp.vstack([
            sp.hstack([sp.csr_matrix(a_ub), sp.csr_matrix((a_ub.shape[0], d))]),
            sp.hstack([eye, -eye]),
            sp.hstack([-eye, -eye]),
        ]).tocsr()
        rhs = np.concatenate([rows.b_ub, init, -init])
        eq = sp.hstack([sp.csr_matrix(a_eq), sp.csr_matrix((len(a_eq), d))]).tocsr()
        full_cost = np.concatenate([cost, np.full(d, lam)])
        bounds = [(lower, upper)] * d + [(0, None)] * d
    else:
        ub, rhs, eq = a_ub, rows.b_ub, a_eq
        full_cost, bounds = cost, [(lower, upper)] * d
    res = scipy.optimize.linprog(
        full_cost, A_ub=ub, b_ub=rhs, A_eq=eq if len(a_eq) else None, b_eq=rows.b_eq if len(a_eq) else None,
        bounds=bounds, method="highs",
        options={"primal_feasibility_tolerance": tol, "dual_feasibility_tolerance": tol},
    )
    if res.status == 0:
        return LpSolution(np.clip(res.x[:d], lower, upper), OPTIMAL, 1, rows.lazy)
    return LpSolution(np.full(d, np.nan), {2: INFEASIBLE, 3: UNBOUNDED}.get(res.status, FAILED), 1, rows.lazy)


@dataclass(frozen=True)
class LpFamily:
    """LPs that share their rows and ``init`` and differ only in cost: the vertices of one
    polytope on one piece. The rows are written in the solver's columns once for the
    family, not once per LP (on the MNIST MLP's relu1 that took a fifth of each LP's
    time); :meth:`solve` may run from several threads at once.

    Build one with :func:`lp_family`.
    """

    rows: LinearRows
    init: np.ndarray
    lower: float
    upper: float
    tol: float
    split: _Split | None  # None: scipy's linprog solves each LP

    def solve(self, cost: np.ndarray, lam: float, *, stop_above: float = math.inf, keep: bool = False,
              start: Start | None = None, seed: np.ndarray | None = None) -> LpSolution:
        """The family's LP with cost ``cost`` and L1 weight ``lam``.

        ``stop_above``: where the LP's optimum (``cost·x + lam‖x − init‖₁``) is found to lie
        above it, HiGHS stops early and the outcome is ``outdone`` (scipy's ``linprog``
        solves to the end: a reference path). ``keep``: an optimal solution carries its
        model (``LpSolution.solved``) for another LP to ``start`` from: that LP then takes
        over the model, which is no longer the first's. Both are for ``highs`` only:
        ``linprog`` keeps no model (``solved`` stays None) and refuses a ``start``.
        ``seed``: inequality rows (indices into the family's) that ``highs`` puts in the
        model before its first solve instead of waiting for a solution to violate them: a
        guess at the rows that bind, which saves rounds where it is good; the LP and its
        optimum are the same either way (``linprog`` holds every row from the start).
        Shapes: cost (d,); seed (k,)"""
        if seed is not None:
            seed = np.asarray(seed, dtype=np.int64)
            if len(seed) and not (0 <= seed.min() and seed.max() < len(self.rows.b_ub)):
                raise ConfigError(f"seed rows must index the family's {len(self.rows.b_ub)} inequality rows, got "
                                  f"{seed.min()} to {seed.max()}")
        if self.split is None:
            if start is not None:
                raise ConfigError("only the highs solver carries on from another LP's model")
            return _linprog(LpProblem(self.rows, cost, lam, self.init), self.lower, self.upper, self.tol)
        return _highs(self.rows, self.init, self.split, cost, lam, self.lower, self.upper, self.tol, stop_above,
                      keep, start, seed)


def lp_family(rows: LinearRows, init: np.ndarray, *, lower: float, upper: float, tol: float,
              solver: str = "highs") -> LpFamily:
    """The LPs over ``rows`` around ``init`` (see :class:`LpFamily`), solved by ``solver``
    (see the module docstring); ``tol`` is the feasibility tolerance, for HiGHS's primal
    and dual and for the rows ``highs`` leaves out.

    Each LP builds its own single-threaded HiGHS instance, which runs without the GIL:
    callers may solve several at once from threads, and the answers do not depend on how
    many run together.

    Shapes:
        init: (d,)
    """
    if solver not in LP_SOLVERS:
        raise ConfigError(f"expected solver in {LP_SOLVERS}, got {solver!r}")
    split = _split(rows, init, lower, upper) if solver == "highs" else None
    return LpFamily(rows, init, lower, upper, tol, split)


def solve_lp(problem: LpProblem, *, lower: float, upper: float, tol: float, solver: str = "highs") -> LpSolution:
    """Solve one LP with ``solver``: a family of one (:func:`lp_family`)."""
    return lp_family(problem.rows, problem.init, lower=lower, upper=upper, tol=tol, solver=solver).solve(
        problem.cost, problem.lam)
