"""The layered exact LP against the dense one: the same maps, the same vertices."""

import copy
import weakref
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collide.config import ExactConfig
from collide.errors import ConfigError, LayerError
from collide.objective import saturated_units
from collide.piecewise import lp
from collide.piecewise import pieces as pieces_module
from collide.piecewise.layered_lp import build_lp, collision_layer, linear_on, piece_at, tied
from collide.piecewise.layers import LayeredUnsupported, layered_net
from collide.piecewise.linearise import affine_piece
from collide.piecewise.pieces import TIE_TOL
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.taps import preactivation, site_of
from tests.support import feature_errors_f64
from tests.tolerances import JACOBIAN_MODES_AGREE, LP_FORMS_AGREE, LP_STORED_REL_ERROR_F64


class _Residual(nn.Module):
    """Batch norm, a functional ReLU, a residual addition and a strided convolution:
    a map between two calls that reads two earlier outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        b = self.relu(self.conv2(a) + a)
        c = self.relu(self.down(b))
        return self.fc(c.flatten(1))


def _cnn_pool() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 3, 3), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(3, 4, 3, padding=1), relu2=nn.ReLU(inplace=True),
        pool2=nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        flatten=nn.Flatten(), fc1=nn.Linear(4 * 3 * 3, 12), relu3=nn.ReLU(),
    ))


def _mlp() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(36, 24), relu1=nn.ReLU(), fc2=nn.Linear(24, 16), relu2=nn.ReLU(),
    ))


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build().eval()
    with torch.no_grad():  # batch norm with statistics of its own, not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(seed))
                m.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))
    return net


CASES = [
    (_mlp, (1, 6, 6), "relu2"),
    (_cnn_pool, (1, 10, 10), "relu3"),
    (_Residual, (2, 8, 8), "relu#1"),
]


def _inputs(shape, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)


@pytest.mark.parametrize(("build", "shape", "layer"), CASES)
def test_layered_maps_compose_to_the_dense_jacobian(build, shape, layer):
    net = _seeded(build)
    target, _ = _inputs(shape)
    layered = layered_net(net, layer, target)
    piece = piece_at(layered, [c.value for c in layered.calls[:-1]])
    lin = linear_on(layered, piece)
    dense = affine_piece(net, layer, target)  # the oracle: autograd's Jacobian of the whole net
    jac = lin.rows(np.arange(layered.calls[-1].size))
    scale = np.abs(dense.jac).max()
    assert np.abs(jac - dense.jac).max() <= JACOBIAN_MODES_AGREE * scale
    x0 = target.double().flatten().numpy()
    t_pre = dense.jac @ x0 + dense.offset
    assert np.abs(lin.values(x0)[-1] - t_pre).max() <= JACOBIAN_MODES_AGREE * (1 + np.abs(t_pre).max())
    # Sparse as the weights: each unit of a convolution reads its window only.
    first = layered.calls[0]
    if len(first.shape) > 1:
        assert first.from_x.nnz < first.from_x.shape[0] * first.from_x.shape[1] / 2



def _both(net, layer, target, init, n):
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), layer)[0], n)
    config = ExactConfig(threads=1)
    return [solve_exact(net, layer, target, init, units, config=config, form=form) for form in ("dense", "layered")]


@pytest.mark.parametrize(("build", "shape", "layer"), CASES)
def test_both_forms_give_the_same_vertices(build, shape, layer):
    net = _seeded(build)
    target, init = _inputs(shape)
    dense, layered = _both(net, layer, target, init, 3)
    assert dense.form == "dense" and layered.form == "layered"
    assert layered.outcomes == dense.outcomes == (OPTIMAL,) * 3
    assert layered.pieces == dense.pieces
    assert layered.rank_positive == dense.rank_positive
    assert (layered.vertices - dense.vertices).abs().max() <= LP_FORMS_AGREE
    errors = feature_errors_f64(net, layer, target, layered.vertices)
    for k in range(3):
        assert errors[k] <= LP_STORED_REL_ERROR_F64, f"vertex {k}: feature error {float(errors[k]):.2e}"


def _tied(n_units: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A target with a blank corner: its pooling windows tie and its ReLUs sit at 0 (zero
    biases), so it lies on the boundary of several pieces. The net, target, init and the
    first ``n_units`` saturated units at relu3."""
    net = _seeded(_cnn_pool)
    with torch.no_grad():
        net.conv1.bias.zero_()
    target, init = _inputs((1, 10, 10))
    target[:, :6, :6] = 0
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu3")[0], n_units)
    return net, target, init, units


def test_both_forms_break_the_same_ties():
    net, target, init, _ = _tied(3)
    dense, layered = _both(net, "relu3", target, init, 3)
    assert "tie-broken" in dense.pieces  # the case is the one meant
    assert layered.pieces == dense.pieces
    assert layered.outcomes == dense.outcomes
    ok = np.array([o == OPTIMAL for o in dense.outcomes])
    assert (layered.vertices[ok] - dense.vertices[ok]).abs().max() <= LP_FORMS_AGREE


def _shrunk(net: nn.Module, factor: float) -> nn.Module:
    """``net`` with every value from conv1 on times ``factor`` (a power of two: exactly),
    ReLU and max pooling being positively homogeneous: the same pieces and the same ties."""
    small = copy.deepcopy(net)
    with torch.no_grad():
        for p in (small.conv1.weight, small.conv1.bias, small.conv2.bias, small.fc1.bias):
            p.mul_(factor)
    return small


def _layered_ties(net: nn.Module, target: torch.Tensor) -> tuple[np.ndarray, ...]:
    read = layered_net(net, "relu3", target)
    piece = piece_at(read, [c.value for c in read.calls[:-1]])
    return tied(read, piece, linear_on(read, piece), target.double().flatten().numpy(), TIE_TOL)


def test_layered_ties_and_vertices_do_not_depend_on_the_scale_of_the_values():
    # The oracle: the same net with its values times 2**-27 (near 1e-9) sits on the same
    # ties and gives the same vertices, bit for bit. Before: ties were judged relative to
    # 1 + the values, so every value within about 1e-9 of 0 counted as tied there (109, 78,
    # 43 and 86 ties in the four calls, where the net has 48, 0, 0 and 0), and the LP's
    # variables, near 1e-9, sat at HiGHS's tolerances: every vertex failed.
    net, target, init, units = _tied(3)
    small = _shrunk(net, 2.0**-27)
    ref, got = _layered_ties(net, target), _layered_ties(small, target)
    assert sum(int(t.sum()) for t in ref) > 0  # the case is the one meant: ties at the target
    assert all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))
    config = ExactConfig(threads=1)
    want, have = (solve_exact(m, "relu3", target, init, units, config=config, form="layered") for m in (net, small))
    assert want.outcomes == (OPTIMAL,) * 3 and "tie-broken" in want.pieces
    assert (have.outcomes, have.pieces) == (want.outcomes, want.pieces)
    assert torch.equal(have.vertices, want.vertices)


def _pool_of_a_pool() -> nn.Sequential:
    """A pool whose overlapping windows read an earlier pool's winners, some twice (as
    GoogLeNet's inception branches do)."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 3, 3), relu1=nn.ReLU(), pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        pool2=nn.MaxPool2d(3, stride=1, padding=1), conv2=nn.Conv2d(3, 4, 3), relu2=nn.ReLU(),
    ))


def test_an_entry_read_twice_is_no_tie_and_no_row():
    # The oracle: the dense form, which drops a pool row whose two entries are one value
    # (its Jacobian row is zero) and finds no tie on a random target. The layered form
    # counted such pairs (equal at every x) as ties, and solved an LP without them for
    # nothing (GoogLeNet at 16 px had 251 of them), and kept their rows (235 against 230).
    net = _seeded(_pool_of_a_pool)
    target, init = _inputs((1, 12, 12))
    read = layered_net(net, "relu2", target)
    piece = piece_at(read, [c.value for c in read.calls[:-1]])
    pool = read.calls[2]
    _, entry, winner = piece.choices[2]
    same = pool.value[entry] == pool.value[winner]
    assert (same & (pool.value[winner] > 0)).any()  # the case is the one meant: read twice, not two zeros
    x0, x_init = target.double().flatten().numpy(), init.double().flatten().numpy()
    lin = linear_on(read, piece)
    assert not any(t.any() for t in tied(read, piece, lin, x0, TIE_TOL))
    dense = affine_piece(net, "relu2", target)
    assert not pieces_module.tied_rows(dense, x0).any()
    # and its LP, built at the init as a solve builds it, leaves those rows out as the dense form does
    assert build_lp(read, piece, lin, x_init, lower=0.0, upper=1.0).pool_rows.shape[0] == dense.n_pool_rows
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu2")[0], 2)
    both = [solve_exact(net, "relu2", target, init, units, config=ExactConfig(threads=1), form=form)
            for form in ("dense", "layered")]
    assert [w["lps"] for w in both[1].lp_work] == [1, 1]  # no LP without "tied" rows: 2 each before
    assert both[1].outcomes == both[0].outcomes == (OPTIMAL,) * 2
    assert (both[1].vertices - both[0].vertices).abs().max() <= LP_FORMS_AGREE


def test_a_pool_row_that_varies_only_across_the_probe_step_is_kept():
    # The oracle: the dense form. Which rows hold at every x is first screened by their
    # values at x and at a fixed pseudo-random step from it (numpy's default_rng(0),
    # uniform in [-1, 1]); a pair whose difference is orthogonal to that step passes the
    # screen but varies. A review built one: taken as constant, its row was dropped, and
    # the vertex left the target's pool winner (left_region) where the dense form's is optimal.
    step = np.random.default_rng(0).uniform(-1.0, 1.0, size=4)
    net = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(4, 4), unflatten=nn.Unflatten(1, (1, 2, 2)), pool=nn.MaxPool2d(2),
        flat=nn.Flatten(), fc2=nn.Linear(1, 2), relu=nn.ReLU(),
    )).double().eval()
    with torch.no_grad():
        net.fc1.weight.zero_()
        net.fc1.weight[0, 0], net.fc1.weight[1, 1] = float(step[1]), float(step[0])  # (e - w) . step = 0
        net.fc1.bias.copy_(torch.tensor([0.2, 0.0, -10.0, -10.0]))
        net.fc2.weight.fill_(1.0)
        net.fc2.bias.copy_(torch.tensor([-1.0, -2.0]))
    target = torch.tensor([[[0.5, 1.0], [0.3, 0.7]]], dtype=torch.float64)
    init = torch.zeros_like(target)
    read = layered_net(net, "relu", target)
    piece = piece_at(read, [c.value for c in read.calls[:-1]])
    lin = linear_on(read, piece)
    _, entry, winner = piece.choices[0]
    x_init = init.flatten().numpy()
    at, moved = lin.values(x_init)[0], lin.values(x_init + step)[0]
    assert (at[entry] - at[winner] == moved[entry] - moved[winner]).any()  # the case is the one meant
    dense = affine_piece(net, "relu", target)
    assert build_lp(read, piece, lin, x_init, lower=0.0, upper=1.0).pool_rows.shape[0] == dense.n_pool_rows == 3
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu")[0], 1)
    both = [solve_exact(net, "relu", target, init, units, config=ExactConfig(threads=1), form=form)
            for form in ("dense", "layered")]
    assert both[1].outcomes == both[0].outcomes == (OPTIMAL,)
    assert (both[1].vertices - both[0].vertices).abs().max() <= LP_FORMS_AGREE


@pytest.mark.parametrize("bias", [0.0, 1e-12])
def test_an_init_at_zero_gives_the_dense_forms_vertices(bias):
    # The oracle: the dense form. The layered LP's variables are scaled by the largest value
    # the box allows them; scaled by their terms at the init instead (rounding-sized at 0),
    # they reached 2**54: HiGHS refused the model (zero biases), or it gave other vertices,
    # 0.63 from the dense ones, one failed (biases x 1e-12).
    net = _seeded(_cnn_pool)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.mul_(bias)
    target, _ = _inputs((1, 10, 10))
    dense, layered = _both(net, "relu3", target, torch.zeros_like(target), 3)
    assert dense.outcomes == (OPTIMAL,) * 3 and layered.outcomes == dense.outcomes
    assert (layered.vertices - dense.vertices).abs().max() <= LP_FORMS_AGREE


@pytest.mark.parametrize("form", ["dense", "layered"])
def test_tie_breaking_gives_the_same_vertices_on_one_thread_and_on_several(form):
    """Where the target sits on ties, each vertex's LP on the target's piece and its
    tie-breaking chain run as separate tasks; the answer must not depend on how they
    are scheduled."""
    net, target, init, units = _tied(3)
    one, three = (solve_exact(net, "relu3", target, init, units, config=ExactConfig(threads=t), form=form)
                  for t in (1, 3))
    assert "tie-broken" in one.pieces  # the case is the one meant
    assert (one.outcomes, one.pieces, one.lp_work) == (three.outcomes, three.pieces, three.lp_work)
    assert torch.equal(one.vertices.nan_to_num(), three.vertices.nan_to_num())


def test_each_adjacent_piece_is_let_go_once_its_vertex_is_found(monkeypatch):
    """A vertex's adjacent piece holds its region rows (56 MB on LeNet-5's relu3), and a
    candidate keeps only the layer's map: on one thread no earlier adjacent piece is alive
    when the next is linearised, so the memory of one serves the next."""
    net, target, init, units = _tied(3)
    made: list[weakref.ref] = []
    alive_at_call: list[int] = []
    linearise = pieces_module.affine_piece

    def tracked(*args, **kwargs):
        alive_at_call.append(sum(ref() is not None for ref in made))
        piece = linearise(*args, **kwargs)
        made.append(weakref.ref(piece))
        return piece

    monkeypatch.setattr(pieces_module, "affine_piece", tracked)
    res = solve_exact(net, "relu3", target, init, units, config=ExactConfig(threads=1), form="dense")
    assert res.pieces.count("tie-broken") >= 2 and len(made) >= 2  # the case is the one meant
    assert alive_at_call == [0] * len(made)


def test_an_outdone_lp_on_the_targets_piece_keeps_the_vertex_that_solving_it_to_the_end_keeps(monkeypatch):
    """The LP on the target's piece stops once the adjacent vertex beats it; the oracle
    solves every LP to the end and keeps the lower objective."""
    net, target, _, units = _tied(6)
    config = ExactConfig(threads=1)
    cut = solve_exact(net, "relu3", target, target, units, config=config, form="dense")
    solve = lp.LpFamily.solve
    monkeypatch.setattr(lp.LpFamily, "solve", lambda self, cost, lam, **_: solve(self, cost, lam))
    whole = solve_exact(net, "relu3", target, target, units, config=config, form="dense")
    # The cases meant: LPs outdone, and a vertex whose own piece wins (its LP ran to the end).
    assert sum(w["outdone"] for w in cut.lp_work) > 0 and "target" in whole.pieces
    assert sum(w["outdone"] for w in whole.lp_work) == 0
    assert (cut.outcomes, cut.pieces) == (whole.outcomes, whole.pieces)
    assert torch.equal(cut.vertices.nan_to_num(), whole.vertices.nan_to_num())


def test_a_model_the_layered_form_cannot_read_is_refused_and_auto_solves_it_dense():
    net = _seeded(lambda: nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(16, 12), act=nn.LeakyReLU(0.1), fc2=nn.Linear(12, 8), relu=nn.ReLU())))
    target, init = _inputs((1, 4, 4))
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu")[0], 2)
    with pytest.raises(LayeredUnsupported, match="not modelled by the layered LP"):
        solve_exact(net, "relu", target, init, units, config=ExactConfig(threads=1), form="layered")
    res = solve_exact(net, "relu", target, init, units, config=ExactConfig(threads=1), form="auto")
    assert res.form == "dense" and res.outcomes == (OPTIMAL,) * 2


def test_the_collision_layer_pins_positive_units_and_pushes_one():
    net = _seeded(_mlp)
    target, _ = _inputs((1, 6, 6))
    site = site_of(net, "relu2", target.unsqueeze(0))
    t_pre = np.array([0.5, -0.2, 0.0, 1.5])
    layer = collision_layer(site, t_pre, 2)
    assert np.array_equal(layer.lower, [0.5, -np.inf, -np.inf, 1.5])
    assert np.array_equal(layer.upper, [0.5, 0.0, 0.0, 1.5])
    assert np.array_equal(layer.cost, [0.0, 0.0, 1.0, 0.0])
    with pytest.raises(LayerError, match="not in a flat piece .* it is positive"):
        collision_layer(site, t_pre, 3)


def test_past_the_dense_budget_auto_refuses_and_the_layered_form_solves():
    net = _seeded(_cnn_pool)
    target, init = _inputs((1, 10, 10))
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu3")[0], 1)
    small = ExactConfig(threads=1, max_entries=300)
    with pytest.raises(ConfigError, match="too large.*form='layered'"):
        solve_exact(net, "relu3", target, init, units, config=small)
    fits = solve_exact(net, "relu3", target, init, units, config=ExactConfig(threads=1))
    past = solve_exact(net, "relu3", target, init, units, config=small, form="layered")
    assert (fits.form, past.form) == ("dense", "layered")
    assert past.rank_positive == -1 and past.dim_upper_bound == -1  # J⁺ is not formed past the budget
    assert (past.vertices - fits.vertices).abs().max() <= LP_FORMS_AGREE
