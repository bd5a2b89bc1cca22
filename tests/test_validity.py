"""Each method's criterion, held per vertex in float64 (collide/validity.py)."""

import copy

import torch

from collide.config import ExactConfig, GradientConfig, PaperConfig
from collide.objective import saturated_units
from collide.solvers import ExactSolver, GradientSolver, PaperSolver
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.taps import preactivation
from collide.validity import check_vertices

V = 3


def _problem(model):
    target = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(4)) * 0.5
    units = saturated_units(preactivation(model, target[None], "relu1")[0], V)
    lp = solve_exact(model, "relu1", target, target, units, config=ExactConfig(proximity=0))
    assert lp.outcomes == (OPTIMAL,) * V
    return target, units, lp


def test_exact_vertices_are_valid_and_the_target_itself_is_not(mlp_model):
    target, units, lp = _problem(mlp_model)
    exact = ExactSolver(ExactConfig()).criterion
    check = check_vertices(mlp_model, "relu1", lp.vertices, target, units, exact, outcomes=list(lp.outcomes))
    assert check.valid.all(), check.reasons
    assert (check.pushed <= check.target_pushed - check.margin).all()
    # A vertex that stayed on the target collides perfectly and is still no vertex.
    stuck = check_vertices(mlp_model, "relu1", target.expand(V, -1, -1, -1), target, units, exact,
                           outcomes=[OPTIMAL] * V)
    assert not stuck.valid.any()
    assert all("not below the target's" in r for r in stuck.reasons)


def test_a_small_exact_move_counts_for_the_lp_but_not_for_the_gradient_solver(mlp_model):
    # A point on the segment from the target to an LP vertex is an exact collision too;
    # close enough to the target, its unit has moved less than the gradient margin but
    # far more than rounding: the exact criterion accepts it, the gradient one does not.
    target, units, lp = _problem(mlp_model)
    net = copy.deepcopy(mlp_model).double()
    with torch.no_grad():
        t_pre = preactivation(net, target[None].double(), "relu1")[0]
        drop = (t_pre[units] - preactivation(net, lp.vertices.double(), "relu1")[torch.arange(V), units]).min()
    gap = float(t_pre.abs().max())
    share = float(0.3 * GradientConfig().push_margin * gap / drop)
    assert 0 < share < 1
    near = target + share * (lp.vertices - target)
    exact = check_vertices(mlp_model, "relu1", near, target, units, ExactSolver(ExactConfig()).criterion,
                           outcomes=[OPTIMAL] * V)
    assert exact.valid.all(), exact.reasons
    gradient = check_vertices(mlp_model, "relu1", near, target, units, GradientSolver(GradientConfig()).criterion)
    assert not gradient.valid.any()


def test_each_condition_names_itself(mlp_model):
    target, units, lp = _problem(mlp_model)
    exact = ExactSolver(ExactConfig()).criterion
    vertices = lp.vertices.clone()
    vertices[1] = float("nan")
    vertices[2] = (vertices[2] + 0.3).clamp(0, 1)  # far off the collision
    check = check_vertices(mlp_model, "relu1", vertices, target, units, exact,
                           outcomes=[OPTIMAL, "infeasible", OPTIMAL])
    assert check.valid.tolist() == [True, False, False]
    assert check.reasons[1] == "no vertex (infeasible)"
    assert check.reasons[2].startswith("feature error")
    left = check_vertices(mlp_model, "relu1", lp.vertices, target, units, exact,
                          outcomes=[OPTIMAL, "left_region", OPTIMAL])
    assert left.reasons[1] == "outcome left_region" and left.valid.tolist() == [True, False, True]


def test_the_paper_criterion_accepts_its_large_errors_and_checks_no_outcome():
    paper = PaperSolver(PaperConfig(lr=1.0)).criterion
    assert paper.rel_tol == PaperConfig().rel_tol and paper.outcome is None
    assert ExactSolver(ExactConfig()).criterion.outcome == OPTIMAL
    assert ExactConfig().push_margin < GradientConfig().push_margin
