"""The HiGHS backend: a silent instance, rows in CSR, and the one lazy-row loop.

Activation-region rows (earlier ReLU signs, max-pooling winners) number in the
thousands at LeNet-5's ``relu3`` and each reads much of the input; few of them bind. Every LP of collide
that carries them (the exact solver's vertices, the collision set's ball and widths)
therefore starts without them and adds, a round at a time, the ones its solution
violates, HiGHS's dual simplex carrying on from its last basis (a large set's ball LP
runs its first rounds by the interior point instead, each from scratch:
:mod:`collide.piecewise.ball`).
The answer meets every row within tolerance, so it is an optimum of the whole LP, not of
a relaxation.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

# Region rows added per round, the most violated first: a few rounds cover the rows
# that bind without growing the model by every row one loose solution crosses.
ROWS_PER_ROUND = 256

# A row, or an LP's cost, whose largest coefficient is below this reaches HiGHS
# rescaled by a power of two (exact: no coefficient is rounded) so that it lies in
# [0.5, 1) (unit_scale): the exact LP's rows and costs, and the collision set's rows.
# HiGHS's tolerances and its matrix-entry floor are absolute: it drops entries below
# 1e-9, and a deep layer of a randomly initialised model has Jacobian rows whose
# entries lie near that floor (googlenet's inception4c at 16 px, shufflenet's stage3 at
# 25 px: their LPs ended in a solve error). The feasible set and the optimum are the
# same. Rows above it reach HiGHS as they are: rescaling every row of the MNIST models
# (largest coefficients 0.04 to 1.1) gave the same vertices to 2e-10 but took LeNet-5's
# relu3 polytope from 4.6 to 5.5 s.
SMALL_COEFFICIENT = 2.0**-10


def unit_scale(biggest: np.ndarray) -> np.ndarray:
    """Per row (or cost) with largest coefficient ``biggest``: the power of two that
    brings it into [0.5, 1) where it is below :data:`SMALL_COEFFICIENT` (and not 0), else 1."""
    small = (biggest > 0) & (biggest < SMALL_COEFFICIENT)
    _, exponent = np.frexp(np.where(small, biggest, 0.5))
    return np.ldexp(1.0, -exponent)


def row_scales(a: np.ndarray | sp.csr_array) -> np.ndarray:
    """:func:`unit_scale` for each row of ``a``: dense rows are read without a copy (the
    exact LP's reach GiBs), compressed rows (a ``csr_array``) through one copy of their
    entries. Shapes: a (R, d); returns (R,)"""
    if sp.issparse(a):
        return unit_scale(abs(a).max(axis=1).toarray().ravel())
    return unit_scale(np.maximum(a.max(axis=1, initial=0.0), -a.min(axis=1, initial=0.0)))


_banner_lock = threading.Lock()
_banner_shown = False


def new_highs() -> highspy.Highs:
    """A silent HiGHS instance. The first one a process makes prints HiGHS's banner from
    C++ to file descriptor 1 before any option can be set; that descriptor points at
    /dev/null for the moment it takes, then back where it was."""
    global _banner_shown
    with _banner_lock:
        if not _banner_shown:
            sys.stdout.flush()
            saved = os.dup(1)
            try:
                with open(os.devnull, "w") as null:
                    os.dup2(null.fileno(), 1)
                    h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            _banner_shown = True
        else:
            h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


def columnwise_lp(cost: np.ndarray, col_lower: np.ndarray, col_upper: np.ndarray, row_lower: np.ndarray,
                  row_upper: np.ndarray, matrix: sp.csc_matrix) -> highspy.HighsLp:
    """The LP ``min cost·x`` over ``row_lower ≤ matrix x ≤ row_upper`` and ``col_lower ≤ x ≤
    col_upper`` as a HiGHS model (``Highs.passModel`` takes it, copying it in C++).

    Built through highspy's array interface, which reads numpy's buffers: setting a
    ``HighsLp``'s fields from numpy converts every entry on its own (7 ms for the MNIST
    MLP's 100,000 equality entries, against 0.8 ms; one-off, 2026-12-06).
    Shapes: cost, col_lower, col_upper (n,); row_lower, row_upper (m,); matrix (m, n)"""
    n_row, n_col = matrix.shape
    h = new_highs()
    status = h.passModel(n_col, n_row, matrix.nnz, int(highspy.MatrixFormat.kColwise),
                         int(highspy.ObjSense.kMinimize), 0.0, *(np.asarray(v, dtype=np.float64) for v in (
                             cost, col_lower, col_upper, row_lower, row_upper)),
                         matrix.indptr[:-1].astype(np.int32), matrix.indices.astype(np.int32),
                         np.asarray(matrix.data, dtype=np.float64), np.zeros(n_col, dtype=np.int32))
    # A warning (entries below HiGHS's matrix floor, dropped) leaves the model as passModel
    # would have taken it from a HighsLp.
    if status == highspy.HighsStatus.kError:
        raise RuntimeError(f"HiGHS refused a {n_row} x {n_col} model")
    return h.getLp()


def add_rows(h: highspy.Highs, a: np.ndarray | sp.spmatrix, lower: np.ndarray, upper: np.ndarray) -> None:
    """Rows ``lower ≤ a x ≤ upper`` added to ``h``. Shapes: a (r, n); lower, upper (r,)"""
    m = sp.csr_matrix(a)
    h.addRows(len(upper), lower, upper, m.nnz, m.indptr[:-1].astype(np.int32), m.indices.astype(np.int32), m.data)


#: ``progress(stage, iterations, seconds)``: a stage of LPs under way, its iterations
#: so far (simplex and interior-point) and the seconds since it began.
LpProgress = Callable[[str, int, float], None]

# A Heartbeat reports at most this often (seconds): often enough to see an LP is moving,
# rarely enough that a printing callback does not flood a terminal.
HEARTBEAT_SECONDS = 1.0


class Heartbeat:
    """What one stage of LPs (a ball, the widths, ...) has done, handed to ``progress``
    when the stage begins and then at most every :data:`HEARTBEAT_SECONDS` while its
    LPs run: a ball LP can run for minutes (LeNet-5's ``relu2``, a 3x32x32 residual
    net) and reports nothing of its own. Called with the iterations (simplex or
    interior-point) each solve adds (:func:`solve_lazily`'s ``watch``)."""

    def __init__(self, progress: LpProgress, stage: str) -> None:
        self.progress, self.stage = progress, stage
        self.iterations = 0
        self.start = self.last = time.monotonic()
        progress(stage, 0, 0.0)

    def __call__(self, iterations: int) -> None:
        self.iterations += iterations
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            self.progress(self.stage, self.iterations, now - self.start)


def heartbeat(progress: LpProgress | None, stage: str) -> Heartbeat | None:
    """A :class:`Heartbeat` for ``stage``, or None (no callback, no cost) without ``progress``."""
    return None if progress is None else Heartbeat(progress, stage)


@dataclass(frozen=True)
class LazyRun:
    """How :func:`solve_lazily` ended: the columns' values (None unless optimal), HiGHS's
    final model status, the lazy rows added in the order they entered, and the rounds run.
    ``outdone``: stopped once the optimum was known to lie above ``stop_above``."""

    solution: np.ndarray | None
    status: highspy.HighsModelStatus
    order: list[int]
    rounds: int
    outdone: bool = False


def solve_lazily(
    h: highspy.Highs, excess: Callable[[np.ndarray], np.ndarray], bounds: np.ndarray, added: np.ndarray, *,
    tol: float, add: Callable[[np.ndarray], None], stop_above: float = math.inf,
    watch: Callable[[int], None] | None = None,
) -> LazyRun:
    """Run ``h``; while its solution violates lazy rows not yet ``added``, add the most
    violated (at most :data:`ROWS_PER_ROUND` a round) and run again.

    ``stop_above`` (a minimisation, in ``h``'s objective): stop, ``outdone``, as soon as
    the optimum is known to lie above it. Every relaxation's optimum is a lower bound on
    the whole LP's (it has fewer rows). Within a solve, HiGHS's ``objective_bound`` stops
    the dual simplex once a lower bound on the relaxation's optimum passes it: the
    perturbed dual objective only triggers the check, and HiGHS confirms it with the dual
    bound recomputed from the true costs (weak duality) before it reports the status.

    Args:
        h: the model, holding every row but the lazy ones not yet added.
        excess: the lazy rows' ``a x − b`` at a solution of ``h``'s columns (L,).
        bounds: the lazy rows' right-hand sides ``b`` (L,), which scale the tolerance.
        added: which lazy rows the model holds (L,), updated in place.
        tol: a row counts as violated past ``tol·(1 + |b|)``.
        add: puts the given lazy rows (indices) into ``h``.
        watch: called from HiGHS's simplex and interior-point callbacks, once an
            iteration, with the iterations run since its last call (a :class:`Heartbeat`);
            None: no callback. What it raises, and Ctrl-C, stop the solve and are raised here.
    """
    if watch is None:
        return _solve_lazily(h, excess, bounds, added, tol=tol, add=add, stop_above=stop_above)
    raised: list[BaseException] = []
    # Python raises Ctrl-C's KeyboardInterrupt in whatever Python code the main thread runs,
    # here a HiGHS callback's (highspy's own frames included), and HiGHS turns an exception
    # there into a solve error and drops it. While it runs, Ctrl-C is noted instead, the
    # callbacks stop HiGHS at its next iteration, and the interrupt is raised after: only
    # where Python's own handler was in place, and only in the main thread, the one
    # Python hands signals to (a handler of the caller's own is left alone).
    note_ctrl_c = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    def on_ctrl_c(_signum: int, _frame: object) -> None:
        raised.append(KeyboardInterrupt())

    def counter(field: str) -> Callable[[highspy.HighsCallbackEvent], None]:
        seen = 0  # the running solve's iterations so far (HiGHS counts each run from 0)

        def tick(event: highspy.HighsCallbackEvent) -> None:
            nonlocal seen
            if raised:
                event.interrupt()
                return
            count = getattr(event.data_out, field)
            if count < 0:  # IPX asks between its iterations too, with no count
                count = seen
            elif count < seen:  # a new run
                seen = 0
            try:
                watch(count - seen)
            except BaseException as exc:
                # Left to HiGHS, it would end the run as a solve error and lose the exception.
                raised.append(exc)
                event.interrupt()
            seen = count

        return tick

    ticks = [(h.cbSimplexInterrupt, counter("simplex_iteration_count")),
             (h.cbIpmInterrupt, counter("ipm_iteration_count"))]
    try:
        if note_ctrl_c:
            signal.signal(signal.SIGINT, on_ctrl_c)
        for callback, tick in ticks:
            callback.subscribe(tick)
        run = _solve_lazily(h, excess, bounds, added, tol=tol, add=add, stop_above=stop_above,
                            stopped=lambda: bool(raised))
    finally:
        for callback, tick in ticks:
            callback.unsubscribe(tick)  # a no-op for one never subscribed
        if note_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if raised:
        raise raised[0]
    return run


def solve_once(h: highspy.Highs, *, tol: float, watch: Heartbeat | None = None) -> LazyRun:
    """``h`` solved as it stands, one run: :func:`solve_lazily` with no lazy rows, so that
    ``watch`` hears of its iterations and Ctrl-C stops it as any lazy LP's."""
    no_rows = np.zeros(0)
    return solve_lazily(h, lambda _: no_rows, no_rows, np.zeros(0, dtype=bool), tol=tol, add=lambda _: None,
                        watch=watch)


def _solve_lazily(
    h: highspy.Highs, excess: Callable[[np.ndarray], np.ndarray], bounds: np.ndarray, added: np.ndarray, *,
    tol: float, add: Callable[[np.ndarray], None], stop_above: float, stopped: Callable[[], bool] = lambda: False,
) -> LazyRun:
    """:func:`solve_lazily`'s loop; it ends, as interrupted, once ``stopped()``."""
    order: list[int] = []
    rounds = 0
    h.setOptionValue("objective_bound", stop_above)  # inf as well: no stale bound on a reused model
    while True:
        if stopped():  # between runs, where no callback would see it
            return LazyRun(None, highspy.HighsModelStatus.kInterrupt, order, rounds)
        h.run()
        rounds += 1
        if h.getModelStatus() == highspy.HighsModelStatus.kNotset:
            # A hot-started dual simplex can stop without a status after raising its
            # Markowitz threshold (seen on LeNet-5's relu3 set); from scratch it solves.
            h.clearSolver()
            h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kObjectiveBound or (
                status == highspy.HighsModelStatus.kOptimal and h.getInfo().objective_function_value > stop_above):
            return LazyRun(None, status, order, rounds, outdone=True)
        if status != highspy.HighsModelStatus.kOptimal:
            return LazyRun(None, status, order, rounds)
        sol = np.asarray(h.getSolution().col_value)
        over = excess(sol)
        violated = np.flatnonzero(~added & (over > tol * (1 + np.abs(bounds))))
        if not len(violated):
            return LazyRun(sol, status, order, rounds)
        violated = violated[np.argsort(-over[violated], kind="stable")[:ROWS_PER_ROUND]]
        add(violated)
        added[violated] = True
        order += violated.tolist()


def lp_model(cost: np.ndarray, lower: np.ndarray, upper: np.ndarray, *, tol: float) -> highspy.Highs:
    """A single-threaded HiGHS model with columns ``lower ≤ x ≤ upper``, cost ``cost`` and no
    rows yet; ``tol`` its primal and dual feasibility tolerance. Shapes: (n,) each"""
    h = new_highs()
    h.setOptionValue("threads", 1)
    h.setOptionValue("primal_feasibility_tolerance", tol)
    h.setOptionValue("dual_feasibility_tolerance", tol)
    n = len(cost)
    h.addVars(n, lower, upper)
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    return h
