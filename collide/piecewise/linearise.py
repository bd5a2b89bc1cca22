"""A layer's pre-activation as an affine map on the target's linear piece, and the piece's rows.

Up to the first ReLU, a ReLU net's pre-activation is affine in its input. Deeper, it is
affine within the target's *activation region*: the inputs that give every earlier ReLU
the target's sign pattern and every earlier max-pooling window the target's winner.
The affine map is read off as the Jacobian at the target in float64, in forward mode
when the input has fewer coordinates than the values it must cover (every earlier
pre-activation and pool input), in reverse mode otherwise.

Which modules need region rows:

- ``nn.ReLU``: one sign row per unit.
- ``nn.MaxPool1d/2d/3d``: max pooling switches linear pieces without a ReLU to show it.
  For each window with winner a* at the target and each other entry a, the row
  ``ỹ_a(x) ≤ ỹ_a*(x)`` on the pool's input. Fixing the winner is correct wherever the
  pool sits, before or after its ReLU; after a ReLU, rows between inactive entries are
  identically ``0 ≤ 0`` and are dropped.
- Nothing else that is affine: convolutions, linear layers, average pooling, batch norm
  in eval mode, dropout in eval mode, flattening and residual additions.

Every ReLU call counts, module or functional (``F.relu``, ``x.relu_()``), found the way
every layer is (:mod:`collide.sites`); LeakyReLU/PReLU calls add sign rows like a ReLU's
and Hardtanh/ReLU6 calls the rows of their piece. Calls that are not piecewise linear
before the layer (smooth activations, softmax, normalisation by the input's own
statistics, adaptive max pooling) are refused before any work, and so is an LP larger
than ``ExactConfig.max_entries`` (:mod:`collide.piecewise.budget`). Piecewise operations no call reveals (``clamp``,
``maximum``, ``abs``) are not modelled: every solution is therefore checked with a real
float64 forward pass, and one that left the target's piece is reported as ``left_region``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from collide.activations import Saturation
from collide.copies import cast_copy
from collide.errors import ConfigError, LayerError
from collide.inputs import require_finite
from collide.sites import ADAPTIVE_MAX_POOL, HARDTANH, LEAKY, NONLINEAR, RELU, SMOOTH, Event, Site, require_method
from collide.taps import region_events, site_of
from collide.threads import one_blas_thread

JACOBIAN_MODES = ("auto", "forward", "reverse")


_MAX_POOLS: dict[int, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d,
}


# Calls before the layer that no LP row models, and why.
_UNMODELLED = {
    SMOOTH: "a smooth activation is not piecewise linear",
    NONLINEAR: "it divides by or exponentiates the input's own values (softmax, normalisation by the input's "
               "statistics)",
    ADAPTIVE_MAX_POOL: "adaptive max pooling's windows are not modelled by collide's LP",
}


# float64 numbers one Jacobian chunk may hold across its captured tensors (2 GiB).
_JACOBIAN_BUDGET = 2**28


# Tangents (or cotangents) one pass pushes through the model at most. Larger batches were
# slower, not faster, once their intermediates outgrew the caches (one thread, medians of
# 3 to 7, 2026-12-06, AMD EPYC): LeNet-5's relu3 linearisation took 0.19 s in chunks of
# 164 to 328 tangents against 0.36 s in one of 784; ResNet-18's layer2.1.relu#1 at 20 px
# 3.0 s against 3.6 s, MobileNet-v2's middle site at 19 px 2.8 against 3.0 s, and
# GoogLeNet's at 16 px 1.38 against 1.32 s.
_JACOBIAN_SEEDS = 200


# Region rows asked for sparse stay compressed while at most this share of their entries
# is nonzero. Compressed rows take 12 bytes an entry against 8 (16 while they are
# gathered: row, column and value), and a product with them
# costs about 3 times as much an entry as a dense one (LeNet-5's relu3 rows, 8% nonzero:
# 0.35 ms against 1.4 ms, one-off, 2026-12-06, AMD EPYC), so a quarter keeps both ahead.
SPARSE_DENSITY = 0.25


# torch.func's forward-AD levels are numbered per process, not per thread: two jvp/vmap
# transforms running at once from threads fail ("forward AD level with an invalid
# index"). Jacobians therefore take turns; the vertices' LPs still run side by side.
_TRANSFORMS = threading.Lock()


@dataclass(frozen=True)
class AffinePiece:
    """The layer's pre-activation as ``J x + c`` on the target's activation region.

    The region is ``region_jac @ x <= region_bound``: the sign rows of every earlier
    ReLU, then the winner rows of every earlier max pool, in forward order, without the
    rows that hold for every x.

    ``scale`` and ``region_scale``: per row, the size of the terms its values were
    computed from at the point the piece was linearised at (``|J| |x| + |c|`` of each
    value in the row, plus ``|b|``), which their rounding is relative to. A pool row is the
    difference of two values, and its own ``|a| |x|`` can be far smaller than theirs.

    ``region_jac`` is dense unless the piece was asked for sparse rows
    (:func:`affine_piece`); either supports ``@``, row selection and ``.shape``.

    Shapes:
        jac: (D, d); offset, scale: (D,); region_jac: (R, d); region_bound, region_scale: (R,)
    """

    jac: np.ndarray
    offset: np.ndarray
    region_jac: np.ndarray | sp.csr_array
    region_bound: np.ndarray
    n_relu_rows: int
    n_pool_rows: int
    scale: np.ndarray
    region_scale: np.ndarray


def piecewise_events(net: nn.Module, x: torch.Tensor, site: Site) -> list[Event]:
    """The calls before ``site`` that shape the linear piece, then the site's own
    (:func:`collide.taps.region_events`); a call the LP cannot model is refused."""
    events = region_events(net, x, site)
    for e in events[:-1]:
        if e.kind in _UNMODELLED:
            raise LayerError(
                f"the exact solver cannot model {e.base if e.call == 0 else f'{e.base}#{e.call}'} ({e.op}) before "
                f"layer {site.name!r}: "
                f"{_UNMODELLED[e.kind]}, so the layer is not piecewise linear in the input there (or not with "
                "pieces the LP knows); use method='gradient', or a layer before it")
    return events


def window_pairs(params: dict[str, Any], value: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (entry, winner) pair of a max pool's windows at ``value``, entry ≠ winner.

    Windows follow the pool's own kernel, stride, padding, dilation and ceil mode
    (``params``, from the call); the winner is the index ``return_indices`` gives.
    Indices are into ``value.flatten()``.

    Shapes:
        value: (1, C, *spatial), the pool's input for one example; returns (P,), (P,)
    """
    nd = params["nd"]
    pool_fn = _MAX_POOLS[nd]

    def per_dim(v: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, tuple | list) else (v,) * nd

    kernel = per_dim(params["kernel_size"])
    stride = per_dim(params["stride"])
    padding, dilation = per_dim(params["padding"]), per_dim(params["dilation"])
    _, winners = pool_fn(
        value, kernel, stride, padding, dilation, ceil_mode=params["ceil_mode"], return_indices=True,
    )
    spatial, out = value.shape[-nd:], winners.shape[-nd:]
    plane = int(np.prod(spatial))
    # Window positions per dimension, broadcast to (*out, *kernel).
    flat = np.zeros((1,) * 2 * nd, dtype=np.int64)
    valid = np.ones((1,) * 2 * nd, dtype=bool)
    for j in range(nd):
        pos = np.arange(out[j])[:, None] * stride[j] - padding[j] + np.arange(kernel[j])[None, :] * dilation[j]
        shape = [1] * 2 * nd
        shape[j], shape[nd + j] = out[j], kernel[j]
        pos = pos.reshape(shape)
        flat = flat * spatial[j] + pos
        valid = valid & (pos >= 0) & (pos < spatial[j])
    n_windows, n_kernel = int(np.prod(out)), int(np.prod(kernel))
    flat = np.broadcast_to(flat, (*out, *kernel)).reshape(n_windows, n_kernel)
    valid = np.broadcast_to(valid, (*out, *kernel)).reshape(n_windows, n_kernel)
    n_planes = winners.numel() // n_windows
    base = (np.arange(n_planes) * plane)[:, None, None]
    entries = base + flat[None]
    won = base[:, :, 0] + winners.reshape(n_planes, n_windows).numpy()
    keep = valid[None] & (entries != won[:, :, None])
    pairs = np.stack([entries[keep], np.broadcast_to(won[:, :, None], entries.shape)[keep]], axis=1)
    # Overlapping windows can share an (entry, winner) pair: one row is enough.
    pairs = np.unique(pairs, axis=0)
    return pairs[:, 0], pairs[:, 1]


@dataclass(frozen=True)
class _Reads:
    """Which values each region row reads, known from the values at the point before any
    Jacobian is taken: ``coef`` (±1) times one value, bounded by ``const − coef·c`` (ReLU
    and Hardtanh sides; ``c`` the value's offset), then a pool's ``entry`` less its
    ``winner``, bounded by ``c_winner − c_entry``; and ``layer``, where the layer's own
    values start. Shapes: signed, coef, const (S,); entry, winner (P,)"""

    signed: np.ndarray
    coef: np.ndarray
    const: np.ndarray
    entry: np.ndarray
    winner: np.ndarray
    layer: int


class _Gather:
    """What a piece needs of the Jacobian ``J`` of every value, gathered from its column
    blocks as they come, so that ``J`` itself (every value over every input coordinate)
    is never held: the region rows each value's row enters, the layer's own rows, ``J x``
    and ``|J| |x|`` per value.

    ``sparse``: the region rows are collected as their nonzero entries while they stay
    sparse (at most ``SPARSE_DENSITY`` of the entries seen so far), else as dense rows
    from then on; :meth:`region` says which.

    Shapes:
        x: (d,); region rows: (S + P, d); layer_jac: (n_out − layer, d); lin, terms: (n_out,)

    ``what`` names the Jacobian in the error a NaN or inf in it raises.
    """

    def __init__(self, reads: _Reads, n_out: int, x: np.ndarray, *, what: str, sparse: bool = False) -> None:
        d = len(x)
        self.reads, self.x, self.what = reads, x, what
        self.n_rows = len(reads.signed) + len(reads.entry)
        self.rows: np.ndarray | None = None if sparse and self.n_rows else np.empty((self.n_rows, d))
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (row, column, value) per part
        self.n_entries = self.n_columns = 0
        self.layer_jac = np.empty((n_out - reads.layer, d))
        self.lin, self.terms = np.zeros(n_out), np.zeros(n_out)

    def _put(self, first: int, cols: slice, part: np.ndarray) -> None:
        """Region rows ``first`` onwards at columns ``cols``: ``part`` transposed (k, rows).
        A block's entries are found before they are kept, so that rows too dense to
        compress turn dense first (reverse mode hands over every column in one block)."""
        if self.rows is None:
            # torch's nonzero: a third of numpy's time on these blocks (one thread, 2026-12-06).
            # Its order is the block's, so each row's entries come in column order.
            values = torch.from_numpy(part)
            at, row = values.nonzero().T
            seen = self.n_rows * (self.n_columns + cols.stop - cols.start)
            if self.n_entries + len(row) <= SPARSE_DENSITY * seen:
                self.entries.append(((row + first).to(torch.int32).numpy(),
                                     (at + cols.start).to(torch.int32).numpy(), values[at, row].numpy()))
                self.n_entries += len(row)
                return
            self.rows = np.zeros((self.n_rows, len(self.x)))
            for kept_row, kept_col, kept_value in self.entries:
                self.rows[kept_row, kept_col] = kept_value
            self.entries = []
        self.rows[first:first + part.shape[1], cols] = part.T

    def __call__(self, cols: slice, block: np.ndarray) -> None:
        """Take ``block``, ``J[:, cols]`` transposed (k, n_out), which it may overwrite."""
        r, n = self.reads, len(self.reads.signed)
        fix = "the model computes NaN or inf at the target: check its weights and the input"
        require_finite(block, self.what, fix=fix)
        # mode="clip" (the indices are in range): numpy's default gathers into a buffer first.
        part = np.take(block, r.signed, axis=1, mode="clip")
        part *= r.coef
        self._put(0, cols, part)
        part = np.take(block, r.entry, axis=1, mode="clip")
        part -= np.take(block, r.winner, axis=1, mode="clip")
        self._put(n, cols, part)
        self.n_columns += cols.stop - cols.start
        self.layer_jac[:, cols] = block[:, r.layer:].T
        x = self.x[cols]
        self.lin += x @ block
        self.terms += np.abs(x) @ np.abs(block, out=block)

    def row_nonzero(self) -> np.ndarray:
        """Which region rows have a nonzero entry. Shapes: returns (S + P,) bool"""
        if self.rows is not None:
            return self.rows.any(axis=1)
        rows = np.concatenate([row for row, _, _ in self.entries]) if self.entries else np.zeros(0, np.int32)
        return np.bincount(rows, minlength=self.n_rows) > 0

    def region(self, keep: np.ndarray) -> np.ndarray | sp.csr_array:
        """The region rows ``keep``, in order: dense (moved to the front of the gathered
        rows, in place) or, where they stayed sparse, compressed rows."""
        if self.rows is not None:
            return self.rows if keep.all() else _to_front(self.rows, keep)
        parts, self.entries = self.entries, []
        parts = parts or [(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))]
        row, col, value = (np.concatenate(p) for p in zip(*parts, strict=True))
        del parts  # each chunk's arrays: the concatenated ones hold the entries now
        # Renumbered to the kept rows; a row left out has no entries (it is all zero). The
        # conversion keeps each row's entries in the order they came: column order.
        new = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.int32)
        return sp.csr_array(sp.coo_array((value, (new[row], col)), shape=(int(keep.sum()), len(self.x))))


def _jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_out: int, mode: str,
              take: Callable[[slice, np.ndarray], None]) -> None:
    """The Jacobian ``J`` of ``fn`` at ``x`` by forward or reverse mode, vectorised in
    chunks, handed to ``take`` a block of columns at a time: ``take(cols, J[:, cols].T)``.

    Forward mode pushes one tangent per input coordinate, reverse mode one cotangent per
    output: ``auto`` takes the fewer. Chunks hold at most ``_JACOBIAN_SEEDS`` of them, and
    keep the batched intermediates within ``_JACOBIAN_BUDGET`` numbers. In forward mode
    each chunk is a block of columns; reverse mode (fewer values than input coordinates,
    so ``J`` is the smaller) collects its rows first and hands over one block.

    Shapes:
        x: (d,); fn(x): (n_out,)
    """
    if mode not in JACOBIAN_MODES:
        raise ConfigError(f"expected mode in {JACOBIAN_MODES}, got {mode!r}")
    d = x.numel()
    forward = n_out > d if mode == "auto" else mode == "forward"
    n_seeds = d if forward else n_out
    most = max(1, min(_JACOBIAN_SEEDS, _JACOBIAN_BUDGET // (n_out + d)))
    # Equal chunks, as few as ``most`` allows: no small one left at the end.
    chunk = math.ceil(n_seeds / math.ceil(n_seeds / most))
    if forward:
        def push(t: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(fn, (x,), (t,))[1]
    else:
        _, pull = torch.func.vjp(fn, x)

        def push(t: torch.Tensor) -> torch.Tensor:
            return pull(t)[0]
    jac = None if forward else np.empty((n_out, d), dtype=np.float64)
    # Where chunks and ``take``'s products alternate (forward mode, several chunks), numpy's
    # products run on one BLAS thread: OpenBLAS's threads wait busily after each product,
    # on the cores torch's next chunk needs (LeNet-5's relu3 took 0.33-0.35 s with two
    # BLAS and two torch threads, 0.12 s with one BLAS thread; 2 cores, 2026-12-06).
    interleaved = one_blas_thread() if forward and chunk < n_seeds else contextlib.nullcontext()
    with _TRANSFORMS, interleaved, warnings.catch_warnings():
        # torch's own forward-mode decompositions script a helper and warn that scripting is
        # deprecated, on every solve: nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        for start in range(0, n_seeds, chunk):
            stop = min(start + chunk, n_seeds)
            seeds = torch.zeros(stop - start, n_seeds, dtype=x.dtype)
            seeds[torch.arange(stop - start), torch.arange(start, stop)] = 1
            part = torch.func.vmap(push)(seeds).numpy()
            if jac is None:
                take(slice(start, stop), part)
            else:
                jac[start:stop] = part
    if jac is not None:
        take(slice(0, d), jac.T)


def _to_front(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows ``keep`` of ``a``, moved to its front in order, in place (a block of rows
    at a time: no copy of them all); a view of those rows. Shapes: a (R, d); keep (R,)"""
    kept = np.flatnonzero(keep)
    first = int(np.argmin(keep)) if not keep.all() else len(keep)  # rows before it stay where they are
    for at in range(first, len(kept), 256):
        block = kept[at:at + 256]
        a[at:at + len(block)] = a[block]  # reads rows at or after the ones it writes
    return a[:len(kept)]


def affine_piece(model: nn.Module, layer: str | Site, target: torch.Tensor, *, mode: str = "auto",
                 sparse: bool = False) -> AffinePiece:
    """Linearise ``layer``'s pre-activation at ``target`` and collect the region's rows.

    Args:
        model: the classifier (not changed: a float64 eval-mode copy is used).
        layer: the ReLU layer (a name or a resolved site).
        target: one input, no batch dim.
        mode: ``forward`` or ``reverse`` mode for the Jacobian; ``auto`` takes forward
            mode when the input has fewer coordinates than the captured values (every
            earlier pre-activation and pool input plus the layer's).
        sparse: the region rows as compressed rows (``scipy.sparse.csr_array``) where at
            most ``SPARSE_DENSITY`` of their entries are nonzero, as behind convolutions
            (on LeNet-5's relu3 8%: each early unit sees a small window of the input);
            dense otherwise. The entries are the same either way.

    Shapes:
        target: (*input), d = target.numel()
    """
    net = cast_copy(model).eval().requires_grad_(False)
    x0 = target.double().unsqueeze(0)
    site = site_of(net, layer, x0)
    require_method(site, "exact")  # the rows below model a ReLU collision layer

    def all_values(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e.value.flatten() for e in region_events(net, x.view_as(x0), site)])

    with torch.no_grad():
        captures = piecewise_events(net, x0, site)
    sizes = [e.value.numel() for e in captures]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    flat = x0.flatten()
    values = torch.cat([e.value.flatten() for e in captures]).numpy()
    # A model that computes NaN or inf here would reach the LP as rows it cannot solve
    # (or an SVD that fails far from the cause): refused where it is found.
    fix = "the model computes NaN or inf at the target: check its weights and the input"
    require_finite(values, f"the forward pass up to layer {site.name!r}", fix=fix)

    # Each region row is one value's Jacobian row times ±1 (ReLU, Hardtanh) or the
    # difference of two (a pool's entry less its winner): which ones, and the constant
    # part of their bounds, follow from the values alone.
    signed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # values, ±1, const
    pairs: list[tuple[np.ndarray, np.ndarray]] = []  # entries, winners
    for k, event in enumerate(captures[:-1]):
        at = np.arange(starts[k], starts[k + 1])
        if event.kind in (RELU, LEAKY):
            # Each unit keeps its side of 0: −s·(Jx + c) ≤ 0 with s = ±1 (a leaky unit's
            # slope changes at 0 just as a ReLU's does).
            sign = np.where(values[at] > 0, 1.0, -1.0)
            signed.append((at, -sign, np.zeros(len(at))))
        elif event.kind == HARDTANH:
            # Three pieces: below min (y ≤ min), between (min ≤ y ≤ max), above (y ≥ max).
            lo, hi = event.params["min_val"], event.params["max_val"]
            v = values[at]
            upper = v < hi  # y ≤ hi on the lower two pieces, y ≤ lo on the lowest
            signed.append((at[upper], np.ones(int(upper.sum())), np.where(v <= lo, lo, hi)[upper]))
            lower = v > lo  # y ≥ lo on the upper two pieces, y ≥ hi on the highest
            signed.append((at[lower], -np.ones(int(lower.sum())), -np.where(v >= hi, hi, lo)[lower]))
        else:
            entry, winner = window_pairs(event.params, event.value)
            pairs.append((entry + starts[k], winner + starts[k]))

    def column(parts: list[tuple[np.ndarray, ...]], i: int, dtype: type) -> np.ndarray:
        return np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, dtype=dtype)

    reads = _Reads(signed=column(signed, 0, np.int64), coef=column(signed, 1, np.float64),
                   const=column(signed, 2, np.float64), entry=column(pairs, 0, np.int64),
                   winner=column(pairs, 1, np.int64), layer=int(starts[-2]))
    got = _Gather(reads, int(starts[-1]), flat.numpy(), what=f"the Jacobian up to layer {site.name!r}",
                  sparse=sparse)
    _jacobian(all_values, flat, int(starts[-1]), mode, got)
    offset = values - got.lin
    terms = got.terms + np.abs(offset)  # each value's terms: what its rounding is relative to

    # Rows that hold for every x (zero, with b ≥ 0) are left out.
    signed_b = reads.const - reads.coef * offset[reads.signed]
    pool_b = offset[reads.winner] - offset[reads.entry]
    n_signed = len(reads.signed)
    nonzero = got.row_nonzero()
    keep_signed = nonzero[:n_signed] | (signed_b < 0)
    keep_pool = nonzero[n_signed:] | (pool_b < 0)
    keep = np.concatenate([keep_signed, keep_pool])
    return AffinePiece(
        jac=got.layer_jac,
        offset=offset[reads.layer:],
        region_jac=got.region(keep),
        region_bound=np.concatenate([signed_b[keep_signed], pool_b[keep_pool]]),
        n_relu_rows=int(keep_signed.sum()),
        n_pool_rows=int(keep_pool.sum()),
        scale=terms[reads.layer:],
        region_scale=np.concatenate([terms[reads.signed[keep_signed]] + np.abs(signed_b[keep_signed]),
                                     (terms[reads.entry] + terms[reads.winner] + np.abs(pool_b))[keep_pool]]),
    )


def layer_rows(jac: np.ndarray, offset: np.ndarray, t_pre: np.ndarray, sat: Saturation) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The collision layer's own rows on an affine piece ``jac x + offset`` of its
    pre-activation: equal to the target's ``t_pre`` on its unsaturated units, and in
    their flat piece on the others (≤ ``sat.below`` on the lower one, ≥ ``sat.above`` on
    the upper one, written as ≤ rows). ReLU: equal on the positive units, ≤ 0 on the rest.

    Returns:
        ``a_eq, b_eq, a_ub, b_ub`` with ``a_eq x = b_eq`` and ``a_ub x ≤ b_ub``, the lower
        regime's rows first, each in unit order.

    Shapes:
        jac: (D, d); offset, t_pre: (D,)
    """
    low, high = sat.low(t_pre), sat.high(t_pre)
    free = ~(low | high)
    a_ub = np.vstack([jac[low], -jac[high]])
    b_ub = np.concatenate([sat.below - offset[low], offset[high] - sat.above])
    return jac[free], t_pre[free] - offset[free], a_ub, b_ub
