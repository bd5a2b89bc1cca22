"""The public API: a colliding polytope for any model, in memory, and its measures.

    poly = collide.find_polytope(model, "relu1", image, n_vertices=5)
    m = collide.measure(model, "relu1", poly)

Every experiment, benchmark and table goes through these two functions: the stored
rows are :class:`Polytope` and :class:`Measurement` written down. Neither touches the
caller's model (solvers and checks work on copies) nor any global torch setting
(float32 matmuls run without TF32 inside and are restored after).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from collide.config import SAMPLERS, ExactConfig, GeometryConfig, GradientConfig, Method, PaperConfig, Sampler
from collide.errors import ConfigError, DataError, InternalError
from collide.inputs import one_input, require_finite, require_float32
from collide.objective import feature_rel_error
from collide.piecewise.ball import RADIUS_TOL, hull_dimension, inscribed_ball
from collide.piecewise.collision_set import CollisionSet, collision_set
from collide.piecewise.geometry import measure as measure_set
from collide.piecewise.highs import LpProgress, heartbeat
from collide.piecewise.linearise import affine_piece
from collide.polytope import avg_pairwise_distance, combine, evaluate, sample_weights
from collide.precision import full_precision
from collide.sites import Site, eval_mode, function_of, require_method, resolve
from collide.solvers import Solver, solver_for
from collide.solvers.param import Parameterisation
from collide.taps import preactivation
from collide.validity import POLYTOPE_MIN_VERTICES, Criterion, check_vertices, hull_collides

SolverConfig = GradientConfig | ExactConfig | PaperConfig


@dataclass(frozen=True, kw_only=True)
class Polytope:
    """Vertices that share the target's features at ``layer``, each checked in float64.

    ``valid[k]``: vertex k meets ``criterion`` (``reasons[k]`` says why not). Only valid
    vertices span the polytope that :func:`measure` samples.

    Shapes:
        vertices: (V, *input) float32; target, init: (*input);
        units, valid, rel_error, violation, pushed, target_pushed: (V,);
        params: (V, *θ), what the solver optimised (the vertices, for pixels)
    """

    vertices: torch.Tensor
    valid: torch.Tensor
    target: torch.Tensor
    init: torch.Tensor
    layer: str
    method: str
    units: torch.Tensor
    criterion: Criterion
    rel_error: torch.Tensor
    violation: torch.Tensor
    pushed: torch.Tensor
    target_pushed: torch.Tensor
    margin: float
    reasons: tuple[str, ...]
    solver: dict[str, Any] = field(default_factory=dict)
    params: torch.Tensor | None = None

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def outcomes(self) -> tuple[str, ...]:
        return tuple(self.solver.get("outcomes", ()))


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """How the model sees ``n_samples`` points of a polytope (paper Tables 2, 4, 6).

    With fewer than two valid vertices there is no polytope: ``success_rate``, the
    sample columns and ``vertex_avg_distance`` are NaN, ``hull_collides`` is None and
    ``invalid_reason`` says why. Distances are L2 in the model's input units.

    ``hull_collides``: whether the samples meet the polytope's criterion themselves (their
    largest feature error within its ``rel_tol``). Past a first layer the hull of colliding
    vertices can leave the collision set; where it is False, ``success_rate`` measures how
    the model classifies the hull, not a collision (the experiments flag such a row
    ``hull-not-collision``).

    Shapes:
        weights: (S, V) over all vertices (zero on invalid ones); sample_pred, sample_prob: (S,)
    """

    success_rate: float
    target_class: int
    n_classes: int
    target_top_prob: float
    samples_top_prob: float
    vertex_avg_distance: float
    max_feature_rel_error: float
    samples_max_feature_rel_error: float
    n_valid: int
    n_samples: int
    invalid_reason: str
    hull_collides: bool | None
    vertices_in_target_class: int
    weights: torch.Tensor | None = None
    sample_pred: torch.Tensor | None = None
    sample_prob: torch.Tensor | None = None


def _solver(method: Method | Solver, config: SolverConfig | None, bounds: tuple[float, float] | None) -> Solver:
    solver = solver_for(method, config)
    return solver if bounds is None else solver.with_bounds(*bounds)


def _site(model: nn.Module, layer: str | Site, example: torch.Tensor) -> Site:
    """The one resolution of an API call: ``layer`` named by the caller becomes a Site here,
    and only the Site goes further (its ``name`` is what a store writes)."""
    return layer if isinstance(layer, Site) else resolve(model, layer, example.unsqueeze(0))


def find_polytope(
    model: nn.Module,
    layer: str | Site,
    target: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    n_vertices: int = 5,
    method: Method | Solver = "gradient",
    device: str = "cpu",
    config: SolverConfig | None = None,
    bounds: tuple[float, float] | None = None,
    units: torch.Tensor | None = None,
    param: Parameterisation | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Polytope:
    """Find ``n_vertices`` inputs whose features at ``layer`` are the target's.

    Vertex k pushes the target's k-th most negative pre-activation at ``layer`` as low
    as the collision allows (paper §2), from ``init`` (default: the target itself).

    Args:
        model: any ``nn.Module`` that maps a batch of inputs to logits; copied, never changed.
        layer: a ReLU call of ``model`` as :func:`collide.layers` names it (``relu1``,
            ``layer2.1.relu#1``, ``block.relu()``) or an alias (``fc1``); an unknown name
            lists the usable ones.
        target: one input, no batch dimension, in the input range (``bounds``; default
            the solver config's ``[lower, upper]``, ``[0, 1]``).
        init: where the optimisation starts (same shape as ``target``).
        method: a solver (:class:`GradientSolver`, :class:`ExactSolver`,
            :class:`PaperSolver`, or one of your own), or its name: ``gradient``
            (default; :class:`GradientConfig`), ``exact`` (a linear program per vertex;
            :class:`ExactConfig`) or ``paper`` (the authors' scheme;
            :class:`PaperConfig`, with ``lr`` set for a model of your own).
        device: where the solver runs (``cpu``, ``cuda``).
        config: the method's solver config when ``method`` is a name; its defaults when None.
        units: the unit each vertex pushes (V,); default the target's most negative.
        param: what the gradient solver optimises (default the pixels, from ``init``);
            e.g. :class:`collide.patches.compose.ComposedPatches`.
        progress: ``progress(step, total, stopped)`` while the gradient solvers run.

    Raises:
        LayerError: ``layer`` is not a ReLU of ``model``.
        DataError: the target or init is not one finite input in range.
        ConfigError: a config of another method, or the paper's scheme without a rate.
    """
    solver = _solver(method, config, bounds)
    require_float32(model)
    target = one_input(target, "target")
    site = _site(model, layer, target)
    init = None if init is None else one_input(init, "init")
    units = None if units is None else torch.as_tensor(units)
    solved = solver(model, site, [target], [init], n_vertices=n_vertices, units=units, device=device, param=param,
                    progress=progress)
    return _checked(model, site, solver, solved, device)[0]


def find_polytopes(
    model: nn.Module,
    layer: str | Site,
    targets: Sequence[torch.Tensor],
    *,
    inits: Sequence[torch.Tensor | None] | None = None,
    n_vertices: int = 5,
    method: Method | Solver = "gradient",
    device: str = "cpu",
    config: SolverConfig | None = None,
    bounds: tuple[float, float] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[Polytope]:
    """:func:`find_polytope` for several targets at once: one polytope per target.

    The gradient solvers take every target's vertices as one batch (the model runs once
    per step for all of them; each vertex still follows its own path and stops on its
    own), which is what makes a scan of many targets fast. The exact solver's LPs are
    per vertex anyway and run target after target. In a batch of several targets,
    ``solver["seconds"]`` is each polytope's share of the batch's time (the batch's
    divided by its targets, so seconds add up over a table), ``solver["batch_seconds"]``
    the batch's and ``solver["batch_targets"]`` its size.

    A vertex depends only on its own target, init and unit, up to float rounding:
    a batched matrix product may round differently for another batch size, so results
    are the same bit for bit for the same batches, not across batch sizes.

    Shapes:
        targets: T inputs (*input), or a (T, *input) tensor; inits: T inputs or None each
    """
    solver = _solver(method, config, bounds)
    require_float32(model)
    targets = [one_input(t, f"target {k}") for k, t in enumerate(targets)]
    if not targets:
        raise DataError("find_polytopes needs at least one target, got none")
    inits = list(inits) if inits is not None else [None] * len(targets)
    if len(inits) != len(targets):
        raise DataError(f"got {len(targets)} targets and {len(inits)} inits: give one init per target (or None)")
    inits = [None if i is None else one_input(i, f"init {k}") for k, i in enumerate(inits)]
    site = _site(model, layer, targets[0])
    solved = solver(model, site, targets, inits, n_vertices=n_vertices, device=device, progress=progress)
    return _checked(model, site, solver, solved, device)


def _checked(model: nn.Module, site: Site, solver: Solver, solved: list, device: str) -> list[Polytope]:
    """Each problem's vertices held to the solver's criterion in float64."""
    return [check_polytope(model, site, found.vertices, pr.target, found.init, pr.units, method=solver.method,
                           criterion=solver.criterion.at(site), solver=found.record, params=found.params,
                           device=device)
            for pr, found in solved]


def check_polytope(
    model: nn.Module, layer: str | Site, vertices: torch.Tensor, target: torch.Tensor, init: torch.Tensor,
    units: torch.Tensor, *, method: str, criterion: Criterion, solver: dict[str, Any] | None = None,
    params: torch.Tensor | None = None, device: str = "cpu",
) -> Polytope:
    """Vertices found elsewhere (a store, another tool) held to ``criterion`` in float64."""
    solver = dict(solver or {})
    site = _site(model, layer, target)
    check = check_vertices(model, site, vertices, target, units, criterion,
                           outcomes=solver.get("outcomes"), device=device)
    return Polytope(
        vertices=vertices, valid=check.valid, target=target, init=init, layer=site.name, method=method,
        units=units, criterion=criterion, rel_error=check.rel_error, violation=check.violation,
        pushed=check.pushed, target_pushed=check.target_pushed, margin=check.margin, reasons=check.reasons,
        solver=solver, params=params,
    )


@torch.no_grad()
def measure(
    model: nn.Module,
    layer: str | Site,
    poly: Polytope,
    *,
    n_samples: int = 2000,
    sampler: Sampler = "stick",
    seed: int = 0,
    device: str = "cpu",
) -> Measurement:
    """Sample ``n_samples`` convex combinations of the valid vertices and classify them.

    ``success_rate`` is the share of samples the model gives the target's top class;
    ``samples_max_feature_rel_error`` the largest relative feature error among them, and
    ``hull_collides`` whether that meets the polytope's criterion: read it before taking
    the success rate for a collision's (see :class:`Measurement`).
    The draw is ``sampler`` (``stick``: the authors' stick-breaking; ``dirichlet``)
    from a generator seeded with ``seed``: the same seed, the same samples.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS}")
    if n_samples < 1:
        raise ConfigError(f"expected n_samples >= 1, got {n_samples}")
    require_float32(model)
    layer = _site(model, layer, poly.target)
    with full_precision(), contextlib.ExitStack() as stack:
        # Classify with the model itself when it is already on ``device`` (eval_mode below
        # restores its modes); a copy only to move it, so the caller's stays where it is.
        want = torch.device(device)
        here = all(t.device.type == want.type for t in (*model.parameters(), *model.buffers()))
        net = model if here else copy.deepcopy(model).to(device)
        stack.enter_context(eval_mode(net))
        vertices, target, valid = poly.vertices, poly.target, poly.valid
        good = vertices[valid]
        n_valid, n_all = int(valid.sum()), len(vertices)
        t_prob = torch.softmax(net(target.unsqueeze(0).to(device))[0], -1)
        t_class = int(t_prob.argmax())
        finite = torch.isfinite(vertices.flatten(1)).all(1)
        v_pred = net(torch.nan_to_num(vertices).to(device)).argmax(-1).cpu()
        nan = float("nan")
        # Each invalid vertex's reason after the count; none where every vertex was valid (too few asked for).
        reason = "" if n_valid >= POLYTOPE_MIN_VERTICES else "; ".join([
            f"{n_valid} of {n_all} vertices valid: a polytope needs {POLYTOPE_MIN_VERTICES}",
            *(f"v{k}: {r}" for k, r in enumerate(poly.reasons) if r)])
        common = {
            "target_class": t_class, "n_classes": len(t_prob), "target_top_prob": float(t_prob.max()),
            "n_valid": n_valid,
            "invalid_reason": reason, "vertices_in_target_class": int((v_pred[finite] == t_class).sum()),
            "vertex_avg_distance": avg_pairwise_distance(good) if n_valid >= 2 else nan,
            "max_feature_rel_error": float(poly.rel_error[valid].max()) if n_valid else nan,
        }
        if reason:
            return Measurement(success_rate=nan, samples_top_prob=nan, samples_max_feature_rel_error=nan,
                               n_samples=0, hull_collides=None, **common)
        gen = torch.Generator().manual_seed(seed)
        w = sample_weights(n_samples, n_valid, sampler=sampler, generator=gen)
        samples = combine(w, good)
        ev = evaluate(net, samples, target, device=device)
        t_pre = preactivation(net, target.unsqueeze(0).to(device), layer).cpu()
        act = function_of(layer)
        s_rel = torch.cat([
            feature_rel_error(preactivation(net, samples[i : i + 250].to(device), layer).cpu(), t_pre, act=act)
            for i in range(0, len(samples), 250)
        ])
    full_w = torch.zeros(len(w), n_all, dtype=torch.float64)
    full_w[:, valid] = w
    return Measurement(
        success_rate=ev.success_rate, samples_top_prob=ev.samples_top_prob,
        samples_max_feature_rel_error=float(s_rel.max()), n_samples=n_samples,
        hull_collides=hull_collides(float(s_rel.max()), poly.criterion),
        weights=full_w, sample_pred=ev.sample_pred, sample_prob=ev.sample_prob, **common,
    )


def distances(points: torch.Tensor, to: torch.Tensor) -> np.ndarray:
    """L2 distance of each point to ``to`` in float64. (V, *input), (*input) -> (V,)"""
    return (points.double() - to.double()).flatten(1).norm(dim=1).numpy()


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How large the exact collision set of a target is (:mod:`collide.piecewise.collision_set`).

    ``dim``: the dimension of the set's affine hull (``dim_method`` says how it was
    found: ``ball``, ``implicit-equalities``, ``point``, or ``upper-bound`` where the
    search gave up). ``radius``: the largest ball inside the set within its hull, a
    certified distance one can move in every direction of it without changing a
    feature. ``widths``: the set's extent along random unit ``directions`` of its hull,
    each between two of its points (``extremes``: maximiser, minimiser per direction),
    found by LP. ``samples``: points of the set by hit-and-run (``sampler`` has the
    chains, steps and the mixing diagnostics: read them before taking the samples for
    uniform). ``models`` > 1: the set of inputs that collide with the target in every
    model at once. ``pinned``: where the set is flat, the rows found to hold with
    equality all over it (indices into its rows, as
    :meth:`collide.piecewise.collision_set.CollisionSet.all_rows` orders them), and
    ``pinned_weights`` the certificate that they do (None where there is none:
    docs/storage.md says how to check it).

    Shapes: center (*input); samples (n, *input); directions (w, *input);
    extremes (2w, *input); widths (w,), float64; pinned (p,) int64; pinned_weights (p,) float64.
    """

    dim: int
    dim_method: str
    radius: float
    center: torch.Tensor
    samples: torch.Tensor
    directions: torch.Tensor
    extremes: torch.Tensor
    widths: torch.Tensor
    n_positive: int
    rank: int
    free_dim: int
    input_dim: int
    models: int
    box: tuple[float, float]
    sampler: dict[str, Any]
    lp: dict[str, Any]
    seconds: float
    pinned: np.ndarray | None = None
    pinned_weights: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The scalars, as a row's attrs store them."""
        return {"dim": self.dim, "dim_method": self.dim_method, "radius": self.radius,
                "mean_width": float(self.widths.mean()) if len(self.widths) else 0.0,
                "n_positive": self.n_positive, "rank": self.rank, "free_dim": self.free_dim,
                "input_dim": self.input_dim, "models": self.models, "box": list(self.box),
                "sampler": dict(self.sampler),
                "lp": dict(self.lp), "seconds": self.seconds}


def collision_geometry(
    model: nn.Module, layer: str | Site, target: torch.Tensor, *, config: GeometryConfig | None = None,
    also: Sequence[tuple[nn.Module, str | Site]] = (), progress: LpProgress | None = None,
) -> Geometry:
    """Dimension, inscribed ball and uniform samples of ``target``'s exact collision set.

    The set is the exact solver's (every input in the box and the target's activation
    region with the target's pre-activation at ``layer`` on its positive units and ≤ 0
    on the rest), so every sample has the target's features exactly. ``also``: more
    ``(model, layer)`` pairs on the same input; the set is then the inputs that collide
    in all of them.

    Args:
        model: a float32 classifier (not changed).
        target: one input, no batch dim, inside the box ``config.lower..upper``.
        progress: ``progress(stage, iterations, seconds)`` as each stage begins (``set``,
            ``ball``, ``dimension``, ``widths``, ``samples``) and about once a second while
            its LPs run: their iterations (simplex or interior-point) and the stage's seconds so far.

    Shapes:
        target: (*input)
    """
    config = config or GeometryConfig()
    target = one_input(target, "target")
    cs = _exact_set(model, layer, target, config, also, progress)
    found = measure_set(cs, config=config, progress=progress)
    shape = tuple(target.shape)
    return Geometry(
        dim=found.dim, dim_method=found.dim_method, radius=found.radius,
        center=torch.from_numpy(found.center).view(shape),
        samples=torch.from_numpy(found.samples).view(-1, *shape),
        directions=torch.from_numpy(found.directions).view(-1, *shape),
        extremes=torch.from_numpy(found.extremes).view(-1, *shape), widths=torch.from_numpy(found.widths),
        n_positive=found.n_positive, rank=found.rank, free_dim=found.free_dim, input_dim=cs.input_dim,
        models=1 + len(also), box=(config.lower, config.upper), sampler=found.sampler, lp=found.lp,
        seconds=found.seconds, pinned=found.pinned, pinned_weights=found.pinned_weights,
    )


def _exact_set(
    model: nn.Module, layer: str | Site, target: torch.Tensor, config: GeometryConfig,
    also: Sequence[tuple[nn.Module, str | Site]], progress: LpProgress | None = None,
) -> CollisionSet:
    """The exact collision set of ``target`` at ``layer`` (and every pair of ``also``), in the box."""
    require_finite(target, "the target", fix="pass a finite input")
    flat = target.double().flatten().numpy()
    if flat.min() < config.lower or flat.max() > config.upper:
        raise DataError(f"the target lies outside the box [{config.lower}, {config.upper}] the collision set is "
                        "taken in: set geometry.lower/upper to the model's input range")
    heartbeat(progress, "set")  # announced; no LP of its own to watch
    pieces, flats = [], []
    for net, name in [(model, layer), *also]:
        require_float32(net)
        site = _site(net, name, target)
        require_method(site, "exact")
        piece = affine_piece(net, site, target)
        pieces.append((piece, piece.jac @ flat + piece.offset))
        flats.append(function_of(site).at(0.0))  # where its saturated units stay: the flat pieces
    return collision_set(pieces, flat, lower=config.lower, upper=config.upper, max_entries=config.max_entries,
                         flats=flats)


@dataclass(frozen=True)
class SetSize:
    """The exact collision set's screening sizes: the dimension of its affine hull (and
    how it was found, as :class:`Geometry` says) and its inscribed radius, with what they
    cost. No widths and no samples: those are :func:`collision_geometry`'s. ``center``:
    the ball's centre, flat like the input (float64), so that anyone can check the ball
    lies in the set. ``solver``: which of HiGHS's solvers found the ball
    (:attr:`collide.piecewise.ball.Ball.solver`). ``pinned``, ``pinned_weights``: as
    :class:`Geometry`'s, the flat's rows and their certificate."""

    dim: int
    dim_method: str
    radius: float
    free_dim: int
    input_dim: int
    seconds: float
    center: np.ndarray
    solver: str
    pinned: np.ndarray | None = None
    pinned_weights: np.ndarray | None = None


def collision_size(
    model: nn.Module, layer: str | Site, target: torch.Tensor, *, config: GeometryConfig | None = None,
    progress: LpProgress | None = None,
) -> SetSize:
    """The dimension and inscribed radius of ``target``'s exact collision set at ``layer``:
    the certified sizes that need one LP (two or more where the set is flat), for
    screening many inputs before measuring a few in full with :func:`collision_geometry`.
    ``progress``: as :func:`collision_geometry`'s (stages ``set``, ``ball``, ``dimension``).

    Shapes:
        target: (*input)
    """
    config = config or GeometryConfig()
    target = one_input(target, "target")
    start = time.perf_counter()
    cs = _exact_set(model, layer, target, config, (), progress)
    ball = inscribed_ball(cs, watch=heartbeat(progress, "ball"))
    if not np.isfinite(ball.radius):
        raise InternalError(f"the inscribed-ball LP of the collision set failed ({ball.outcome}), though the "
                            "target is in the set: report this with the model and target")
    search_runs = cs.free_dim and ball.radius <= RADIUS_TOL  # the dimension's search has LPs to run
    hull = hull_dimension(cs, ball, watch=heartbeat(progress, "dimension") if search_runs else None)
    found = hull.ball_in(ball)
    return SetSize(dim=hull.dim, dim_method=hull.method, radius=float(found.radius), free_dim=cs.free_dim,
                   input_dim=cs.input_dim, center=np.asarray(found.center, dtype=np.float64), solver=found.solver,
                   seconds=time.perf_counter() - start, **hull.pinned_rows())
