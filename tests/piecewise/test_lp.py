"""The exact solver's LP (collide.piecewise.lp): HiGHS with lazy region rows against scipy's
linprog with every row, the oracle."""

import dataclasses
import subprocess
import sys
import threading
import time

import highspy
import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import torch

import collide.piecewise.lp as lp_module
import collide.solvers.exact as exact_module
from collide.config import ExactConfig
from collide.errors import ConfigError
from collide.objective import saturated_units
from collide.piecewise.highs import columnwise_lp, new_highs, row_scales
from collide.piecewise.lp import INFEASIBLE, OUTDONE, LinearRows, LpProblem, Start, lp_family, solve_lp
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.taps import preactivation
from tests.tolerances import LP_CONSTRAINT, LP_OBJECTIVE

TOL = 1e-9


def _problem(seed: int, *, d: int = 40, n_eq: int = 4, n_ub: int = 8, n_lazy: int = 300, lam: float = 0.05):
    """A random LP that the point x0 satisfies: every row's slack at x0 is random, some 0."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0.2, 0.8, d)
    a_eq = rng.normal(size=(n_eq, d))
    a_ub = rng.normal(size=(n_ub + n_lazy, d))
    slack = rng.exponential(0.5, n_ub + n_lazy) * (rng.random(n_ub + n_lazy) > 0.1)
    rows = LinearRows(a_ub=a_ub, b_ub=a_ub @ x0 + slack, a_eq=a_eq, b_eq=a_eq @ x0, lazy=n_lazy)
    init = np.clip(x0 + rng.normal(scale=0.3, size=d), 0, 1)
    return LpProblem(rows, rng.normal(size=d), lam, init)


def _objective(p: LpProblem, x: np.ndarray) -> float:
    return float(p.cost @ x + p.lam * np.abs(x - p.init).sum())


def _check_feasible(p: LpProblem, x: np.ndarray) -> None:
    r = p.rows
    assert np.abs(r.a_eq @ x - r.b_eq).max() <= LP_CONSTRAINT
    assert (r.a_ub @ x - r.b_ub).max() <= LP_CONSTRAINT
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("seed", range(4))
def test_highs_with_lazy_rows_matches_linprog_with_every_row(seed):
    p = _problem(seed)
    fast = solve_lp(p, lower=0, upper=1, tol=TOL, solver="highs")
    oracle = solve_lp(p, lower=0, upper=1, tol=TOL, solver="linprog")
    assert fast.outcome == oracle.outcome == OPTIMAL
    _check_feasible(p, fast.x)  # every row, the ones never added too
    assert abs(_objective(p, fast.x) - _objective(p, oracle.x)) <= LP_OBJECTIVE * (1 + abs(_objective(p, oracle.x)))
    assert fast.rounds > 1 and 0 < fast.region_rows_used < p.rows.lazy  # the lazy path ran, and saved rows


def test_the_layers_rows_are_taken_lazily_too_and_reach_the_optimum_of_the_whole_lp():
    p = _problem(7, n_ub=300, n_lazy=0)  # no region rows: every inequality row is the layer's
    lazy = solve_lp(p, lower=0, upper=1, tol=TOL)
    whole = solve_lp(p, lower=0, upper=1, tol=TOL, solver="linprog")
    assert lazy.rounds > 1 and lazy.region_rows_used == 0  # rows were added, none of them a region's
    _check_feasible(p, lazy.x)
    assert abs(_objective(p, lazy.x) - _objective(p, whole.x)) <= LP_OBJECTIVE * (1 + abs(_objective(p, whole.x)))


def test_a_family_solves_each_cost_as_a_problem_of_its_own_would():
    p = _problem(5)
    family = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL)
    rng = np.random.default_rng(5)
    for cost in rng.normal(size=(3, len(p.init))):
        shared = family.solve(cost, p.lam)
        alone = solve_lp(dataclasses.replace(p, cost=cost), lower=0, upper=1, tol=TOL, solver="linprog")
        assert shared.outcome == alone.outcome == OPTIMAL
        _check_feasible(p, shared.x)
        target = _objective(dataclasses.replace(p, cost=cost), alone.x)
        assert abs(_objective(dataclasses.replace(p, cost=cost), shared.x) - target) <= LP_OBJECTIVE * (1 + abs(target))


@pytest.mark.parametrize("seed", range(3))
def test_compressed_rows_give_the_optimum_of_the_same_rows_dense(seed):
    # The oracle: the same LP with its inequality rows dense, and linprog's optimum. Four
    # in five entries are zero, as behind a convolution, and every other row is far below
    # unit size, so that HiGHS receives it rescaled (unit_scale) by either path.
    p = _problem(seed)
    rng = np.random.default_rng(100 + seed)
    a_ub = p.rows.a_ub * (rng.random(p.rows.a_ub.shape) < 0.2)
    a_ub[::2] *= 2.0**-20
    x0 = np.clip(p.init + rng.normal(scale=0.05, size=len(p.init)), 0, 1)
    slack = rng.exponential(0.5, len(a_ub)) * (rng.random(len(a_ub)) > 0.1)
    slack[::2] *= 2.0**-20
    dense = dataclasses.replace(p, rows=dataclasses.replace(
        p.rows, a_ub=a_ub, b_ub=a_ub @ x0 + slack, b_eq=p.rows.a_eq @ x0))
    assert (row_scales(a_ub)[::2] > 1).all()  # the case is the one meant
    compressed = dataclasses.replace(dense, rows=dataclasses.replace(dense.rows, a_ub=sp.csr_array(a_ub)))
    want = solve_lp(dense, lower=0, upper=1, tol=TOL)
    got = solve_lp(compressed, lower=0, upper=1, tol=TOL)
    # linprog judges rows by absolute tolerances: its oracle holds them at unit size.
    unit = np.where(np.arange(len(a_ub)) % 2 == 0, 2.0**20, 1.0)
    oracle = solve_lp(dataclasses.replace(dense, rows=dataclasses.replace(
        dense.rows, a_ub=a_ub * unit[:, None], b_ub=dense.rows.b_ub * unit)), lower=0, upper=1, tol=TOL,
        solver="linprog")
    assert got.outcome == want.outcome == oracle.outcome == OPTIMAL
    assert got.rounds > 1 and 0 < got.region_rows_used < p.rows.lazy  # rows were taken lazily
    _check_feasible(dense, got.x)
    assert np.abs(got.x - want.x).max() <= LP_CONSTRAINT
    best = _objective(dense, oracle.x)
    assert abs(_objective(dense, got.x) - best) <= LP_OBJECTIVE * (1 + abs(best))


@pytest.mark.parametrize("seed", range(4))
def test_an_lp_stops_outdone_only_where_its_optimum_lies_above_the_bound(seed):
    # The oracle: linprog's optimum of the whole LP. A bound a little below it must stop
    # the solve (early: before the last round), one a little above must not change it.
    p = _problem(seed)
    best = _objective(p, solve_lp(p, lower=0, upper=1, tol=TOL, solver="linprog").x)
    family = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL)
    full = family.solve(p.cost, p.lam)
    gap = 1e-4 * (1 + abs(best))
    below = family.solve(p.cost, p.lam, stop_above=best - gap)
    above = family.solve(p.cost, p.lam, stop_above=best + gap)
    assert below.outcome == OUTDONE and np.isnan(below.x).all() and below.rounds <= full.rounds
    assert above.outcome == OPTIMAL and np.array_equal(above.x, full.x)
    assert family.solve(p.cost, p.lam, stop_above=best - 10 * (1 + abs(best))).rounds == 1  # the first round proves it


def _loose(p: LpProblem, seed: int) -> tuple[LinearRows, np.ndarray]:
    """``p``'s rows without a random third of its lazy rows, and where each row left sits
    among ``p``'s."""
    rows = p.rows
    n_layer = len(rows.b_ub) - rows.lazy
    keep = np.concatenate([np.ones(n_layer, dtype=bool), np.random.default_rng(seed).random(rows.lazy) > 1 / 3])
    loose = dataclasses.replace(rows, a_ub=rows.a_ub[keep], b_ub=rows.b_ub[keep], lazy=int(keep[n_layer:].sum()))
    return loose, np.flatnonzero(keep)


@pytest.mark.parametrize("seed", range(4))
def test_an_lp_carried_on_from_one_with_fewer_rows_reaches_the_optimum_of_its_own(seed):
    # The oracle: linprog on the whole LP. The LP without a third of its rows hands its
    # model over; the whole LP, carried on from it, must reach the same optimum, and stop
    # outdone as a fresh solve does.
    p = _problem(seed)
    best = _objective(p, solve_lp(p, lower=0, upper=1, tol=TOL, solver="linprog").x)
    loose_rows, index = _loose(p, seed)
    loose_family = lp_family(loose_rows, p.init, lower=0, upper=1, tol=TOL)
    family = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL)

    first = loose_family.solve(p.cost, p.lam, keep=True)
    assert first.outcome == OPTIMAL and first.solved is not None
    carried = family.solve(p.cost, p.lam, start=Start(first.solved, index), keep=True)
    assert carried.outcome == OPTIMAL
    _check_feasible(p, carried.x)
    assert abs(_objective(p, carried.x) - best) <= LP_OBJECTIVE * (1 + abs(best))
    assert carried.solved.highs is first.solved.highs  # it carried on in the model handed over
    assert carried.region_rows_used >= first.region_rows_used  # with the first LP's rows
    assert family.solve(p.cost, p.lam).solved is None  # a model is kept only where asked for

    gap = 1e-4 * (1 + abs(best))
    again = loose_family.solve(p.cost, p.lam, keep=True)
    below = family.solve(p.cost, p.lam, stop_above=best - gap, start=Start(again.solved, index))
    assert below.outcome == OUTDONE and np.isnan(below.x).all()


@pytest.mark.parametrize("seed", range(4))
def test_the_rows_said_to_bind_hold_with_equality_and_the_others_need_not(seed):
    # The oracle: each row's own slack at the solution, recomputed here. The rows said to
    # bind sit at their bound; a row the model holds in its basis is not among them.
    p = _problem(seed)
    solved = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL).solve(p.cost, p.lam, keep=True)
    binding = solved.solved.binding()
    slack = p.rows.b_ub - p.rows.a_ub @ solved.x
    assert len(binding) > 0 and np.abs(slack[binding]).max() <= LP_CONSTRAINT
    order = solved.solved.order
    assert set(binding) <= set(order) and len(set(order)) == len(order)  # each row the model took, once
    assert len(solved.solved.order) == solved.solved.highs.getNumRow() - len(p.rows.b_eq)  # the model's rows
    assert (slack[np.setdiff1d(solved.solved.order, binding)] > LP_CONSTRAINT).any()  # some held rows are slack


@pytest.mark.parametrize("seed", range(4))
def test_seeded_rows_change_the_rounds_but_not_the_optimum(seed):
    # The oracle: linprog on the whole LP. Seeding the rows that bind (read off a solve)
    # saves rounds; seeding rows that do not (random ones) still reaches the same optimum.
    p = _problem(seed)
    best = _objective(p, solve_lp(p, lower=0, upper=1, tol=TOL, solver="linprog").x)
    family = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL)
    plain = family.solve(p.cost, p.lam, keep=True)
    guessed = family.solve(p.cost, p.lam, seed=plain.solved.binding(), keep=True)
    random_rows = np.random.default_rng(seed).choice(len(p.rows.b_ub), 40, replace=False)
    wrong = family.solve(p.cost, p.lam, seed=np.concatenate([random_rows, random_rows]))  # repeats are one row
    for sol in (guessed, wrong):
        assert sol.outcome == OPTIMAL
        _check_feasible(p, sol.x)
        assert abs(_objective(p, sol.x) - best) <= LP_OBJECTIVE * (1 + abs(best))
    assert guessed.rounds < plain.rounds
    assert set(plain.solved.binding()) <= set(guessed.solved.order[:len(plain.solved.binding())])  # seeds first
    with pytest.raises(ConfigError, match="seed rows"):
        family.solve(p.cost, p.lam, seed=np.array([len(p.rows.b_ub)]))


def test_a_model_built_from_arrays_is_the_lp_its_fields_describe():
    # The oracle: HiGHS's own HighsLp, filled field by field, and linprog's optimum.
    rng = np.random.default_rng(3)
    a = sp.csc_matrix(rng.normal(size=(5, 12)) * (rng.random((5, 12)) > 0.3))
    cost, lower, upper = rng.normal(size=12), np.zeros(12), rng.uniform(0.5, 2, 12)
    x0 = rng.uniform(0, 0.5, 12)
    row_lower, row_upper = a @ x0 - np.r_[0, 0, 1, 1, np.inf], a @ x0 + np.r_[0, 0, 1, 2, 3]
    built = columnwise_lp(cost, lower, upper, row_lower, row_upper, a)
    by_hand = highspy.HighsLp()
    by_hand.num_col_, by_hand.num_row_ = 12, 5
    by_hand.col_cost_, by_hand.col_lower_, by_hand.col_upper_ = cost, lower, upper
    by_hand.row_lower_, by_hand.row_upper_ = row_lower, row_upper
    by_hand.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    by_hand.a_matrix_.start_, by_hand.a_matrix_.index_, by_hand.a_matrix_.value_ = a.indptr, a.indices, a.data
    for field in ("col_cost_", "col_lower_", "col_upper_", "row_lower_", "row_upper_"):
        assert np.array_equal(getattr(built, field), getattr(by_hand, field)), field
    for field in ("start_", "index_", "value_"):
        assert np.array_equal(getattr(built.a_matrix_, field), getattr(by_hand.a_matrix_, field)), field
    h = new_highs()
    h.passModel(built)
    h.run()
    finite = np.isfinite(row_lower)
    oracle = scipy.optimize.linprog(cost, A_ub=sp.vstack([a, -a[finite]]), b_ub=np.r_[row_upper, -row_lower[finite]],
                                    bounds=list(zip(lower, upper, strict=True)), method="highs")
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal and oracle.status == 0
    assert abs(h.getInfo().objective_function_value - oracle.fun) <= LP_OBJECTIVE * (1 + abs(oracle.fun))


def test_only_highs_carries_on_from_a_model():
    p = _problem(0)
    loose_rows, index = _loose(p, 0)
    first = lp_family(loose_rows, p.init, lower=0, upper=1, tol=TOL).solve(p.cost, p.lam, keep=True)
    reference = lp_family(p.rows, p.init, lower=0, upper=1, tol=TOL, solver="linprog")
    with pytest.raises(ConfigError, match="highs"):
        reference.solve(p.cost, p.lam, start=Start(first.solved, index))


@pytest.mark.parametrize("solver", ["highs", "linprog"])
def test_no_solution_is_reported_infeasible(solver):
    p = _problem(1)
    rows = dataclasses.replace(p.rows, a_eq=np.vstack([p.rows.a_eq[:1]] * 2),
                               b_eq=np.array([p.rows.b_eq[0], p.rows.b_eq[0] + 1.0]))
    out = solve_lp(dataclasses.replace(p, rows=rows), lower=0, upper=1, tol=TOL, solver=solver)
    assert out.outcome == INFEASIBLE and np.isnan(out.x).all()


def test_a_lazy_row_that_makes_the_lp_infeasible_is_found():
    p = _problem(2, n_lazy=50)
    r = p.rows
    # The last lazy row contradicts the first equality: a·x ≤ b_eq − 1 with a·x = b_eq.
    a_ub = np.vstack([r.a_ub, r.a_eq[:1]])
    rows = dataclasses.replace(r, a_ub=a_ub, b_ub=np.concatenate([r.b_ub, r.b_eq[:1] - 1]), lazy=r.lazy + 1)
    assert solve_lp(dataclasses.replace(p, rows=rows), lower=0, upper=1, tol=TOL).outcome == INFEASIBLE


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="expected solver in"):
        solve_lp(_problem(0), lower=0, upper=1, tol=TOL, solver="glpk")


def _units(model, layer, target, n):
    with torch.no_grad():
        return saturated_units(preactivation(model, target.unsqueeze(0), layer)[0], n)


def test_vertices_do_not_depend_on_threads(mlp_model):
    gen = torch.Generator().manual_seed(11)
    target, init = torch.rand(1, 28, 28, generator=gen) * 0.5, torch.rand(1, 28, 28, generator=gen)
    units = _units(mlp_model, "relu2", target, 4)
    one = solve_exact(mlp_model, "relu2", target, init, units, config=ExactConfig(threads=1))
    two = solve_exact(mlp_model, "relu2", target, init, units, config=ExactConfig(threads=2))
    assert one.outcomes == two.outcomes == (OPTIMAL,) * 4
    assert torch.equal(one.vertices, two.vertices)


def test_small_lps_share_the_cores_and_large_ones_take_one_each(mlp_model, monkeypatch):
    # threads=0 on a one-core job: the MLP's LPs (about 0.3 M entries of rows) all run at
    # once; past AT_ONCE_ENTRIES they run one at a time. The vertices are the same bits.
    monkeypatch.setattr(exact_module, "job_cores", lambda: 1)
    solve = lp_module.LpFamily.solve
    running, peak, lock = [0], [0], threading.Lock()

    def counted(self, cost, lam, **bound):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)  # every LP that may run now has started before this one ends
        try:
            return solve(self, cost, lam, **bound)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(lp_module.LpFamily, "solve", counted)
    gen = torch.Generator().manual_seed(11)
    target, init = torch.rand(1, 28, 28, generator=gen) * 0.5, torch.rand(1, 28, 28, generator=gen)
    units = _units(mlp_model, "relu2", target, 4)
    shared = solve_exact(mlp_model, "relu2", target, init, units, config=ExactConfig())
    assert peak[0] == 4
    peak[0] = 0
    monkeypatch.setattr(exact_module, "AT_ONCE_ENTRIES", 0)
    alone = solve_exact(mlp_model, "relu2", target, init, units, config=ExactConfig())
    assert peak[0] == 1
    assert shared.outcomes == alone.outcomes == (OPTIMAL,) * 4
    assert torch.equal(shared.vertices, alone.vertices)


def test_exact_vertices_by_highs_and_by_linprog_agree(mlp_model):
    # relu2: the first layer's 256 sign rows are region rows, added lazily by highs.
    gen = torch.Generator().manual_seed(12)
    target = torch.rand(1, 28, 28, generator=gen) * 0.5
    units = _units(mlp_model, "relu2", target, 3)
    fast = solve_exact(mlp_model, "relu2", target, target, units, config=ExactConfig())
    oracle = solve_exact(mlp_model, "relu2", target, target, units, config=ExactConfig(lp_solver="linprog"))
    assert fast.outcomes == oracle.outcomes == (OPTIMAL,) * 3
    with torch.no_grad():
        pushed_fast = preactivation(mlp_model.double(), fast.vertices.double(), "relu2")
        pushed_oracle = preactivation(mlp_model, oracle.vertices.double(), "relu2")
    mlp_model.float()
    for k, unit in enumerate(units.tolist()):  # the same optimum of each vertex's own unit
        assert abs(float(pushed_fast[k, unit] - pushed_oracle[k, unit])) <= LP_CONSTRAINT * (
            1 + abs(float(pushed_oracle[k, unit])))


def test_highs_prints_nothing():
    code = ("import numpy as np; from collide.piecewise.lp import LinearRows, LpProblem, solve_lp; "
            "r = LinearRows(a_ub=np.ones((1, 2)), b_ub=np.ones(1), a_eq=np.zeros((0, 2)), b_eq=np.zeros(0)); "
            "p = LpProblem(r, np.array([-1.0, 0.0]), 0.0, np.zeros(2)); "
            "print(solve_lp(p, lower=0, upper=1, tol=1e-9).outcome)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "optimal\n" and out.stderr == ""


def test_threads_stay_out_of_the_digest_and_the_lp_solver_does_not(tmp_path):
    from collide.experiments.mnist import MnistExperiment

    base = MnistExperiment()
    assert dataclasses.replace(base, exact=ExactConfig(threads=1)).digest() == base.digest()
    assert dataclasses.replace(base, exact=ExactConfig(lp_solver="linprog")).digest() != base.digest()
    with pytest.raises(Exception, match="expected lp_solver in"):
        ExactConfig(lp_solver="glpk")
