import copy
import itertools
from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import collide.piecewise.pieces as pieces_module
import collide.solvers.exact as exact_module
from collide.config import ExactConfig
from collide.errors import DataError
from collide.models.zoo import lenet5
from collide.objective import feature_rel_error, saturated_units
from collide.piecewise import highs, linearise, lp
from collide.piecewise.linearise import affine_piece
from collide.piecewise.lp import INFEASIBLE, LpSolution
from collide.sites import Watch
from collide.solvers.exact import FAILED, OPTIMAL, solve_exact
from collide.taps import preactivation
from tests.support import feature_errors_f64, shrunk_mlp
from tests.tolerances import (
    JACOBIAN_MODES_AGREE,
    LP_CONSTRAINT,
    LP_STORED_REL_ERROR_F64,
    RANK_RTOL,
    UNCHANGED,
)

V = 5


def _target(seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_first_layer_vertices_satisfy_every_constraint(mlp_model):
    target = _target()
    init = _target(seed=4)
    with torch.no_grad():
        units = saturated_units(preactivation(mlp_model, target.unsqueeze(0), "relu1")[0], V)
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


def test_each_vertex_minimises_its_unit(mlp_model):
    # Without the proximity term vertex k is the LP optimum for unit k, so no other
    # vertex can push unit k lower.
    target = _target()
    with torch.no_grad():
        units = saturated_units(preactivation(mlp_model, target.unsqueeze(0), "relu1")[0], V)
    res = solve_exact(mlp_model, "relu1", target, target, units, config=ExactConfig(proximity=0))
    with torch.no_grad():
        pre = preactivation(mlp_model, res.vertices, "relu1").double()
    for k in range(V):
        assert pre[k, units[k]] <= pre[:, units[k]].min() + UNCHANGED * 10


def test_deeper_layer_keeps_the_activation_region(mlp_model):
    target = _target()
    with torch.no_grad():
        t_pre = preactivation(mlp_model, target.unsqueeze(0), "relu2")
    units = saturated_units(t_pre[0], 3)
    res = solve_exact(mlp_model, "relu2", target, target, units, config=ExactConfig())
    assert res.outcomes == (OPTIMAL,) * 3
    assert (res.rel_error <= LP_CONSTRAINT).all()
    with torch.no_grad():
        first_t = preactivation(mlp_model, target.unsqueeze(0), "relu1").double()
        first_v = preactivation(mlp_model.double(), res.vertices.double(), "relu1")
    mlp_model.float()
    signs_t = first_t > 0
    assert ((first_v >= -LP_CONSTRAINT) | ~signs_t).all() and ((first_v <= LP_CONSTRAINT) | signs_t).all()



def _solve_colliding(net: nn.Module, layer: str, target, init, n: int, config: ExactConfig):
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), layer)[0], n)
    res = solve_exact(net, layer, target, init, units, config=config)
    assert res.outcomes == (OPTIMAL,) * n
    assert res.vertices.dtype == torch.float32
    errors = feature_errors_f64(net, layer, target, res.vertices)
    for k in range(n):
        assert errors[k] <= LP_STORED_REL_ERROR_F64, f"vertex {k}: feature error {float(errors[k]):.2e}"
    return res


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


@pytest.mark.slow
def test_max_pooling_vertices_are_optimal_and_collide_in_float64():
    net = _seeded(lenet5)
    target = _target()
    # 8,000+ region rows from the conv layers: one vertex, no L1 term, keeps it quick.
    res = _solve_colliding(net, "relu3", target, target, 1, ExactConfig(proximity=0))
    assert (res.vertices - target).abs().amax() > 1e-3  # the LP moved: the region rows were at stake


def _pool_before_relu_2d() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 3, 3),
            pool1=nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(3, 4, 3),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d((2, 1), dilation=(1, 2)),
            flatten=nn.Flatten(),
            fc1=nn.Linear(4 * 1 * 3, 12),
            relu3=nn.ReLU(),
        )
    )


def _pool_before_relu_1d() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv1d(1, 3, 3),
            pool1=nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
            relu1=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(3 * 5, 12),
            relu2=nn.ReLU(),
        )
    )


@pytest.mark.parametrize(
    ("build", "shape", "layer"),
    [
        (_pool_before_relu_2d, (1, 10, 10), "relu3"),
        (_pool_before_relu_1d, (1, 12), "relu2"),
    ],
)
def test_max_pooling_before_its_relu_keeps_the_winners(build, shape, layer):
    net = _seeded(build)
    gen = torch.Generator().manual_seed(5)
    target, init = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    assert affine_piece(net, layer, target).n_pool_rows > 0
    _solve_colliding(net, layer, target, init, 3, ExactConfig())


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)),
        nn.MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
    ],
)
def test_window_pairs_match_a_brute_force_oracle(pool):
    nd = 2 if isinstance(pool, nn.MaxPool2d) else 1
    shape = (1, 2, 7, 8) if nd == 2 else (1, 2, 11)
    value = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []
    with Watch(pool, calls.append):  # the window as the exact solver sees it: read off the call
        pool(value)
    entries, winners = linearise.window_pairs(calls[0].params, value)
    pooled = pool(value)
    flat = value.flatten()

    def per_dim(v):
        return tuple(v) if isinstance(v, tuple) else (v,) * nd

    kernel, stride = per_dim(pool.kernel_size), per_dim(pool.stride)
    padding, dilation = per_dim(pool.padding), per_dim(pool.dilation)
    spatial = shape[2:]
    expected = set()
    for channel in range(shape[1]):
        for out in itertools.product(*(range(n) for n in pooled.shape[2:])):
            window = []
            for offs in itertools.product(*(range(k) for k in kernel)):
                pos = [o * s - p + i * dl for o, s, p, i, dl in zip(out, stride, padding, offs, dilation, strict=True)]
                if all(0 <= q < n for q, n in zip(pos, spatial, strict=True)):
                    window.append(channel * int(np.prod(spatial)) + int(np.ravel_multi_index(pos, spatial)))
            best = max(window, key=lambda i: float(flat[i]))
            assert flat[best] == pooled[(0, channel, *out)]  # the window is the pool's own
            expected |= {(e, best) for e in window if e != best}
    assert set(zip(entries.tolist(), winners.tolist(), strict=True)) == expected
    assert len(entries) == len(expected)


class _ResidualNet(nn.Module):
    """Conv, batch norm (eval), a residual addition and average pooling: all affine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.relu3 = nn.ReLU()
        gen = torch.Generator().manual_seed(2)
        for bn in (self.bn1, self.bn2):  # statistics a trained net could have, not 0 and 1
            bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.rand(4, generator=gen) + 0.5)
            bn.bias.data.copy_(torch.randn(4, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)) + h)
        return self.relu3(self.fc(self.pool(h).flatten(1)))


def test_batch_norm_average_pooling_and_residuals_need_no_rows():
    net = _seeded(_ResidualNet)
    before = copy.deepcopy(net.state_dict())
    gen = torch.Generator().manual_seed(6)
    target, init = torch.rand(1, 8, 8, generator=gen), torch.rand(1, 8, 8, generator=gen)
    piece = affine_piece(net, "relu3", target)
    assert piece.n_pool_rows == 0 and piece.n_relu_rows > 0
    _solve_colliding(net, "relu3", target, init, 3, ExactConfig())
    assert not net.training
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    ("build", "shape", "layer"),
    [
        (_ResidualNet, (1, 8, 8), "relu3"),
        (_pool_before_relu_2d, (1, 10, 10), "relu3"),
    ],
)
def test_forward_and_reverse_mode_give_the_same_piece(build, shape, layer, monkeypatch):
    net = _seeded(build)
    target = torch.rand(shape, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(linearise, "_JACOBIAN_BUDGET", 12_000)  # several chunks either way
    forward = affine_piece(net, layer, target, mode="forward")
    reverse = affine_piece(net, layer, target, mode="reverse")
    for name in ("jac", "offset", "region_jac", "region_bound"):
        a, b = getattr(forward, name), getattr(reverse, name)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= JACOBIAN_MODES_AGREE * (1 + np.abs(a).max()), name
    net64 = copy.deepcopy(net).double()
    x0 = target.double()
    oracle = torch.autograd.functional.jacobian(lambda x: preactivation(net64, x.unsqueeze(0), layer)[0], x0)
    assert np.abs(forward.jac - oracle.flatten(1).numpy()).max() <= JACOBIAN_MODES_AGREE
    with pytest.raises(ValueError, match="mode"):
        affine_piece(net, layer, target, mode="sideways")


def test_compressed_region_rows_give_the_vertices_of_dense_ones(monkeypatch):
    # The oracle: the same solve with every piece's region rows dense (SPARSE_DENSITY 0).
    # A blank corner and zero biases put the target on ties, so the adjacent pieces'
    # rows (re-linearised, compared with the target's) are compressed too.
    net = _seeded(_pool_before_relu_2d)
    with torch.no_grad():
        net.conv1.bias.zero_()
    gen = torch.Generator().manual_seed(5)
    target, init = torch.rand(1, 10, 10, generator=gen), torch.rand(1, 10, 10, generator=gen)
    target[:, :6, :6] = 0
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu3")[0], 3)
    config = ExactConfig(threads=1)
    made = []
    real = linearise.affine_piece

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(exact_module, "affine_piece", spy)
    monkeypatch.setattr(pieces_module, "affine_piece", spy)
    got = solve_exact(net, "relu3", target, init, units, config=config)
    assert made and all(sp.issparse(p.region_jac) for p in made)
    assert "tie-broken" in got.pieces  # the case is the one meant
    monkeypatch.setattr(linearise, "SPARSE_DENSITY", 0.0)
    made.clear()
    want = solve_exact(net, "relu3", target, init, units, config=config)
    assert made and not any(sp.issparse(p.region_jac) for p in made)
    assert (got.outcomes, got.pieces) == (want.outcomes, want.pieces) and OPTIMAL in want.outcomes
    ok = np.array([o == OPTIMAL for o in want.outcomes])
    assert (got.vertices[ok] - want.vertices[ok]).abs().max() <= LP_CONSTRAINT


def test_dim_upper_bound_at_the_first_layer_is_d_minus_the_weights_rank(mlp_model):
    target = _target()
    x = target.double().flatten().numpy()
    pos = np.flatnonzero(mlp_model.fc1(target.flatten()).detach().numpy() > 0)
    # Rows scaled by powers of two stay exactly dependent: rank(W⁺) < the positive count.
    first, copies = pos[0], pos[1:31]
    scale = torch.tensor([0.5, 2.0, 4.0]).repeat(10)
    with torch.no_grad():
        mlp_model.fc1.weight[copies] = mlp_model.fc1.weight[first] * scale[:, None]
        mlp_model.fc1.bias[copies] = mlp_model.fc1.bias[first] * scale
    w = mlp_model.fc1.weight.double().detach().numpy()
    b = mlp_model.fc1.bias.double().detach().numpy()
    positive = (w @ x + b) > 0
    rank = np.linalg.matrix_rank(w[positive])
    assert rank < positive.sum()
    units = torch.from_numpy(np.flatnonzero(~positive)[:1])
    res = solve_exact(mlp_model, "relu1", target, target, units, config=ExactConfig(proximity=0))
    assert res.n_positive == positive.sum()
    assert res.rank_positive == rank
    assert res.dim_upper_bound == 784 - rank


def test_dim_upper_bound_is_met_by_collision_directions_at_a_deeper_layer(mlp_model):
    # For a target strictly inside the box, its region and its half-spaces the bound is
    # attained: collision directions checked by real forward passes span exactly that
    # many dimensions, and a direction off that subspace changes the features.
    target = 0.25 + _target()
    x = target.double().flatten().numpy()
    w1, b1, w2, b2 = (
        p.detach().double().numpy()
        for p in (mlp_model.fc1.weight, mlp_model.fc1.bias, mlp_model.fc2.weight, mlp_model.fc2.bias)
    )
    h = w1 @ x + b1
    y = w2 @ np.maximum(h, 0) + b2
    pos = y > 0
    jac = w2 @ ((h > 0)[:, None] * w1)  # the oracle: the region's Jacobian from the weights
    _, s, vt = np.linalg.svd(jac[pos])
    rank = int((s > RANK_RTOL * s[0]).sum())
    units = torch.from_numpy(np.flatnonzero(~pos)[:1])
    res = solve_exact(mlp_model, "relu2", target, target, units, config=ExactConfig(proximity=0))
    assert res.rank_positive == rank

    margin = min(np.abs(h).min(), np.abs(y[~pos]).min(), x.min(), 1 - x.max())
    step = 0.5 * margin / max(np.linalg.norm(w1, axis=1).max(), np.linalg.norm(jac, axis=1).max())
    null = vt[rank:]
    directions = np.random.default_rng(0).standard_normal((len(null), len(null))) @ null
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    net = copy.deepcopy(mlp_model).double()
    with torch.no_grad():
        moved = torch.from_numpy(x + step * directions).view(-1, 1, 28, 28)
        errors = feature_rel_error(preactivation(net, moved, "relu2"), torch.from_numpy(y)[None])
        off = torch.from_numpy(x + step * vt[0]).view(1, 1, 28, 28)
        off_error = feature_rel_error(preactivation(net, off, "relu2"), torch.from_numpy(y)[None])
    assert errors.max() <= LP_CONSTRAINT * step
    measured = np.linalg.matrix_rank(directions)
    assert res.dim_upper_bound == measured
    assert off_error > 1e3 * errors.max()


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
    with pytest.raises(DataError, match="not in a flat piece .* it is positive"):
        solve_exact(mlp_model, "relu1", target, target, positive, config=ExactConfig())


@pytest.mark.parametrize(("where", "value"), [("fc2", float("nan")), ("fc1", float("inf"))])
def test_a_model_that_computes_nan_or_inf_is_refused_where_it_is_linearised(mlp_model, where, value):
    # Before: the NaN reached the layer's values, and the message blamed the pushed unit.
    net = copy.deepcopy(mlp_model)
    with torch.no_grad():
        getattr(net, where).weight[3, 5] = value
    target = _target()
    with pytest.raises(DataError, match="up to layer 'relu2' holds .* NaN or infinite values .* check its weights"):
        solve_exact(net, "relu2", target, target, torch.tensor([0]), config=ExactConfig(threads=1))


@pytest.mark.parametrize("factor", [1.0, 2.0**-27])
def test_a_point_that_left_its_piece_is_caught_at_any_scale_of_the_layer(mlp_model, monkeypatch, factor):
    # The oracle: a point whose relu1 signs differ from the target's is off the target's
    # piece, however small the layer's values (2**-27: pre-activations near 1e-8, where an
    # allowance of region_tol x (1 + max|t|) let it pass as optimal).
    net = shrunk_mlp(mlp_model, factor)
    target = _target()
    far = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        signs = [(preactivation(net, x.unsqueeze(0), "relu1")[0] > 0) for x in (target, far)]
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu2")[0], 2)
    assert (signs[0] != signs[1]).any()  # the case is the one meant
    monkeypatch.setattr(lp.LpFamily, "solve", lambda self, cost, lam, **_: LpSolution(
        far.double().flatten().numpy(), OPTIMAL))
    res = solve_exact(net, "relu2", target, target, units, config=ExactConfig(threads=1))
    assert res.outcomes == ("left_region",) * 2


@pytest.mark.parametrize("rescale", [True, False])
def test_vertices_do_not_depend_on_the_scale_of_the_layer(mlp_model, monkeypatch, rescale):
    # At 2**-27 (about 7e-9) the rows' entries fall below HiGHS's matrix floor (1e-9,
    # dropped) and near its absolute tolerances. Rescaled by powers of two, they give the
    # unscaled model's vertices bit for bit; as they are, they do not.
    if not rescale:
        monkeypatch.setattr(highs, "SMALL_COEFFICIENT", 0.0)
    target, init = _target(), _target(seed=4)
    with torch.no_grad():
        units = saturated_units(preactivation(mlp_model, target.unsqueeze(0), "relu2")[0], 3)
    config = ExactConfig(threads=1)
    ref = solve_exact(mlp_model, "relu2", target, init, units, config=config)
    small = solve_exact(shrunk_mlp(mlp_model, 2.0**-27), "relu2", target, init, units, config=config)
    assert ref.outcomes == (OPTIMAL,) * 3
    assert (small.outcomes == ref.outcomes and torch.equal(small.vertices, ref.vertices)) == rescale


def test_an_lp_the_solver_calls_infeasible_is_reported_failed(mlp_model, monkeypatch):
    # The target meets every row of every LP solve_exact writes: "infeasible" from the
    # solver would claim no collision where one exists.
    def infeasible(self, cost, lam, **_):
        return LpSolution(np.full(len(self.init), np.nan), INFEASIBLE)

    monkeypatch.setattr(lp.LpFamily, "solve", infeasible)
    target = _target()
    with torch.no_grad():
        units = saturated_units(preactivation(mlp_model, target.unsqueeze(0), "relu1")[0], 2)
    res = solve_exact(mlp_model, "relu1", target, target, units, config=ExactConfig(threads=1))
    assert res.outcomes == (FAILED, FAILED)
    assert torch.isnan(res.vertices).all()
