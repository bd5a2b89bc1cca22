"""The affine piece's region rows (collide.piecewise.linearise) against the forward pass:
a point meets every row exactly where the model gives it the target's activation pattern."""

from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from collide.activations import RELU_SATURATION
from collide.piecewise import linearise
from collide.piecewise.linearise import affine_piece
from collide.piecewise.pieces import reading_rows, rows_on, tied_rows
from collide.taps import preactivation
from tests.tolerances import JACOBIAN_MODES_AGREE

# A row counts as met up to this, relative to 1 + |b|: float64 rounding of a row product
# is ~1e-15 there, and a random point lies ~1e-4 or more from any row.
ROW_MET = 1e-12


def _net() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, 3, 3),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # after a ReLU: rows between dead entries are dropped
            conv2=nn.Conv2d(3, 4, 1),
            clamp=nn.Hardtanh(-0.4, -0.05),  # units in each of its three pieces at the target
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * 2 * 2, 6),
            relu2=nn.ReLU(),
        )).double().eval()


def _pattern(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The oracle: every ReLU's signs, Hardtanh's pieces and max pool's winners at x."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        (z,) = args
        if isinstance(module, nn.ReLU):
            seen.append(z > 0)
        elif isinstance(module, nn.Hardtanh):
            seen.append((z > module.min_val).long() + (z > module.max_val).long())
        elif isinstance(module, nn.MaxPool2d):
            seen.append(F.max_pool2d(z, module.kernel_size, return_indices=True)[1])

    handles = [m.register_forward_hook(hook) for m in (net.relu1, net.pool1, net.clamp, net.pool2)]
    try:
        with torch.no_grad():
            net(x.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_point_meets_the_region_rows_exactly_where_it_keeps_the_targets_pattern(mode, monkeypatch):
    net = _net()
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.uniform(0, 1, (1, 10, 10)))
    monkeypatch.setattr(linearise, "_JACOBIAN_SEEDS", 7)  # many chunks, a short one at the end
    piece = affine_piece(net, "relu2", target, mode=mode)
    want = _pattern(net, target)
    inside = outside = 0
    for scale in np.logspace(-4, -1, 12):
        for _ in range(20):
            x = target + scale * torch.from_numpy(rng.normal(size=target.shape))
            flat = x.flatten().numpy()
            excess = piece.region_jac @ flat - piece.region_bound
            meets = bool((excess <= ROW_MET * (1 + np.abs(piece.region_bound))).all())
            same = all(torch.equal(a, b) for a, b in zip(_pattern(net, x), want, strict=True))
            assert meets == same, float(scale)
            if same:  # and on the piece, the affine map is the layer's pre-activation
                with torch.no_grad():
                    pre = preactivation(net, x.unsqueeze(0), "relu2")[0].numpy()
                assert np.abs(piece.jac @ flat + piece.offset - pre).max() <= JACOBIAN_MODES_AGREE
            inside, outside = inside + same, outside + (not same)
    assert inside >= 20 and outside >= 20  # both sides of the region were tried
    assert piece.n_relu_rows > 0 and piece.n_pool_rows > 0
    # Each row's scale holds its own terms at the target: a pool row's |a| is at most the
    # sum of its two values' Jacobian rows.
    x0 = target.flatten().numpy()
    own = np.abs(piece.region_bound) + np.abs(piece.region_jac) @ np.abs(x0)
    assert (piece.region_scale >= own * (1 - ROW_MET)).all() and (piece.region_scale > 0).all()
    assert (piece.scale >= (np.abs(piece.offset) + np.abs(piece.jac) @ np.abs(x0)) * (1 - ROW_MET)).all()
    # and not so much more that a random target, which sits on no tie, would seem to.
    assert not tied_rows(piece, x0).any()


def test_a_piece_reading_its_lps_rows_keeps_the_same_rows_in_one_copy():
    # The oracle: the piece as linearised. Reading its region rows from the LP's rows
    # (which rows_on copied) must give the same rows, now in the LP's memory.
    net = _net()
    target = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (1, 10, 10)))
    piece = affine_piece(net, "relu2", target)
    x0 = target.flatten().numpy()
    rows = rows_on(piece, piece.jac @ x0 + piece.offset, RELU_SATURATION)
    shared = reading_rows(piece, rows)
    assert piece.n_relu_rows > 0 and piece.n_pool_rows > 0
    assert np.array_equal(shared.region_jac, piece.region_jac)
    assert np.shares_memory(shared.region_jac, rows.a_ub) and not np.shares_memory(piece.region_jac, rows.a_ub)
    assert np.array_equal(rows.b_ub[len(rows.b_ub) - rows.lazy:], shared.region_bound)



@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize(("density", "compressed"), [(1.0, True), (0.0, False)])
def test_rows_asked_for_sparse_hold_the_dense_rows_entries(mode, density, compressed, monkeypatch):
    # The oracle: the dense rows. Compressed rows must hold the same numbers bit for bit;
    # rows denser than SPARSE_DENSITY (0: any entry at all) turn dense after the first of
    # the many chunks, and must come out the same too.
    net = _net()
    target = torch.from_numpy(np.random.default_rng(2).uniform(0, 1, (1, 10, 10)))
    monkeypatch.setattr(linearise, "_JACOBIAN_SEEDS", 7)
    dense = affine_piece(net, "relu2", target, mode=mode)
    monkeypatch.setattr(linearise, "SPARSE_DENSITY", density)
    got = affine_piece(net, "relu2", target, mode=mode, sparse=True)
    assert sp.issparse(got.region_jac) == compressed
    rows = got.region_jac.toarray() if compressed else got.region_jac
    assert np.array_equal(rows, dense.region_jac)
    if compressed:  # canonical: each row's columns in order, no stored zeros
        assert got.region_jac.has_canonical_format and (got.region_jac.data != 0).all()
    for field in ("jac", "offset", "region_bound", "scale", "region_scale", "n_relu_rows", "n_pool_rows"):
        assert np.array_equal(getattr(got, field), getattr(dense, field)), field


def test_the_default_keeps_convolution_rows_compressed_and_dense_rows_dense():
    # Behind a convolution each early unit reads a window of the input: few entries are
    # nonzero. A first layer of a fully connected net reads every input: its rows are dense.
    target = torch.from_numpy(np.random.default_rng(3).uniform(0, 1, (1, 10, 10)))
    conv = affine_piece(_net(), "relu2", target, sparse=True)
    assert sp.issparse(conv.region_jac) and conv.region_jac.nnz <= linearise.SPARSE_DENSITY * np.prod(
        conv.region_jac.shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(100, 20), relu1=nn.ReLU(),
                                        fc2=nn.Linear(20, 10), relu2=nn.ReLU())).double().eval()
    full = affine_piece(mlp, "relu2", target, sparse=True)
    assert not sp.issparse(full.region_jac) and len(full.region_bound) == 20
    assert np.array_equal(full.region_jac, affine_piece(mlp, "relu2", target).region_jac)


def test_compressed_rows_read_from_the_lps_rows_share_their_entries():
    net = _net()
    target = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (1, 10, 10)))
    piece = affine_piece(net, "relu2", target, sparse=True)
    x0 = target.flatten().numpy()
    rows = rows_on(piece, piece.jac @ x0 + piece.offset, RELU_SATURATION)
    shared = reading_rows(piece, rows)
    assert sp.issparse(rows.a_ub) and sp.issparse(shared.region_jac)
    assert np.array_equal(shared.region_jac.toarray(), piece.region_jac.toarray())
    assert np.shares_memory(shared.region_jac.data, rows.a_ub.data)
    assert not np.shares_memory(piece.region_jac.data, rows.a_ub.data)


def test_rows_too_dense_to_compress_turn_dense_before_any_entry_is_collected():
    # Reverse mode hands every column over in one block: counting first keeps a dense
    # block's entries (16 bytes each while gathered) from being collected at all.
    rng = np.random.default_rng(4)
    reads = linearise._Reads(signed=np.arange(6), coef=np.ones(6), const=np.zeros(6), entry=np.array([6]),
                             winner=np.array([7]), layer=8)
    x = rng.uniform(0, 1, 5)
    got = linearise._Gather(reads, 10, x, what="a test block", sparse=True)
    block = rng.normal(size=(5, 10))
    got(slice(0, 5), block.copy())
    assert got.rows is not None and got.n_entries == 0 and not got.entries
    want = np.vstack([block[:, :6].T, (block[:, 6] - block[:, 7])[None]])
    assert np.array_equal(got.region(np.ones(7, dtype=bool)), want)
