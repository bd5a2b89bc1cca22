import pytest
import torch

from collide.config import GradientConfig
from collide.errors import DataError
from collide.objective import feature_rel_error, max_nonpositive_violation, nonpositive_units
from collide.taps import preactivation
from collide.vertices import solve_gradient
from tests.tolerances import EQUIVALENT

V = 5


def _problem(model, *, init_other: bool):
    gen = torch.Generator().manual_seed(3)
    target = torch.rand(1, 28, 28, generator=gen) * 0.5
    init = torch.rand(1, 28, 28, generator=gen) if init_other else target
    with torch.no_grad():
        t_pre = preactivation(model, target.unsqueeze(0), "relu1")
    units = nonpositive_units(t_pre[0], V)
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
    viol = max_nonpositive_violation(pre, t_pre)
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


def test_paper_loss_runs_and_leaves_the_model_alone(mlp_model):
    before = {k: v.clone() for k, v in mlp_model.state_dict().items()}
    t_pre, init, units = _problem(mlp_model, init_other=False)
    res = solve_gradient(mlp_model, "relu1", t_pre, init, units,
                         config=GradientConfig(loss="paper", max_steps=100))
    assert res.vertices.shape == init.shape
    assert all(torch.equal(before[k], v) for k, v in mlp_model.state_dict().items())
    assert all(p.requires_grad for p in mlp_model.parameters())


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
    t_pre, init, units = _problem(mlp_model, init_other=True)
    config = GradientConfig()
    cpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config, device="cpu")
    gpu = solve_gradient(mlp_model, "relu1", t_pre, init, units, config=config, device="cuda")
    assert gpu.converged.all() and cpu.converged.all()
