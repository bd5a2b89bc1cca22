"""The exact vertex solver: linear programming where the layer is affine in the input.

Up to the first ReLU, a ReLU net's pre-activation is affine in its input. Deeper, it is
affine within the target's *activation region*: the set of inputs that give every
earlier ReLU the target's sign pattern. Within that region a colliding input is a point
of a convex polytope (paper, Proposition 1), and a vertex is the solution of

    minimise   ỹᵢ(x) + λ‖x − init‖₁
    subject to ỹⱼ(x) = ỹᵗⱼ  for the target's positive units j,
               ỹⱼ(x) ≤ 0    for its non-positive units,
               earlier ReLUs keep the target's signs,  lower ≤ x ≤ upper,

which stays linear with the usual split of the L1 term. The affine map is read off as
the Jacobian at the target in float64. Max pooling also switches between linear pieces
without a ReLU to show it; every solution is therefore checked with a real forward
pass, and one that left the region is reported as such.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import torch
from torch import nn

from collide.config import ExactConfig
from collide.errors import DataError
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.taps import _Stop, relu_layers, resolve_layer
from collide.vertices import check_inputs

OPTIMAL, INFEASIBLE, UNBOUNDED, LEFT_REGION, FAILED = (
    "optimal", "infeasible", "unbounded", "left_region", "failed",
)


@dataclass(frozen=True)
class AffinePiece:
    """The layer's pre-activation as ``J x + c`` on the target's activation region.

    Shapes:
        jac: (D, d); offset: (D,); region_jac: (R, d); region_offset, region_sign: (R,)
    """

    jac: np.ndarray
    offset: np.ndarray
    region_jac: np.ndarray
    region_offset: np.ndarray
    region_sign: np.ndarray


@dataclass(frozen=True)
class ExactResult:
    """Vertices from :func:`solve_exact`, with the polytope's dimension facts.

    ``vertices[k]`` is NaN where ``outcomes[k]`` is not ``optimal``.

    Shapes:
        vertices: (V, *input) float32; rel_error, violation: (V,)
    """

    vertices: torch.Tensor
    outcomes: tuple[str, ...]
    rel_error: torch.Tensor
    violation: torch.Tensor
    input_dim: int
    n_positive: int
    rank_positive: int
    seconds: float

    @property
    def dim_bound(self) -> int:
        """d − rank(W⁺): the dimension of the affine subspace of exact collisions."""
        return self.input_dim - self.rank_positive


def _ordered_preactivations(net: nn.Module, x: torch.Tensor, layer: str) -> list[torch.Tensor]:
    """Pre-activations of every ReLU reached before ``layer``, then ``layer``'s own."""
    target_name = resolve_layer(net, layer)
    seen: list[torch.Tensor] = []
    handles = []
    for name, module in relu_layers(net).items():
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            seen.append(args[0].flatten(1).clone())
            if name == target_name:
                raise _Stop
        handles.append(module.register_forward_pre_hook(hook))
    try:
        net(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def affine_piece(model: nn.Module, layer: str, target: torch.Tensor) -> AffinePiece:
    """Linearise ``layer``'s pre-activation at ``target`` (one input, no batch dim)."""
    net = copy.deepcopy(model).double().eval()
    x0 = target.double().unsqueeze(0)

    def all_pre(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(_ordered_preactivations(net, x.view_as(x0), layer), dim=1).squeeze(0)

    with torch.no_grad():
        pieces = _ordered_preactivations(net, x0, layer)
    sizes = [p.shape[1] for p in pieces]
    flat = x0.flatten()
    jac = torch.autograd.functional.jacobian(all_pre, flat).numpy()
    values = torch.cat(pieces, dim=1).squeeze(0).numpy()
    offset = values - jac @ flat.numpy()
    n_region = sum(sizes[:-1])
    return AffinePiece(
        jac=jac[n_region:],
        offset=offset[n_region:],
        region_jac=jac[:n_region],
        region_offset=offset[:n_region],
        region_sign=np.where(values[:n_region] > 0, 1.0, -1.0),
    )


def solve_exact(
    model: nn.Module,
    layer: str,
    target: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: ExactConfig,
) -> ExactResult:
    """Find one exact vertex per unit in ``units`` by linear programming (HiGHS).

    Args:
        model: the classifier (not changed).
        layer: the ReLU layer where features must collide.
        target: the target input; init: where the L1 proximity term pulls.
        units: the non-positive unit each vertex minimises.
        config: see :class:`ExactConfig`.

    Shapes:
        target, init: (*input), one example; units: (V,)
    """
    if target.shape != init.shape:
        raise DataError(f"target {tuple(target.shape)} and init {tuple(init.shape)} differ in shape")
    check_inputs(target, "the target", config.lower, config.upper)
    check_inputs(init, "the init", config.lower, config.upper)
    start = time.perf_counter()
    piece = affine_piece(model, layer, target)
    t_pre = piece.jac @ target.double().flatten().numpy() + piece.offset
    pos = t_pre > 0
    d = piece.jac.shape[1]
    jp, jn = piece.jac[pos], piece.jac[~pos]
    rank = int(np.linalg.matrix_rank(jp)) if pos.any() else 0
    x_init = init.double().flatten().numpy()

    a_ub = [jn, -piece.region_sign[:, None] * piece.region_jac]
    b_ub = [-piece.offset[~pos], piece.region_sign * piece.region_offset]
    a_eq, b_eq = jp, t_pre[pos] - piece.offset[pos]

    vertices, outcomes = [], []
    for unit in units.tolist():
        if pos[unit]:
            raise DataError(f"unit {unit} is positive for the target: push a non-positive unit")
        c = piece.jac[unit]
        lam = config.proximity * float(np.abs(c).mean())
        if lam > 0:
            # x and t with t ≥ |x − init|: x − t ≤ init and −x − t ≤ −init.
            eye = sp.identity(d, format="csr")
            ub = sp.vstack([
                sp.hstack([sp.csr_matrix(np.vstack(a_ub)), sp.csr_matrix((sum(len(a) for a in a_ub), d))]),
                sp.hstack([eye, -eye]),
                sp.hstack([-eye, -eye]),
            ]).tocsr()
            rhs = np.concatenate([*b_ub, x_init, -x_init])
            eq = sp.hstack([sp.csr_matrix(a_eq), sp.csr_matrix((len(a_eq), d))]).tocsr()
            cost = np.concatenate([c, np.full(d, lam)])
            bounds = [(config.lower, config.upper)] * d + [(0, None)] * d
        else:
            ub, rhs, eq = np.vstack(a_ub), np.concatenate(b_ub), a_eq
            cost, bounds = c, [(config.lower, config.upper)] * d
        res = scipy.optimize.linprog(
            cost, A_ub=ub, b_ub=rhs, A_eq=eq if len(a_eq) else None, b_eq=b_eq if len(a_eq) else None,
            bounds=bounds, method="highs",
            options={"primal_feasibility_tolerance": config.feasibility_tol,
                     "dual_feasibility_tolerance": config.feasibility_tol},
        )
        if res.status == 0:
            vertices.append(np.clip(res.x[:d], config.lower, config.upper))
            outcomes.append(OPTIMAL)
        else:
            vertices.append(np.full(d, np.nan))
            outcomes.append({2: INFEASIBLE, 3: UNBOUNDED}.get(res.status, FAILED))

    verts = torch.from_numpy(np.stack(vertices)).view(len(vertices), *target.shape)
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        pre = _ordered_preactivations(net, torch.nan_to_num(verts), layer)[-1]
    tgt = torch.from_numpy(t_pre).unsqueeze(0)
    rel = feature_rel_error(pre, tgt)
    viol = max_nonpositive_violation(pre, tgt)
    ok = torch.tensor([o == OPTIMAL for o in outcomes])
    lin = torch.from_numpy(np.nan_to_num(np.stack(vertices)) @ piece.jac.T + piece.offset)
    off_piece = (pre - lin).abs().amax(-1) > config.region_tol * (1 + tgt.abs().amax())
    outcomes = [LEFT_REGION if (o == OPTIMAL and bool(off)) else o for o, off in zip(outcomes, off_piece, strict=True)]
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return ExactResult(
        vertices=verts.float(),
        outcomes=tuple(outcomes),
        rel_error=torch.where(ok, rel, nan).float(),
        violation=torch.where(ok, viol, nan).float(),
        input_dim=d,
        n_positive=int(pos.sum()),
        rank_positive=rank,
        seconds=time.perf_counter() - start,
    )
