"""Frozen, validated configuration for every stage.

Each dataclass checks itself in ``__post_init__`` and says what was wrong, so a bad
value fails before any work starts or any file is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from collide._io import json_digest
from collide.errors import ConfigError

# Each choice is one Literal type: configs are annotated with it (so ``from_dict`` refuses
# anything else by name) and the tuple of its values is what code iterates over.
Architecture = Literal["mlp", "lenet5"]
Loss = Literal["paper", "penalty"]
Method = Literal["gradient", "exact", "paper"]
Init = Literal["target", "other"]
# Where an experiment's classifier comes from: a shipped checkpoint when one matches the
# data and training config, else trained (``auto``); only shipped; always trained.
CheckpointChoice = Literal["auto", "shipped", "train"]
Sampler = Literal["stick", "dirichlet"]
KnnMethod = Literal["auto", "exact", "pynndescent"]
ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)
LOSSES: tuple[str, ...] = typing.get_args(Loss)
METHODS: tuple[str, ...] = typing.get_args(Method)
INITS: tuple[str, ...] = typing.get_args(Init)
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
KNN_METHODS: tuple[str, ...] = typing.get_args(KnnMethod)


# How the exact solver's LPs are solved: see collide.solvers.lp.
LP_SOLVERS = ("highs", "linprog")


def _digested(obj: Any) -> Any:
    """``obj`` as a dict for digests, without the fields marked ``metadata={"digest": False}``
    (settings that change how fast, never what, a run computes)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _digested(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("digest", True)}
    if isinstance(obj, list | tuple):
        return [_digested(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _digested(v) for k, v in obj.items()}
    return obj


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _require(
        isinstance(value, int | float) and math.isfinite(value) and value > 0,
        f"expected {name} > 0, got {value!r}",
    )


def _non_negative(name: str, value: float) -> None:
    _require(
        isinstance(value, int | float) and math.isfinite(value) and value >= 0,
        f"expected {name} >= 0, got {value!r}",
    )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"expected {name} in {allowed}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained (or found already trained) on MNIST.

    ``min_accuracy`` is the paper's reported test accuracy for the MLP (§3.1); a model
    that misses it is an error, not a silent weaker reproduction. ``threads``: torch's CPU
    threads while training; part of the checkpoint's identity, since another count
    rounds the gradients' sums differently.
    """

    arch: Architecture = "mlp"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    min_accuracy: float = 0.9664
    train_limit: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHITECTURES)
        _require(self.epochs >= 1, f"expected epochs >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"expected batch_size >= 1, got {self.batch_size}")
        _positive("lr", self.lr)
        _require(0 <= self.min_accuracy <= 1, f"expected 0 <= min_accuracy <= 1, got {self.min_accuracy}")
        _require(
            self.train_limit is None or self.train_limit >= 1,
            f"expected train_limit >= 1 or None, got {self.train_limit}",
        )
        _require(self.threads >= 1, f"expected train.threads >= 1, got {self.threads}")


@dataclass(frozen=True)
class GradientConfig:
    """The gradient vertex solver (paper §2, with an optional penalty continuation).

    Adam on the input, projected onto ``[lower, upper]`` after every step, with the
    learning rate decaying geometrically from ``lr`` to ``lr_end`` over ``max_steps``.

    ``others_weight`` weighs L₋ⁱ's second term, Σ_{j≠i}|ỹⱼ| over the target's other
    non-positive units (the paper has 1). It keeps those units near zero, which also holds
    the pushed unit back: on the MNIST MLP at relu1 three of five vertices ended with the
    pushed unit above the target's own value. The penalty below enforces ỹⱼ ≤ 0 by
    itself, so by default the pushed unit alone is minimised, as in the exact LP.

    ``loss="paper"`` minimises ``alpha*L+ + beta*L-^i`` alone. ``loss="penalty"`` adds
    ``gamma/2 * ||relu(y~ on the target's non-positive units)||^2`` and raises ``alpha``
    and ``gamma`` by the factor ``growth`` every step (continuation), which turns the
    approximate collision into a tight one.

    The collision criterion: the largest relative post-activation error at the layer is
    at most ``rel_tol`` and every unit the target has non-positive is at most ``neg_tol``
    (checked from ``min_steps`` on). Once an iterate meets it, the solver keeps
    optimising and keeps the feasible iterate with the lowest pushed unit; a vertex stops
    when that value has not improved by ``plateau_tol`` (relative) over ``plateau_window``
    steps, or at ``max_steps``. With ``stall_window`` > 0 a vertex that has not met the
    criterion also stops once its feature error has not fallen by ``stall_tol``
    (relative) for that many steps: it will not meet it (outcome ``stalled``). A vertex
    is *valid* when it meets the criterion and its pushed unit ends at least
    ``push_margin`` x max|ỹᵗ| below the target's: a vertex that did not move is no vertex.
    """

    loss: Loss = "penalty"
    alpha: float = 1.0
    beta: float = 1.0
    others_weight: float = 0.0
    gamma: float = 1.0
    growth: float = 1.01
    lr: float = 0.01
    lr_end: float = 1e-3
    min_steps: int = 50
    max_steps: int = 2000
    rel_tol: float = 1e-2
    neg_tol: float = 1e-2
    plateau_window: int = 200
    plateau_tol: float = 1e-3
    stall_window: int = 0
    stall_tol: float = 1e-2
    push_margin: float = 1e-2
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        _choice("loss", self.loss, LOSSES)
        _require(self.plateau_window >= 1, f"expected plateau_window >= 1, got {self.plateau_window}")
        _require(self.stall_window >= 0, f"expected stall_window >= 0, got {self.stall_window}")
        _non_negative("stall_tol", self.stall_tol)
        _non_negative("plateau_tol", self.plateau_tol)
        _non_negative("push_margin", self.push_margin)
        for name in ("alpha", "beta", "lr", "lr_end", "rel_tol"):
            _positive(name, getattr(self, name))
        _non_negative("gamma", self.gamma)
        _non_negative("others_weight", self.others_weight)
        _non_negative("neg_tol", self.neg_tol)
        _require(
            math.isfinite(self.growth) and self.growth >= 1.0,
            f"expected growth >= 1, got {self.growth}",
        )
        _require(self.min_steps >= 0, f"expected min_steps >= 0, got {self.min_steps}")
        _require(
            self.max_steps >= max(1, self.min_steps),
            f"expected max_steps >= max(1, min_steps={self.min_steps}), got {self.max_steps}",
        )
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


# The authors' learning rate per model on [0, 1] pixels: the best of the grid in
# benchmarks/solver.py (LR_GRID; lowest largest feature error of five vertices started
# from another digit after 6,000 steps), on each model's collision problem of Table 2,
# with the shipped checkpoints (collide/models/shipped/). The grid and every rate's error
# are in benchmarks/paper_lr.json (`python -m benchmarks.paper_lr`): on the MLP it is flat
# (0.232-0.240 from 1e-4 to 10), on LeNet-5 3 edges out 1 (0.0513 against 0.0545).
PAPER_TUNED_LR = {"mlp": 1e-4, "lenet5": 3.0}


@dataclass(frozen=True)
class PaperConfig:
    """The authors' own vertex scheme (paper §2, and the authors' code).

    The paper's loss ``alpha*L+ + beta*L-^i`` (α=100, β=10 as the authors used), momentum
    ``v = m·v + (1-m)·g; x -= lr·v`` from ``v = 0``, a piecewise learning rate divided by
    ``1/lr_drop`` at one and two thirds of ``steps``, clipping to the box, a fixed number
    of steps. The authors' rates (0.1 to 0.001) are for 0-255 pixels; on [0, 1] inputs the
    same step is 255² times too large. ``lr=None`` (the default) takes the rate chosen for
    the model at hand on [0, 1] inputs, :data:`PAPER_TUNED_LR`, through :meth:`for_model`.

    The paper states no tolerance for its approximate collisions. A vertex of this scheme
    counts as valid when its relative feature error is at most ``rel_tol`` (its
    non-positive units at most ``neg_tol``, unchecked when None, and its pushed unit
    ``push_margin`` x max|ỹᵗ| below the target's); the table reports its actual error.
    """

    alpha: float = 100.0
    beta: float = 10.0
    lr: float | None = None
    lr_drop: float = 0.1
    momentum: float = 0.99
    steps: int = 6000
    rel_tol: float = 0.5
    neg_tol: float | None = None
    push_margin: float = 1e-2
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "lr_drop", "rel_tol"):
            _positive(name, getattr(self, name))
        if self.lr is not None:
            _positive("lr", self.lr)
        _require(0 <= self.momentum < 1, f"expected 0 <= momentum < 1, got {self.momentum}")
        _require(self.steps >= 1, f"expected steps >= 1, got {self.steps}")
        if self.neg_tol is not None:
            _non_negative("neg_tol", self.neg_tol)
        _non_negative("push_margin", self.push_margin)
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")

    def for_model(self, arch: str) -> PaperConfig:
        """This config with ``lr`` set: the caller's, else the rate tuned for ``arch``."""
        if self.lr is not None:
            return self
        _require(arch in PAPER_TUNED_LR,
                 f"no tuned paper.lr for model {arch!r} (tuned: {sorted(PAPER_TUNED_LR)}): set paper.lr, "
                 "e.g. --set paper.lr=1e-4, or tune it with benchmarks/solver.py")
        return dataclasses.replace(self, lr=PAPER_TUNED_LR[arch])


# How the collision-set sampler steps (GeometryConfig.walk).
GEOMETRY_WALKS: tuple[str, ...] = ("billiard", "hit-and-run", "coordinate")


@dataclass(frozen=True, kw_only=True)
class GeometryConfig:
    """How an exact collision set is measured (:mod:`collide.solvers.collision_set`).

    Sizes, which need no mixing: the inscribed ball (one LP) and widths along directions
    uniform on the set's affine hull (two LPs each). Directions are added, from
    ``n_directions`` up to ``max_directions``, until the mean width's standard error is
    at most ``width_rel_se`` of it (on the MNIST MLP's ``relu1``: 8 directions give 0.9%).

    Samples: ``n_samples`` points of the set from ``chains`` chains of a walk (``walk``:
    ``billiard``, runs of mean length ``trajectory`` x √k in the rounded coordinates that
    reflect off the facets, a trajectory past ``max_reflections`` rejected; or
    ``hit-and-run``, a draw every ``thin`` steps; or ``coordinate`` hit-and-run) after
    ``rounding`` (the Dikin ellipsoid at the analytic centre, then ``adapt_rounds`` rounds
    of pooled-covariance shaping within the ``burn_in`` draws). The walk runs until every
    reported statistic (distance to the target, pairwise distance, projections on the
    width directions) has rank-normalised split-R̂ ≤ ``rhat_max`` and bulk ESS ≥
    ``ess_min``, checked every ``check_every`` draws, or until ``max_draws`` draws per
    chain; ``max_seconds`` (0: none) caps the whole measurement's wall clock, the one
    setting that can make a result depend on the machine. A set that did not converge
    keeps its samples (points of the set all the same) but reports NaN for their
    statistics, with the reason.

    Defaults chosen on the MNIST MLP's ``relu1`` set of the first test 7
    (``benchmarks/sampler.json``): the billiard walk in the Dikin ellipsoid's coordinates
    mixed best of the walks tried (against hit-and-run with a pilot covariance, and
    hit-and-run after Dikin and covariance rounding), and converged after several hundred
    draws a chain; covariance rounding from a few chains' draws only slowed it.
    ``max_draws`` keeps a default run's sampling short, which is not enough to converge
    there: such a set reports NaN sample statistics with the reason.
    ``max_draws=1500, max_seconds=600`` converges it.
    ``max_entries`` bounds rows x free dimensions of the dense constraint matrix.
    """

    n_samples: int = 2000
    chains: int = 8
    burn_in: int = 20
    thin: int = 10
    rounding: bool = True
    walk: str = "billiard"
    trajectory: float = 2.0
    max_reflections: int = 100_000
    adapt_rounds: int = 0
    n_directions: int = 8
    max_directions: int = 64
    width_rel_se: float = 0.05
    max_draws: int = 150
    max_seconds: float = 120.0
    check_every: int = 50
    rhat_max: float = 1.01
    ess_min: float = 400.0
    seed: int = 0
    lower: float = 0.0
    upper: float = 1.0
    max_entries: int = 50_000_000

    def __post_init__(self) -> None:
        _require(self.n_samples >= 1, f"expected geometry.n_samples >= 1, got {self.n_samples}")
        _require(self.chains >= 2, f"expected geometry.chains >= 2 (R̂ compares chains), got {self.chains}")
        _require(self.burn_in >= 0, f"expected geometry.burn_in >= 0, got {self.burn_in}")
        _require(self.thin >= 1, f"expected geometry.thin >= 1, got {self.thin}")
        _require(self.walk in GEOMETRY_WALKS, f"expected geometry.walk in {GEOMETRY_WALKS}, got {self.walk!r}")
        _require(self.adapt_rounds >= 0, f"expected geometry.adapt_rounds >= 0, got {self.adapt_rounds}")
        _require(self.n_directions >= 1, f"expected geometry.n_directions >= 1, got {self.n_directions}")
        _require(self.max_directions >= self.n_directions,
                 f"expected geometry.max_directions >= n_directions ({self.n_directions}), got {self.max_directions}")
        _require(self.width_rel_se > 0, f"expected geometry.width_rel_se > 0, got {self.width_rel_se}")
        _require(self.trajectory > 0, f"expected geometry.trajectory > 0, got {self.trajectory}")
        _require(self.max_reflections >= 1, f"expected geometry.max_reflections >= 1, got {self.max_reflections}")
        _require(self.max_draws >= 1, f"expected geometry.max_draws >= 1, got {self.max_draws}")
        _require(self.max_seconds >= 0, f"expected geometry.max_seconds >= 0 (0: no limit), got {self.max_seconds}")
        _require(self.check_every >= 1, f"expected geometry.check_every >= 1, got {self.check_every}")
        _require(self.rhat_max >= 1, f"expected geometry.rhat_max >= 1, got {self.rhat_max}")
        _require(self.ess_min >= 0, f"expected geometry.ess_min >= 0, got {self.ess_min}")
        _require(self.lower < self.upper, f"expected geometry.lower < upper, got {self.lower} and {self.upper}")
        _require(self.max_entries >= 1, f"expected geometry.max_entries >= 1, got {self.max_entries}")


@dataclass(frozen=True)
class ExactConfig:
    """The exact (linear programming) vertex solver, beyond the paper.

    ``proximity`` weighs the L1 distance to the init, as a multiple of the mean absolute
    coefficient of the pushed unit; 0 ignores the init.

    A vertex is valid when the LP is ``optimal`` and, recomputed in float64 from the
    stored float32 vertex, its relative feature error is at most ``rel_tol``, its
    non-positive units at most ``neg_tol``, and its pushed unit ``push_margin`` x
    max|ỹᵗ| below the target's (a large ``proximity`` can pin a vertex to its init).

    The margin is smaller than the gradient solver's: an LP vertex is an exact optimum,
    so any move well above rounding (float32 storage shifts a unit by about 1e-7 x
    max|ỹᵗ|) is a real, distinct point of the collision set, and the margin only has to
    reject a vertex that stayed on the target. Deeper in a network the target's region
    can be small: LeNet-5 at ``relu3`` lets its first pushed unit fall only about
    1% of max|ỹᵗ| below the target's even without the proximity term.

    ``max_entries`` bounds the LP's constraint matrix (rows x input coordinates, dense in
    float64: the Jacobian of a deep layer fills every entry). A larger problem is
    refused before any work, naming its size and the largest input it would take.

    ``lp_solver``: ``highs`` (HiGHS through highspy, region rows added where violated) or
    ``linprog`` (scipy, every row; the reference it is measured against); see
    :mod:`collide.solvers.lp`. ``threads``: how many vertex LPs run at once (0: one per
    core); the vertices do not depend on it, so it is left out of experiment digests.
    """

    proximity: float = 0.5
    feasibility_tol: float = 1e-9
    region_tol: float = 1e-5
    rel_tol: float = 1e-6
    neg_tol: float = 1e-6
    push_margin: float = 1e-4
    lower: float = 0.0
    upper: float = 1.0
    max_entries: int = 100_000_000
    lp_solver: str = "highs"
    threads: int = field(default=0, metadata={"digest": False})

    def __post_init__(self) -> None:
        _require(self.max_entries >= 1, f"expected max_entries >= 1, got {self.max_entries}")
        _require(self.lp_solver in LP_SOLVERS, f"expected lp_solver in {LP_SOLVERS}, got {self.lp_solver!r}")
        _require(self.threads >= 0, f"expected threads >= 0 (0: one per core), got {self.threads}")
        _non_negative("proximity", self.proximity)
        _positive("rel_tol", self.rel_tol)
        _non_negative("neg_tol", self.neg_tol)
        _non_negative("push_margin", self.push_margin)
        _positive("feasibility_tol", self.feasibility_tol)
        _positive("region_tol", self.region_tol)
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


@dataclass(frozen=True)
class SampleConfig:
    """How points are drawn from a polytope: convex combinations of its vertices."""

    n_samples: int = 2000
    sampler: Sampler = "stick"
    seed: int = 0
    n_dataset_pairs: int = 2000

    def __post_init__(self) -> None:
        _require(self.n_samples >= 1, f"expected n_samples >= 1, got {self.n_samples}")
        _choice("sampler", self.sampler, SAMPLERS)
        _require(self.n_dataset_pairs >= 1, f"expected n_dataset_pairs >= 1, got {self.n_dataset_pairs}")


@dataclass(frozen=True)
class RowSpec:
    """One polytope of a table: how its vertices are found and where they start."""

    method: Method
    init: Init

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("init", self.init, INITS)


DEFAULT_ROWS = (
    RowSpec("gradient", "target"),
    RowSpec("gradient", "other"),
    RowSpec("exact", "target"),
    RowSpec("exact", "other"),
    RowSpec("paper", "target"),
    RowSpec("paper", "other"),
)


# An experiment's name names its files (<name>.zarr, .<name>-xxxxxxxx.parquet, <name>-summary.png):
# short enough for every such name to stay under the file system's 255 bytes, never hidden.
NAME_MAX = 100
EXPERIMENT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")


class _Experiment:
    """What every experiment config shares: checks, JSON round trip, a stable digest."""

    _nested: ClassVar[dict[str, type]] = {}

    def _check_common(self) -> None:
        name, device = self.name, self.device  # type: ignore[attr-defined]
        for key in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, key.name)
            if isinstance(value, str) and "\x00" in value:
                raise ConfigError(f"{key.name}: expected no NUL character (it names a file or folder), "
                                  f"got {value[:60]!r}")
        shown = name if len(name) <= 60 else f"{name[:40]}... ({len(name)} characters)"
        _require(isinstance(name, str) and EXPERIMENT_NAME.fullmatch(name) is not None,
                 f"name: expected a plain experiment name of 1 to {NAME_MAX} letters, digits, '.', '_' or '-', "
                 f"starting with a letter or digit (it names the files <name>.zarr, <name>.parquet), got {shown!r}")
        _require(self.n_vertices >= 1, f"expected n_vertices >= 1, got {self.n_vertices}")  # type: ignore[attr-defined]
        label = getattr(self, "target_label", 0)
        _require(0 <= label <= 9, f"expected target_label in 0..9, got {label}")
        _require(len(getattr(self, "rows", (None,))) >= 1, "expected at least one row, got none")
        _require(
            device == "auto" or device.split(":")[0] in ("cpu", "cuda"),
            f"expected device 'auto', 'cpu' or 'cuda[:n]', got {device!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        """A short hash of everything that shapes the results, stable across processes.

        Where the results are written is left out: the same experiment written to two
        places is the same experiment.
        """
        science = {k: v for k, v in _digested(self).items() if k != "results_root"}
        science["layer"] = self.digest_layer()
        return json_digest(science)

    def digest_layer(self) -> str:
        """The layer as the digest names it. An experiment whose model gives layers aliases
        (``fc1`` for ``relu1``) returns the module's name, so that both spellings share a
        digest and a rerun under the other reuses every row."""
        return str(self.layer)  # type: ignore[attr-defined]

    @classmethod
    def _rows(cls, rows: Any) -> tuple[Any, ...]:
        return tuple(rows)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from plain JSON-like values; nested configs and rows may be dicts.

        Every key is checked against the fields and every value against its field's
        annotation before the dataclass checks its ranges, so a typo or a wrong type is
        reported by name (``gradient.lrr``: unknown key, did you mean ``gradient.lr``?),
        never as a Python ``TypeError``. Integers are accepted for floats and integral
        floats (``1e4``) for integers; booleans must be JSON ``true``/``false``: ``1``,
        ``0`` and ``"yes"`` are refused rather than guessed. A nested config given as a
        dict overrides that field's default (the patch experiment's LeNet-5 training
        settings, say), not the nested class's defaults.

        Raises:
            ConfigError: naming the key (with its dotted path), what was expected and
                what was given.
        """
        return _build(cls, raw, "")


_WANTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _build(kind: type, raw: Any, path: str, base: Any = None) -> Any:
    """An instance of the dataclass ``kind`` from a mapping of (some of) its fields.

    Args:
        kind: the dataclass.
        raw: field values, JSON-like.
        path: where ``raw`` sits in the experiment config (``gradient``), for messages.
        base: an instance whose values the missing fields keep; else ``kind``'s defaults.
    """
    where = f"{path}: " if path else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}expected a mapping of {kind.__name__} fields, got {_shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = _hints(kind)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(_unknown_key(kind, str(key), path, list(fields), hints))
        hint, dotted = hints[key], f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            default = getattr(base, key) if base is not None else _default(fields[key])
            values[key] = _build(hint, value, dotted, default if isinstance(default, hint) else None)
        else:
            values[key] = _checked(value, hint, dotted)
    if "rows" in values and hasattr(kind, "_rows"):
        values["rows"] = kind._rows(values["rows"])
    try:
        return dataclasses.replace(base, **values) if base is not None else kind(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from exc
    except TypeError as exc:  # a field the checks above do not cover
        raise ConfigError(f"{where}bad {kind.__name__} configuration: {exc}") from exc


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``): resolve them.
    return typing.get_type_hints(kind)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _unknown_key(kind: type, key: str, path: str, names: list[str], hints: dict[str, Any]) -> str:
    prefix = f"{path}." if path else ""
    owner = f"{kind.__name__} ({path})" if path else kind.__name__
    message = f"unknown key {prefix + key!r}: unexpected keyword for {owner}"
    # A nested config's key given one level too high: `max_steps` for `gradient.max_steps`.
    nested = [
        f"{prefix}{name}.{key}" for name in names
        if dataclasses.is_dataclass(hints[name]) and key in {f.name for f in dataclasses.fields(hints[name])}
    ]
    close = difflib.get_close_matches(key, names, n=1)
    if nested:
        message += f"; did you mean {' or '.join(repr(n) for n in nested)}?"
    elif close:
        message += f"; did you mean {prefix + close[0]!r}?"
    return f"{message} Valid keys: {', '.join(names)}"


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _wanted(hint: Any) -> str:
    return _WANTED.get(hint, getattr(hint, "__name__", str(hint)))


def _checked(value: Any, hint: Any, path: str) -> Any:
    """``value`` as the annotation ``hint`` wants it, or a :class:`ConfigError` naming ``path``.

    An annotation it does not know (a new kind of field) lets the value through
    unchanged: the dataclass's own checks still apply.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            with contextlib.suppress(ConfigError):
                return _checked(value, option, path)
        wanted = " or ".join(_wanted(a) for a in options) + (" or null" if type(None) in args else "")
        raise ConfigError(f"{path}: expected {wanted}, got {_shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: expected one of {args}, got {_shown(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_shown(value)}")
    if hint is float:
        # Kept as given (an int stays an int) so that digests of existing configs stay put.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected a number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_shown(value)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            item = f" of {_wanted(args[0])} values" if args else ""
            raise ConfigError(f"{path}: expected a list{item}, got {_shown(value)}")
        variadic = origin is list or not args or args[-1] is Ellipsis
        if not variadic and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {_shown(value)}")
        kinds = (args[:1] or (Any,)) * len(value) if variadic else args
        items = [_checked(v, k, f"{path}[{i}]") for i, (v, k) in enumerate(zip(value, kinds, strict=True))]
        return tuple(items) if origin is tuple else items
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return _build(hint, value, path)
        raise ConfigError(f"{path}: expected a {hint.__name__} (a mapping of its fields), got {_shown(value)}")
    if (origin or hint) is dict and not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_shown(value)}")
    return value

def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` asked for
    where torch sees no GPU is a :class:`ConfigError` that says what to set."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for, but torch finds no usable CUDA GPU here "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): set device=auto "
                          "(a GPU where there is one, else the CPU) or device=cpu")
    return device


@dataclass(frozen=True)
class PatchConfig:
    """Sliding-window patches of a corpus (paper §4.1: 32x32 at a constant stride).

    ``share`` of each class's images is sampled (seeded) into the corpus; the store is
    written in Zarr chunks of ``images_per_chunk`` images, whole chunks per Dask task.
    """

    size: int = 8
    stride: int = 4
    share: float = 0.1
    images_per_chunk: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.size >= 1, f"expected patch size >= 1, got {self.size}")
        _require(self.stride >= 1, f"expected patch stride >= 1, got {self.stride}")
        _require(0 < self.share <= 1, f"expected 0 < share <= 1, got {self.share}")
        _require(self.images_per_chunk >= 1, f"expected images_per_chunk >= 1, got {self.images_per_chunk}")


@dataclass(frozen=True)
class KnnConfig:
    """Approximate kNN over the patch store (pynndescent), checked against exact search.

    ``n_components`` > 0 indexes a PCA projection; answers are re-ranked with exact
    distances in the full space. ``shards`` > 1 builds one index per slice of the store
    and merges their answers.

    ``method="auto"`` searches exactly (brute force, same answers format) when the store
    holds fewer than ``exact_below`` patches, else builds the pynndescent index: for a
    small store, exact search of a few images' windows takes milliseconds, while the
    index's first build in a process pays numba's compile (benchmarks/results.md, kNN:
    exact search of one image's windows stays below the index's build time up to 1e6
    patches).

    ``n_jobs``, ``n_trees``, ``n_iters``, ``max_candidates`` and ``low_memory`` go to
    pynndescent's ``NNDescent`` (0: pynndescent's own default, which grows with the
    store); benchmarks/results.md, kNN build, has the grid they were chosen from.
    """

    k: int = 10
    n_neighbors: int = 20
    n_components: int = 0
    shards: int = 1
    rerank: int = 3
    epsilon: float = 0.3
    seed: int = 0
    method: KnnMethod = "auto"
    exact_below: int = 100_000
    n_jobs: int = 2
    n_trees: int = 8
    n_iters: int = 0
    max_candidates: int = 0
    low_memory: bool = False

    def __post_init__(self) -> None:
        _choice("method", self.method, KNN_METHODS)
        _require(self.n_jobs >= 1, f"expected n_jobs >= 1, got {self.n_jobs}")
        for name in ("n_trees", "n_iters", "max_candidates"):
            _non_negative(name, getattr(self, name))
        _require(self.exact_below >= 0, f"expected exact_below >= 0, got {self.exact_below}")
        _require(self.k >= 1, f"expected k >= 1, got {self.k}")
        _non_negative("epsilon", self.epsilon)
        _require(self.n_neighbors >= 2, f"expected n_neighbors >= 2, got {self.n_neighbors}")
        _require(self.n_components >= 0, f"expected n_components >= 0, got {self.n_components}")
        _require(self.shards >= 1, f"expected shards >= 1, got {self.shards}")
        _require(self.rerank >= 1, f"expected rerank >= 1, got {self.rerank}")


def config_keys(config: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every key ``--set`` accepts for ``config`` (an instance: its values are the defaults
    shown): (dotted key, type, value). Nested configs are walked into."""
    out: list[tuple[str, str, Any]] = []
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        hint, value = hints[f.name], getattr(config, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += config_keys(value, f"{prefix}{f.name}.")
            continue
        if typing.get_origin(hint) is Literal:
            shown = "one of " + ", ".join(map(str, typing.get_args(hint)))
        else:
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
        out.append((f"{prefix}{f.name}", shown, value))
    return out
