"""The exact solver's linear program, and the two ways collide solves it.

Every vertex of an exact polytope is the solution of

    minimise   c·x + λ‖x − init‖₁
    subject to A_eq x = b_eq,  A_ub x ≤ b_ub,  lower ≤ x ≤ upper.

``highs`` (the default) hands HiGHS, through its own Python interface ``highspy``, the
split ``x = init + p − q`` with ``0 ≤ p ≤ upper − init`` and ``0 ≤ q ≤ init − lower``:
the L1 term becomes a linear cost on bounded columns, with no extra rows, and a
coordinate whose init sits on a bound loses the column that would leave the box. The
rows that model the target's activation region (``lazy`` below: earlier ReLU signs,
max-pooling winners; thousands of dense rows at LeNet-5's ``relu3``) start out of the
model and are added where the solution violates them, a round at a time
(:func:`collide.piecewise.highs.solve_lazily`), HiGHS's dual simplex carrying on from
its last basis. The answer meets every row within tolerance, so
it is an optimum of the whole LP, not of a relaxation: the rows left out never bind.

``linprog`` is scipy's ``linprog(method="highs")`` with every row and the L1 term as
``t ≥ |x − init|`` rows: what collide did before, kept as the reference the benchmark and
the tests compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.optimize
import scipy.sparse as sp

from collide.config import LP_SOLVERS
from collide.errors import ConfigError
from collide.piecewise.highs import add_rows, new_highs, solve_lazily

OPTIMAL, INFEASIBLE, UNBOUNDED, FAILED = "optimal", "infeasible", "unbounded", "failed"


@dataclass(frozen=True)
class LinearRows:
    """The LP's rows: ``a_eq x = b_eq`` and ``a_ub x ≤ b_ub``; the last ``lazy`` rows of
    ``a_ub`` are the region's, which ``highs`` adds only where a solution violates them.

    Shapes:
        a_ub: (U, d); b_ub: (U,); a_eq: (E, d); b_eq: (E,)
    """

    a_ub: np.ndarray
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
class LpSolution:
    """The minimiser clipped to the box (NaN unless ``outcome`` is optimal); for ``highs``,
    the rounds of added rows and how many region rows the final model held.

    Shapes:
        x: (d,)
    """

    x: np.ndarray
    outcome: str
    rounds: int = 1
    region_rows_used: int = 0


def _highs(problem: LpProblem, lower: float, upper: float, tol: float) -> LpSolution:
    rows, init = problem.rows, problem.init
    d = len(init)
    # Columns p (moves up) then q (moves down), without those a bound leaves no room for.
    room = np.concatenate([upper - init, init - lower])
    cols = np.flatnonzero(room > 0)
    pixel = cols % d
    sign = np.where(cols < d, 1.0, -1.0)

    def block(a: np.ndarray) -> np.ndarray:
        return a[:, pixel] * sign

    n_fixed = len(rows.b_ub) - rows.lazy
    a_lazy, b_lazy = rows.a_ub[n_fixed:], rows.b_ub[n_fixed:]
    a0 = np.vstack([rows.a_eq, rows.a_ub[:n_fixed]])
    b0 = np.concatenate([rows.b_eq, rows.b_ub[:n_fixed]])
    lo0 = np.concatenate([rows.b_eq, np.full(n_fixed, -np.inf)])
    shift = a0 @ init
    m = sp.csc_matrix(block(a0))
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cols), len(b0)
    lp.col_cost_ = problem.cost[pixel] * sign + problem.lam
    lp.col_lower_, lp.col_upper_ = np.zeros(len(cols)), room[cols]
    lp.row_lower_, lp.row_upper_ = lo0 - shift, b0 - shift
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.indptr, m.indices, m.data
    h = new_highs()
    h.setOptionValue("threads", 1)
    # Measured on the MNIST MLP's relu1 (benchmarks/exact_vs_gradient.py): presolve and
    # scaling cost more than they save on these small dense rows, with the same optima.
    h.setOptionValue("presolve", "off")
    h.setOptionValue("simplex_scale_strategy", 0)
    h.setOptionValue("primal_feasibility_tolerance", tol)
    h.setOptionValue("dual_feasibility_tolerance", tol)
    h.passModel(lp)
    added = np.zeros(len(b_lazy), dtype=bool)
    lazy_shift = a_lazy @ init

    def point(moves: np.ndarray) -> np.ndarray:
        x = init.copy()
        np.add.at(x, pixel, moves * sign)
        return x

    def add(rows: np.ndarray) -> None:
        add_rows(h, block(a_lazy[rows]), np.full(len(rows), -np.inf), b_lazy[rows] - lazy_shift[rows])

    run = solve_lazily(h, lambda moves: a_lazy @ point(moves) - b_lazy, b_lazy, added, tol=tol, add=add)
    if run.solution is None:
        # A relaxation with no solution means the whole LP has none; the box keeps
        # every relaxation bounded, so anything else is a solver failure.
        outcome = {highspy.HighsModelStatus.kInfeasible: INFEASIBLE,
                   highspy.HighsModelStatus.kUnbounded: UNBOUNDED}.get(run.status, FAILED)
        return LpSolution(np.full(d, np.nan), outcome, run.rounds, int(added.sum()))
    return LpSolution(np.clip(point(run.solution), lower, upper), OPTIMAL, run.rounds, int(added.sum()))


def _linprog(problem: LpProblem, lower: float, upper: float, tol: float) -> LpSolution:
    rows, cost, lam, init = problem.rows, problem.cost, problem.lam, problem.init
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


def solve_lp(problem: LpProblem, *, lower: float, upper: float, tol: float, solver: str = "highs") -> LpSolution:
    """Solve one LP with ``solver`` (see the module docstring); ``tol`` is the feasibility
    tolerance, for HiGHS's primal and dual and for the rows ``highs`` leaves out.

    Each call builds its own single-threaded HiGHS instance, which runs without the GIL:
    callers may solve several LPs at once from threads, and the answers do not depend on
    how many run together.
    """
    if solver not in LP_SOLVERS:
        raise ConfigError(f"expected solver in {LP_SOLVERS}, got {solver!r}")
    return (_highs if solver == "highs" else _linprog)(problem, lower, upper, tol)
