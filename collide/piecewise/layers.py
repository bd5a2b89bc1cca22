"""A network up to a layer as sparse affine maps between its piecewise calls.

The dense exact LP (:mod:`collide.piecewise.linearise`) writes every earlier
pre-activation as a function of the input: a deep layer's rows fill every entry, and a
torchvision model at a middle layer passes a gigabyte at 64 px. Verification tools keep
one variable vector per layer instead. Here each piecewise call ``k`` before the layer
(ReLU, Hardtanh/ReLU6, max pooling) and the layer itself has its input, the
pre-activation ``z_k``, as variables, and

    z_k = B_kx x + Σ_{j<k} B_kj a_j + c_k,

where ``a_j`` is call ``j``'s output. The maps ``B`` are what the model computes between
two calls (convolutions, linear layers, batch norm in eval mode, residual additions): as
sparse as the weights. On one linear piece each output is a sparse map of its input
(``a = s ⊙ z`` for a ReLU, the winners' entries for a max pool, :mod:`collide.piecewise.
layered_lp`).

The maps are read from the model without knowing its code: one forward pass in float64
replaces each call's output by a leaf tensor, so that the gradient from ``z_k`` stops at
the calls before it. Reverse-mode products then give the rows of ``B``, many at once: the
units of one channel at positions ``P`` apart share a product when their inputs do not
overlap. Whether they overlap is tested on a copy of the model whose weights are all 1
(no two paths cancel there): the product weighted by each unit's index ``t`` in its
group, by ``t²`` and by 1 gives a variance of ``t`` that is 0 at an input exactly when
one unit of the group reaches it. ``P`` doubles until no input is shared. A map that is
dense (a linear layer) ends with one product per unit, as the dense Jacobian would.

Calls the layered form does not model (leaky ReLUs, whose slope the call does not state)
raise :class:`LayeredUnsupported`; the exact solver then takes the dense path.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from collide.copies import cast_copy
from collide.errors import LayerError
from collide.piecewise.linearise import piecewise_events
from collide.sites import HARDTANH, MAX_POOL, RELU, CallOutputs, Event, Site, Stop, Watch, module_kind
from collide.taps import site_of

# float64 numbers one batch of reverse-mode products may hold across its inputs (256 MiB).
_PRODUCT_BUDGET = 2**25

# A group of units shares no input when the variance of their index over an input's
# contributions is below this (indices differ by at least 1; all-ones weights keep every
# contribution within a few orders of magnitude of the others).
_SHARED_VARIANCE = 1e-3

_MODELLED = (RELU, HARDTANH, MAX_POOL)


class LayeredUnsupported(Exception):
    """The layered form cannot model a call before the layer; the dense LP can."""


@dataclass(frozen=True)
class Call:
    """One piecewise call before the layer, or the layer itself (the last).

    ``value`` is its input at the point the net was read at (flat, float64), ``out_value``
    its output there; ``from_x`` and ``from_calls[j]`` the sparse maps from the input and
    from call ``j``'s output to this input; ``offset`` the constant ``c``.

    Shapes:
        value, offset: (n,); out_value: (m,); from_x: (n, d); from_calls[j]: (n, m_j)
    """

    name: str
    kind: str
    params: dict[str, Any]
    shape: tuple[int, ...]
    value: np.ndarray
    out_value: np.ndarray
    from_x: sp.csr_matrix
    from_calls: dict[int, sp.csr_matrix] = field(default_factory=dict)
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def size(self) -> int:
        return len(self.value)


@dataclass(frozen=True)
class LayeredNet:
    """``calls[:-1]`` the piecewise calls before the layer, ``calls[-1]`` the layer."""

    calls: tuple[Call, ...]
    input_dim: int
    seconds_probing: float = 0.0

    @property
    def nnz(self) -> int:
        return sum(c.from_x.nnz + sum(m.nnz for m in c.from_calls.values()) for c in self.calls)


def _read(net: nn.Module, x: torch.Tensor, site: Site,
          ) -> tuple[list[Event], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One forward pass to the site with every piecewise call's output replaced by a new
    leaf of the same value. Returns the events, each call's input (in the graph), the
    leaves and the real outputs."""
    events: list[Event] = []
    inputs: list[torch.Tensor] = []
    made: list[torch.Tensor] = []
    real: list[torch.Tensor] = []
    module_pending = [False]

    def leaf_for(out: torch.Tensor) -> torch.Tensor:
        real.append(out.detach().clone())
        made.append(out.detach().clone().requires_grad_(True))
        return made[-1]

    def swapped(_pending: bool, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise LayeredUnsupported(f"an activation call returns a {type(out).__name__}")
        return leaf_for(out)

    swap = CallOutputs(swapped)

    def on_event(event: Event) -> None:
        events.append(event)
        inputs.append(event.value.clone())  # an in-place call would overwrite it
        if event.base == site.base and event.call == site.call:
            raise Stop
        if event.kind not in _MODELLED or event.op.lower() == "hardsigmoid":  # its middle piece is z/6 + 1/2
            raise LayeredUnsupported(f"{event.base} ({event.op}) is not modelled by the layered LP")
        if event.module == "module":
            module_pending[0] = True
        else:
            swap.pending = True

    def module_out(_mod: nn.Module, _args: Any, out: Any) -> Any:
        if not module_pending[0]:
            return out
        module_pending[0] = False
        return leaf_for(out)

    hooks = [m.register_forward_hook(module_out) for m in net.modules() if module_kind(m) is not None]
    try:
        with swap, Watch(net, on_event):
            net(x)
    except Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    if not events or (events[-1].base, events[-1].call) != (site.base, site.call):
        raise LayerError(f"layer {site.name!r} was not reached in the forward pass")
    if len(real) != len(events) - 1:
        raise LayeredUnsupported("a call's output could not be replaced")
    return events, inputs, made, real


def _groups(shape: tuple[int, ...], spacing: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Each unit's group and 1-based index in it: units of one channel ``spacing`` apart
    along every spatial axis share a group. A flat shape gives one unit a group.

    Shapes:
        shape: (C, *spatial) or (D,); returns (n,), (n,) and the group count
    """
    n = int(np.prod(shape))
    if len(shape) < 2:
        return np.arange(n), np.ones(n, dtype=np.int64), n
    channels, spatial = shape[0], shape[1:]
    grids = np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij")
    phase = np.zeros(spatial, dtype=np.int64)
    index = np.zeros(spatial, dtype=np.int64)
    for axis, g in enumerate(grids):
        phase = phase * spacing + g % spacing
        index = index * math.ceil(spatial[axis] / spacing) + g // spacing
    per_channel = spacing ** len(spatial)
    group = (np.arange(channels)[:, None] * per_channel + phase.reshape(1, -1)).reshape(-1)
    local = np.broadcast_to(index.reshape(1, -1) + 1, (channels, index.size)).reshape(-1)
    return group, local, channels * per_channel


def _products(z: torch.Tensor, sources: list[torch.Tensor], cot: torch.Tensor) -> list[np.ndarray | None]:
    """``cot[b] · ∂z[b]/∂source[b]`` for each source and row ``b``, flattened per row (None
    where ``z`` does not depend on the source). ``z`` and the sources hold a batch of
    identical copies, one per product: torch's batched gradients (``is_grads_batched``)
    took 18 times as long as this on a convolution.

    Shapes:
        z: (B, *shape); cot: (b, *shape), b <= B
    """
    b = len(cot)
    full = torch.zeros_like(z)
    full[:b] = cot
    grads = torch.autograd.grad(z, sources, grad_outputs=full, retain_graph=True, allow_unused=True)
    return [None if g is None else g[:b].reshape(b, -1).numpy() for g in grads]


def _sparse_rows(z: torch.Tensor, sources: list[torch.Tensor], z_ones: torch.Tensor,
                 sources_ones: list[torch.Tensor]) -> list[sp.csr_matrix | None]:
    """The sparse Jacobian of ``z`` with respect to each source (see the module docstring);
    ``z_ones``/``sources_ones``: the same read on the all-ones copy. Shapes: z (B, *shape),
    B identical copies"""
    shape = tuple(z.shape[1:])
    n = int(np.prod(shape))
    widths = [s[0].numel() for s in sources]
    chunk = len(z)
    spacing = 1
    while True:
        group, local, n_groups = _groups(shape, spacing)
        dense = n_groups >= n
        owner: list[list[np.ndarray]] = [[] for _ in sources]  # per source: per chunk (rows, cols)
        ok = True
        for start in range(0, 0 if dense else n_groups, max(1, chunk // 3)):
            ids = np.arange(start, min(start + max(1, chunk // 3), n_groups))
            member = group[None, :] == ids[:, None]  # (b, n)
            w = torch.from_numpy(member.astype(np.float64))
            t = torch.from_numpy(local.astype(np.float64))[None, :]
            cot = torch.cat([w, w * t, w * t * t]).view(3 * len(ids), *shape)
            for s, got in enumerate(_products(z_ones, sources_ones, cot)):
                if got is None:
                    owner[s].append(np.zeros((2, 0), dtype=np.int64))
                    continue
                r1, r2, r3 = got[: len(ids)], got[len(ids): 2 * len(ids)], got[2 * len(ids):]
                b, col = np.nonzero(r1 > 0)
                mean = r2[b, col] / r1[b, col]
                if (np.abs(r3[b, col] / r1[b, col] - mean**2) > _SHARED_VARIANCE).any():
                    ok = False
                    break
                # The input's one contributor: the unit of group ids[b] with index round(mean).
                owner[s].append(np.stack([ids[b], np.rint(mean).astype(np.int64), col]))
            if not ok:
                break
        if ok or dense:
            break
        spacing *= 2
    out: list[sp.csr_matrix | None] = []
    if dense:
        values: list[list[np.ndarray]] = [[] for _ in sources]
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            cot = torch.zeros(len(rows), n, dtype=torch.float64)
            cot[torch.arange(len(rows)), torch.from_numpy(rows)] = 1
            for s, got in enumerate(_products(z, sources, cot.view(len(rows), *shape))):
                values[s].append(np.zeros((len(rows), widths[s])) if got is None else got)
        for s in range(len(sources)):
            full = np.concatenate(values[s])
            out.append(sp.csr_matrix(full) if full.any() else None)
        return out
    # Values: the real model, one product per group; each input's value belongs to its owner.
    reals: list[list[np.ndarray]] = [[] for _ in sources]
    for start in range(0, n_groups, chunk):
        ids = np.arange(start, min(start + chunk, n_groups))
        w = torch.from_numpy((group[None, :] == ids[:, None]).astype(np.float64)).view(len(ids), *shape)
        for s, got in enumerate(_products(z, sources, w)):
            reals[s].append(np.zeros((len(ids), widths[s])) if got is None else got)
    for s in range(len(sources)):
        trip = np.concatenate(owner[s], axis=1) if owner[s] else np.zeros((3, 0), dtype=np.int64)
        if trip.shape[1] == 0:
            out.append(None)
            continue
        real = np.concatenate(reals[s])
        table = np.full((n_groups, int(local.max()) + 2), -1, dtype=np.int64)
        table[group, local] = np.arange(n)
        rows = table[trip[0], np.clip(trip[1], 0, table.shape[1] - 1)]
        if (rows < 0).any():
            raise LayeredUnsupported("the sparsity of a map between calls could not be read")
        vals = real[trip[0], trip[2]]
        out.append(sp.csr_matrix((vals, (rows, trip[2])), shape=(n, widths[s])))
    return out


def _ones_copy(net: nn.Module) -> nn.Module:
    ones = copy.deepcopy(net)
    with torch.no_grad():
        for p in ones.parameters():
            p.fill_(1.0)
        for b in ones.buffers():
            if b.is_floating_point():
                b.fill_(1.0)
    return ones


def layered_net(model: nn.Module, layer: str | Site, target: torch.Tensor) -> LayeredNet:
    """Read ``model`` up to ``layer`` as sparse affine maps between its piecewise calls,
    at ``target`` (see the module docstring). Raises :class:`LayeredUnsupported` for a
    call the layered form does not model.

    Shapes:
        target: (*input), one example; d = target.numel()
    """
    start = time.perf_counter()
    net = cast_copy(model).eval().requires_grad_(False)
    for m in net.modules():
        if getattr(m, "inplace", False):
            m.inplace = False  # type: ignore[attr-defined]
    x0 = target.double().unsqueeze(0)
    site = site_of(net, layer, x0)
    with torch.no_grad():
        piecewise_events(net, x0, site)  # refuses what no LP models
    events, inputs, _, real = _read(net, x0, site)
    # One batch of identical copies per net, as many as the memory budget allows, each
    # copy taking one product; the graphs are kept for every call's products.
    per_copy = 4 * (x0.numel() + sum(t.numel() for t in inputs) + sum(t.numel() for t in real))
    copies = int(np.clip(_PRODUCT_BUDGET // per_copy, 3, 3 * 1024))
    reads = []
    for copy_of in (net, _ones_copy(net)):
        x = x0.expand(copies, *x0.shape[1:]).clone().requires_grad_(True)
        _, ins, leaves, _ = _read(copy_of, x, site)
        reads.append((x, ins, leaves))
    (x, ins, leaves), (x1, ins1, leaves1) = reads
    flat_x = x0.flatten().numpy()
    calls = []
    for k, event in enumerate(events):
        maps = _sparse_rows(ins[k], [x, *leaves[:k]], ins1[k], [x1, *leaves1[:k]])
        from_x = maps[0] if maps[0] is not None else sp.csr_matrix((inputs[k].numel(), x0.numel()))
        from_calls = {j: m for j, m in enumerate(maps[1:]) if m is not None}
        value = inputs[k].detach().flatten().numpy().copy()
        lin = from_x @ flat_x
        for j, m in from_calls.items():
            lin = lin + m @ real[j].flatten().numpy()
        calls.append(Call(
            name=event.base if event.call == 0 else f"{event.base}#{event.call}", kind=event.kind,
            params=dict(event.params), shape=tuple(event.value.shape[1:]), value=value,
            out_value=real[k].flatten().numpy() if k < len(real) else np.zeros(0),
            from_x=sp.csr_matrix(from_x), from_calls=from_calls, offset=value - lin,
        ))
    return LayeredNet(tuple(calls), x0.numel(), time.perf_counter() - start)


def pool_winners(params: dict[str, Any], value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each max-pooling window's winner, as an index into the pool's flat input.

    Shapes:
        value: (n,), the pool's input, of ``shape`` (C, *spatial); returns (m,)
    """
    nd = params["nd"]
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    t = torch.from_numpy(value).view(1, *shape)
    _, idx = pool(t, params["kernel_size"], params["stride"], params["padding"], params["dilation"],
                  ceil_mode=params["ceil_mode"], return_indices=True)
    plane = int(np.prod(shape[-nd:]))
    planes = idx.numel() // int(np.prod(idx.shape[-nd:]))
    base = np.repeat(np.arange(planes) * plane, int(np.prod(idx.shape[-nd:])))
    return base + idx.flatten().numpy()
