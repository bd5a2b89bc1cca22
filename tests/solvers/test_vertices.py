import pytest
import torch

from collide.config import GradientConfig
from collide.errors import DataError
from collide.objective import feature_rel_error, max_regime_violation, saturated_units
from collide.solvers.gradient import solve_gradient
from collide.taps import preactivation
from tests.tolerances import EQUIVALENT, GRADIENT_VS_LP

V = 5


def _problem(model, *, init_other: bool):
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(1, 28, 28, generator=gen) * 0.5
    init = torch.rand(1, 28, 28, generator=gen) if init_other else target
    with torch.no_grad():
        t_pre = preactivation(model, target.unsqueeze(0), "relu1")
    units = saturated_units(t_pre[0], V)
    return t_pre.expand(V, -1), init.expand(V, -1, -1, -1), units


@pytest.mark.parametrize("init_other", [False, True])
def test_every_vertex_meets_the_criterion(mlp_model, init_other):
    config = GradientConfig()
    t_pre, init, units = _problem(mlp_model, init_other=init_other)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config)
    assert res.converged.all()
    with torch.no_grad():
        pre = preactivation(mlp_model, res.vertices, "relu1")
    rel = feature_rel_error(pre, t_pre)
    viol = max_regime_violation(pre, t_pre)
    for k in range(V):  # per vertex, not on the mean
        assert rel[k] <= config.rel_tol, (k, rel[k])
        assert viol[k] <= config.neg_tol, (k, viol[k])
        assert res.steps[k] >= config.min_steps
    assert float(res.vertices.min()) >= config.lower and float(res.vertices.max()) <= config.upper
    pushed = pre.gather(1, units.view(-1, 1)).flatten()
    assert (pushed < 0).all(), "each vertex pushes its unit below zero"


def test_identical_seeds_give_identical_vertices(mlp_model):
    t_pre, init, units = _problem(mlp_model, init_other=True)
    a = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=GradientConfig())
    b = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=GradientConfig())
    assert torch.equal(a.vertices, b.vertices)
    assert torch.equal(a.steps, b.steps)


def test_batched_rows_follow_the_path_they_follow_alone(mlp_model):
    # Over a few steps: past that, float32 summation order (batch of 5 vs 1) and the
    # kink of |y| in L- let the paths part by more than rounding.
    t_pre, init, units = _problem(mlp_model, init_other=True)
    config = GradientConfig(max_steps=20, min_steps=20)
    both = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config)
    for k in (0, 3):
        alone = solve_gradient(mlp_model, "relu1", t_pre[k : k + 1], init[k : k + 1], units[k : k + 1], config=config)
        assert torch.allclose(both.vertices[k : k + 1], alone.vertices, atol=EQUIVALENT)


def test_paper_loss_lowers_the_paper_objective_and_leaves_the_model_alone(mlp_model):
    from collide.objective import loss_minus, loss_plus

    before = {k: v.clone() for k, v in mlp_model.state_dict().items()}
    t_pre, init, units = _problem(mlp_model, init_other=True)
    config = GradientConfig(loss="paper", others_weight=1.0, max_steps=100)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config)

    def objective(x):
        with torch.no_grad():
            pre = preactivation(mlp_model, x, "relu1")
        return config.alpha * loss_plus(pre, t_pre) + config.beta * loss_minus(pre, t_pre, units, others=1.0)

    assert (objective(res.vertices) < objective(init)).all()
    assert all(torch.equal(before[k], v) for k, v in mlp_model.state_dict().items())
    assert all(p.requires_grad for p in mlp_model.parameters())


def test_a_vertex_started_at_the_target_moves_its_unit_well_below(mlp_model):
    # The failure this guards against: with min_steps=0 the target itself meets the
    # criterion, and a solver that kept the first feasible iterate returned the target.
    t_pre, init, units = _problem(mlp_model, init_other=False)
    config = GradientConfig(min_steps=0)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config)
    margin = config.push_margin * float(t_pre.abs().max())
    assert res.converged.all()
    for k in range(V):
        assert res.pushed[k] <= res.target_pushed[k] - margin, (k, res.pushed[k], res.target_pushed[k])
        assert res.first_feasible[k] == 0 and res.steps[k] > config.plateau_window
    assert (res.vertices - init).flatten(1).norm(dim=1).min() > 0.1


def test_the_vertex_reaches_the_exact_optimum_of_its_unit(mlp_model):
    # The oracle: the LP minimum of each pushed unit over the collision set (no pull to
    # the init). A solver that stopped at its first feasible iterate ends far above it.
    from collide.config import ExactConfig
    from collide.solvers.exact import solve_exact

    t_pre, init, units = _problem(mlp_model, init_other=False)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=GradientConfig(min_steps=0))
    lp = solve_exact(mlp_model, "relu1", init[0], init[0], units, config=ExactConfig(proximity=0))
    assert lp.outcomes == ("optimal",) * V
    with torch.no_grad():
        optimum = preactivation(mlp_model.double(), lp.vertices.double(), "relu1")[torch.arange(V), units].float()
    for k in range(V):
        assert abs(res.pushed[k] - optimum[k]) <= GRADIENT_VS_LP * abs(optimum[k]), (k, res.pushed[k], optimum[k])


def test_the_continuation_factor_does_not_overflow():
    from collide.solvers.gradient import _weight_factor

    with pytest.raises(OverflowError):
        1.01**100_000  # noqa: B018  (what the solver computed before)
    assert _weight_factor(100_000, 1.01) == pytest.approx(1e8)
    assert _weight_factor(10, 1.01) == pytest.approx(1.01**10)


def test_bad_inputs_are_refused(mlp_model):
    t_pre, init, units = _problem(mlp_model, init_other=False)
    config = GradientConfig(max_steps=5, min_steps=0)
    with pytest.raises(DataError, match="NaN"):
        solve_gradient(mlp_model, "relu1", t_pre, torch.full_like(init, float("nan")), units, config=config)
    with pytest.raises(DataError, match="outside the valid input range"):
        solve_gradient(mlp_model, "relu1", t_pre, init + 2, units, config=config)
    with pytest.raises(DataError, match="one B"):
        solve_gradient(mlp_model, "relu1", t_pre[:2], init, units, config=config)


def test_config_errors_say_what_was_wrong():
    from collide.errors import ConfigError

    with pytest.raises(ConfigError, match="expected lr > 0, got -1"):
        GradientConfig(lr=-1)
    with pytest.raises(ConfigError, match="expected loss in"):
        GradientConfig(loss="hinge")
    with pytest.raises(ConfigError, match="max_steps"):
        GradientConfig(min_steps=10, max_steps=5)


@pytest.mark.gpu
def test_cuda_matches_cpu(mlp_model):
    from collide.precision import full_precision

    t_pre, init, units = _problem(mlp_model, init_other=True)
    short = GradientConfig(max_steps=20, min_steps=20)
    with full_precision():
        cpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=short, device="cpu")
        gpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=short, device="cuda")
        assert torch.allclose(cpu.vertices, gpu.vertices, atol=EQUIVALENT)  # the same path, step by step
        config = GradientConfig()
        cpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config, device="cpu")
        gpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config, device="cuda")
    assert gpu.converged.all() and cpu.converged.all()
    with torch.no_grad():  # the GPU's vertices, checked on the CPU
        pre = preactivation(mlp_model, gpu.vertices, "relu1")
    assert (feature_rel_error(pre, t_pre) <= config.rel_tol).all()
    assert torch.allclose(gpu.pushed, cpu.pushed, rtol=0.05)


def test_a_vertex_that_stops_improving_before_it_collides_stalls_instead_of_running_on(mlp_model):
    """An optimiser too slow to move (lr 1e-7, no continuation) from another image: the
    feature error cannot fall by ``stall_tol`` in ``stall_window`` steps, so each vertex
    stops there as "stalled"; without the stall test it runs to ``max_steps``."""
    t_pre, init, units = _problem(mlp_model, init_other=True)
    stuck = GradientConfig(loss="paper", lr=1e-7, lr_end=1e-7, min_steps=0, max_steps=400, stall_window=40)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=stuck)
    assert not res.converged.any() and res.stalled.all()
    assert (res.steps <= stuck.stall_window + 1).all()
    assert res.summary()["outcomes"] == ["stalled"] * V
    plain = solve_gradient(mlp_model, "relu1", t_pre, init, units,
                           config=GradientConfig(loss="paper", lr=1e-7, lr_end=1e-7, min_steps=0, max_steps=100))
    assert (plain.steps == 100).all() and plain.summary()["outcomes"] == ["max_steps"] * V
