import numpy as np
import pytest
import torch

from collide.config import ExactConfig
from collide.errors import DataError
from collide.exact import LEFT_REGION, OPTIMAL, solve_exact
from collide.models import lenet5
from collide.objective import nonpositive_units
from collide.taps import preactivation
from tests.tolerances import LP_CONSTRAINT, UNCHANGED

V = 5


def _target(seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_first_layer_vertices_satisfy_every_constraint(mlp_model):
    target = _target()
    init = _target(seed=4)
    with torch.no_grad():
        units = nonpositive_units(preactivation(mlp_model, target.unsqueeze(0), "relu1")[0], V)
    res = solve_exact(mlp_model, "relu1", target, init, units, config=ExactConfig())
    assert res.outcomes == (OPTIMAL,) * V
    w = mlp_model.fc1.weight.double().detach().numpy()
    b = mlp_model.fc1.bias.double().detach().numpy()
    t_pre = w @ target.double().flatten().numpy() + b
    pos = t_pre > 0
    for k in range(V):  # the oracle: the layer's own weights, in float64
        x = res.vertices[k].double().flatten().numpy()
        pre = w @ x + b
        scale = 1 + np.abs(t_pre).max()
        assert np.abs(pre[pos] - t_pre[pos]).max() <= LP_CONSTRAINT * scale
        assert pre[~pos].max() <= LP_CONSTRAINT * scale
        assert x.min() >= 0 and x.max() <= 1
        assert pre[units[k]] < 0
    assert res.input_dim == 784
    assert res.n_positive == int(pos.sum())
    assert res.rank_positive == np.linalg.matrix_rank(w[pos])
    assert res.dim_bound == 784 - res.rank_positive


def test_each_vertex_minimises_its_unit(mlp_model):
    # Without the proximity term vertex k is the LP optimum for unit k, so no other
    # vertex can push unit k lower.
    target = _target()
    with torch.no_grad():
        units = nonpositive_units(preactivation(mlp_model, target.unsqueeze(0), "relu1")[0], V)
    res = solve_exact(mlp_model, "relu1", target, target, units, config=ExactConfig(proximity=0))
    with torch.no_grad():
        pre = preactivation(mlp_model, res.vertices, "relu1").double()
    for k in range(V):
        assert pre[k, units[k]] <= pre[:, units[k]].min() + UNCHANGED * 10


def test_deeper_layer_keeps_the_activation_region(mlp_model):
    target = _target()
    with torch.no_grad():
        t_pre = preactivation(mlp_model, target.unsqueeze(0), "relu2")
    units = nonpositive_units(t_pre[0], 3)
    res = solve_exact(mlp_model, "relu2", target, target, units, config=ExactConfig())
    assert res.outcomes == (OPTIMAL,) * 3
    assert (res.rel_error <= LP_CONSTRAINT).all()
    with torch.no_grad():
        first_t = preactivation(mlp_model, target.unsqueeze(0), "relu1").double()
        first_v = preactivation(mlp_model.double(), res.vertices.double(), "relu1")
    mlp_model.float()
    signs_t = first_t > 0
    assert ((first_v >= -LP_CONSTRAINT) | ~signs_t).all() and ((first_v <= LP_CONSTRAINT) | signs_t).all()


def test_max_pooling_region_is_checked_by_a_real_forward():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = lenet5().eval()
    target = _target()
    with torch.no_grad():
        units = nonpositive_units(preactivation(net, target.unsqueeze(0), "relu3")[0], 1)
    # 6,000+ region constraints from the conv layers: one vertex, no L1 term, keeps it quick.
    res = solve_exact(net, "relu3", target, target, units, config=ExactConfig(proximity=0))
    for outcome, rel in zip(res.outcomes, res.rel_error, strict=True):
        assert outcome in (OPTIMAL, LEFT_REGION)
        if outcome == OPTIMAL:
            assert rel <= 1e-5


def test_bad_inputs_are_refused(mlp_model):
    target = _target()
    units = torch.tensor([0])
    with pytest.raises(DataError, match="differ in shape"):
        solve_exact(mlp_model, "relu1", target, target[:, :10], units, config=ExactConfig())
    with pytest.raises(DataError, match="NaN"):
        solve_exact(mlp_model, "relu1", target, target * float("nan"), units, config=ExactConfig())
    with torch.no_grad():
        pre = preactivation(mlp_model, target.unsqueeze(0), "relu1")[0]
    positive = torch.nonzero(pre > 0).flatten()[:1]
    with pytest.raises(DataError, match="positive for the target"):
        solve_exact(mlp_model, "relu1", target, target, positive, config=ExactConfig())
