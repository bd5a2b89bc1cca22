"""Rows that hold points rather than a polytope: baselines, frontier points, samples.

A polytope row (:mod:`collide.results.records`) stores vertices and is judged by the
samples of their hull. The experiments that go past the paper store sets of inputs
instead: a random ball around the target, null-space moves, a code inversion, the
closest point within a feature-error budget, the samples of an exact collision set. A
:class:`PointsRecord` stores such a set with the claim made for it (every point's
relative feature error at ``layer`` is at most ``claim_rel_error``, or no claim), and
the engine evaluates it like any row: :func:`evaluate_points` writes the same table
columns a polytope row has, so the two kinds sit side by side in one table, and
:func:`verify_points` recomputes them in float64 by another route.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from collide.copies import cast_copy
from collide.errors import InternalError
from collide.inputs import require_finite
from collide.models.zoo import load_model_source
from collide.objective import feature_rel_error
from collide.polytope import evaluate
from collide.precision import full_precision
from collide.results.cells import SET_NOT_MIXED, missing
from collide.results.store import POINTS, ExperimentStore
from collide.results.store import is_points_row as is_points_row  # where evaluation and verify look
from collide.sites import function_of
from collide.taps import preactivation, site_of

# A point meets its row's claim when its float64 relative feature error is at most the
# claim plus this: the points are stored as float32, whose rounding moves a feature by
# about 1e-7 of its size, far below it, and a point that misses by more does not collide.
CLAIM_SLACK = 1e-6
# Pairs a spread is averaged over: all pairs of at most this many points (seeded subset).
SPREAD_POINTS = 200
_BATCH = 250
# A points row's columns that estimate something of the distribution its points were
# drawn from: withheld where they are a collision set's samples whose chains did not mix.
# The largest feature error and distance are every point's bound, and stand.
SAMPLE_STATISTICS = ("success_rate", "samples_top_prob", "mean_feature_rel_error", "mean_distance_to_target",
                     "mean_distance_to_init", "points_spread", "pred_class")
# The methods whose points are a collision set's samples: their rows carry the sampler's record.
SET_SAMPLES = ("exact-region", "joint-region")


@dataclass(frozen=True, kw_only=True)
class PointsRecord:
    """A stored set of inputs with the claim made for them.

    ``method`` names how they were made (``random-ball``, ``null-space``, ``inversion``,
    ``frontier``, ``exact-region``, ``gradient-hull``, ...). ``columns`` are scalars the
    table carries as they are (the ε asked for, the distance a baseline was set to).

    Shapes: points (n, *input); target, init_image (*input), float32 in input units.
    """

    experiment: str
    row: int
    model: str
    model_source: dict[str, Any]
    layer: str
    method: str
    init: str
    claim_rel_error: float | None
    config: dict[str, Any]
    config_digest: str
    points: np.ndarray
    target: np.ndarray
    init_image: np.ndarray | None = None
    dataset_avg_distance: float | None = None
    pixel_scale: float = 1.0
    columns: dict[str, Any] = field(default_factory=dict)
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Points that are a collision set's samples: its sampler's record (``converged``,
    # ``reason``, ``rhat``, ``ess``). Where the chains did not mix, the points' sample
    # statistics are withheld (:data:`SAMPLE_STATISTICS`).
    sampler: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points)
        if points.ndim < 2 or len(points) == 0:
            raise InternalError(f"a points row needs (n >= 1, *input) points, got shape {points.shape}")
        if points.shape[1:] != np.asarray(self.target).shape:
            raise InternalError(f"points of shape {points.shape[1:]} do not match the target's {np.shape(self.target)}")
        require_finite(points, f"row {self.row} of {self.experiment}: its {self.method} points", error=InternalError,
                       fix="a stored row holds finite points only; drop the ones the method did not find")
        if self.claim_rel_error is not None and not self.claim_rel_error >= 0:
            raise InternalError(f"claim_rel_error must be >= 0 or None, got {self.claim_rel_error}")

    def write(self, results_root: str | Path) -> Path:
        """The row group ``row-<row>`` of ``<experiment>.zarr``, replaced atomically."""
        arrays = {"points": np.asarray(self.points, dtype=np.float32),
                  "target": np.asarray(self.target, dtype=np.float32), **self.extra_arrays}
        if self.init_image is not None:
            arrays["init"] = np.asarray(self.init_image, dtype=np.float32)
        attrs = {
            "kind": POINTS, "experiment": self.experiment, "row": self.row, "model": self.model,
            "model_source": self.model_source, "layer": self.layer, "method": self.method, "init": self.init,
            "claim_rel_error": self.claim_rel_error, "config": self.config, "config_digest": self.config_digest,
            "dataset_avg_distance": self.dataset_avg_distance, "pixel_scale": self.pixel_scale,
            "columns": dict(self.columns),
        }
        if self.sampler is not None:
            attrs["sampler"] = {k: self.sampler.get(k) for k in ("converged", "reason", "rhat", "ess")}
        return ExperimentStore(results_root, self.experiment).write_row(self.row, arrays, attrs)


def flat_rows(array: np.ndarray) -> np.ndarray:
    """(n, *input) -> (n, d), also for n = 0 (a set with no width directions)."""
    return array.reshape(array.shape[0], int(np.prod(array.shape[1:])))


@torch.no_grad()
def feature_errors(model: nn.Module, layer: str, points: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Each point's relative feature error at ``layer`` through a float64 copy of ``model``.

    Shapes: points (n, *input); target (*input); returns (n,)
    """
    net = cast_copy(model).eval()
    site = site_of(net, layer, t_in := target.double().unsqueeze(0))
    t_pre = preactivation(net, t_in, site)
    act = function_of(site)
    return torch.cat([
        feature_rel_error(preactivation(net, points[i : i + _BATCH].double(), site), t_pre, act=act)
        for i in range(0, len(points), _BATCH)
    ]).numpy()


def spread(points: torch.Tensor, *, seed: int = 0) -> float:
    """Mean pairwise L2 distance, over a seeded subset of :data:`SPREAD_POINTS` points
    when there are more; NaN for fewer than two points."""
    if len(points) < 2:
        return float("nan")
    if len(points) > SPREAD_POINTS:
        pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:SPREAD_POINTS]
        points = points[pick]
    return float(torch.pdist(points.flatten(1).double()).mean())


def point_metrics(model: nn.Module, layer: str, points: torch.Tensor, target: torch.Tensor,
                  init: torch.Tensor | None, *, claim: float | None, scale: float = 1.0,
                  device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The table columns of a set of points, and its per-point arrays.

    Success is the share of points the model gives the target's top-1 class (float32
    forward pass, as a user's model runs); feature errors are float64.
    """
    ev = evaluate(model, points.float(), target.float(), device=device)
    with torch.no_grad():
        t_prob = torch.softmax(model.to("cpu")(target.float().unsqueeze(0))[0].double(), -1)
    t_class = int(t_prob.argmax())
    rel = feature_errors(model, layer, points, target)
    to_target = (points.double() - target.double()).flatten(1).norm(dim=1).numpy()
    to_init = (points.double() - init.double()).flatten(1).norm(dim=1).numpy() if init is not None else None
    pred = ev.sample_pred.numpy()
    counts = np.bincount(pred, minlength=len(t_prob))
    metrics = {
        "n_samples": len(points),
        "success_rate": ev.success_rate,
        "target_top_prob": float(t_prob.max()),
        "samples_top_prob": ev.samples_top_prob,
        "max_feature_rel_error": float(rel.max()),
        "mean_feature_rel_error": float(rel.mean()),
        "mean_distance_to_target": float(to_target.mean()) * scale,
        "max_distance_to_target": float(to_target.max()) * scale,
        "mean_distance_to_init": float(to_init.mean()) * scale if to_init is not None else float("nan"),
        "points_spread": spread(points) * scale,
        "pred_class": int(counts.argmax()),
        "target_class": t_class,
        "claim_rel_error": claim,
        "claim_met": None if claim is None else bool((rel <= claim + CLAIM_SLACK).all()),
    }
    arrays = {"point_rel_error": rel, "point_pred": pred.astype(np.int64),
              "point_prob": ev.sample_prob.numpy().astype(np.float32)}
    return metrics, arrays


def evaluate_points(store: ExperimentStore, row: int, *, device: str = "cpu",
                    trusted: Collection[str] = ()) -> dict[str, Any]:
    """Evaluate a points row and store its metrics: the engine's evaluation of such rows.

    ``trusted``: the user's own model specs the caller named (:func:`load_model_source`)."""
    arrays, attrs = store.read_row(row)
    model = load_model_source(attrs["model_source"], trusted=trusted).eval()
    points = torch.from_numpy(arrays["points"])
    target = torch.from_numpy(arrays["target"])
    init = torch.from_numpy(arrays["init"]) if "init" in arrays else None
    with full_precision():
        found, per_point = point_metrics(model, attrs["layer"], points, target, init,
                                         claim=attrs["claim_rel_error"], scale=float(attrs["pixel_scale"]),
                                         device=device)
    nan = float("nan")
    metrics = {
        "experiment": store.name, "row": row, "method": attrs["method"], "model": attrs["model"],
        "layer": attrs["layer"], "init": attrs["init"], "n_vertices": 0, "vertex_avg_distance": nan,
        "dataset_avg_distance": nan if attrs["dataset_avg_distance"] is None else float(attrs["dataset_avg_distance"]),
        **found,
        "invalid_reason": "" if found["claim_met"] is not False else (
            f"a point misses the claimed feature error {attrs['claim_rel_error']:.3g}: success rate withheld"),
        "model_sha256": attrs["model_source"].get("sha256", ""),
        "random_weights": bool(attrs["model_source"].get("random", False)),
        "config_digest": attrs["config_digest"],
        **attrs["columns"],
    }
    if found["claim_met"] is False:  # a set that does not collide as claimed has no success rate
        metrics["success_rate"] = nan
    if (why := unmixed(attrs)) is not None:
        rhat = attrs["sampler"].get("rhat") if isinstance(attrs.get("sampler"), dict) else None
        metrics.update(dict.fromkeys(SAMPLE_STATISTICS, nan), flags=SET_NOT_MIXED, set_rhat=rhat)
        metrics["invalid_reason"] = metrics["invalid_reason"] or (
            f"the collision set's samples did not mix ({why}): their success rate and distances are withheld")
    store.write_row(row, per_point, {"metrics": metrics}, keep_existing=True)
    return metrics


def unmixed(attrs: dict[str, Any]) -> str | None:
    """Why a points row's sample statistics are withheld: its points are a collision set's
    samples whose chains did not mix (the sampler's reason), or whose row has no record of
    them (written before rows kept one, as an exact row's set without one); None where they stand."""
    sampler = attrs.get("sampler")
    if not isinstance(sampler, dict):
        return "not diagnosed: sampled by an older collide, rerun the row" if attrs.get("method") in SET_SAMPLES \
            else None
    if sampler.get("converged") is True:
        return None
    reason = sampler.get("reason")
    return reason if isinstance(reason, str) and reason else "not diagnosed"


@torch.no_grad()
def verify_points(store: ExperimentStore, row: int, table: dict[str, Any] | None,
                  *, agree: float, trusted: Collection[str] = ()) -> dict[str, Any]:
    """A points row recomputed from its stored points (float64 route of its own).

    Problems: a point beyond its claim, and any table figure (success rate, the largest
    feature error, the mean distance to the target) that the recomputation does not give.
    """
    arrays, attrs = store.read_row(row)
    metrics = attrs.get("metrics")
    if metrics is None:
        return {"row": row, "problems": ["never evaluated"]}
    model = load_model_source(attrs["model_source"], trusted=trusted).eval()
    net = cast_copy(model)
    points = torch.from_numpy(arrays["points"].astype(np.float64))
    target = torch.from_numpy(arrays["target"].astype(np.float64))
    t_post = preactivation(net, target[None], attrs["layer"]).clamp_min(0)
    post = preactivation(net, points, attrs["layer"]).clamp_min(0)
    rel = ((post - t_post).norm(dim=1) / t_post.norm(dim=1)).numpy()
    problems = []
    claim = attrs["claim_rel_error"]
    if claim is not None and (rel > claim + CLAIM_SLACK).any():
        bad = np.flatnonzero(rel > claim + CLAIM_SLACK)
        problems.append(f"points {bad[:10].tolist()} miss the claimed feature error {claim}: "
                        f"{rel[bad[:10]].round(8).tolist()}")
    pred = model(points.float()).argmax(-1).numpy()
    t_class = int(model(target.float()[None]).argmax())
    withheld = unmixed(attrs) is not None  # the stored sampler's record: its statistics are n/a
    recomputed = {
        "max_feature_rel_error": float(rel.max()),
        "mean_distance_to_target": float("nan") if withheld
        else float((points - target).flatten(1).norm(dim=1).mean()) * float(attrs["pixel_scale"]),
        "success_rate": float((pred == t_class).mean()) if not (problems or withheld) else float("nan"),
    }
    for where, stated in [("store", metrics)] + ([("table file", table)] if table is not None else []):
        if withheld:  # each statistic of the points' law: none, wherever it is stated
            shown = [k for k in SAMPLE_STATISTICS if k not in recomputed and not missing(stated.get(k))]
            problems += [f"{k}: {where} {stated[k]!r}, withheld as the set's samples did not mix" for k in shown]
        for key, value in recomputed.items():
            have = stated.get(key)
            have = float("nan") if have is None else float(have)
            if np.isnan(value) or np.isnan(have):  # withheld: both must say so
                ok = bool(np.isnan(value) and np.isnan(have))
            elif key == "success_rate":  # a borderline point may flip under another summation order
                ok = abs(have - value) <= 1 / len(points)
            else:
                ok = abs(have - value) <= agree * max(1.0, abs(value))
            if not ok:
                problems.append(f"{key}: {where} {have!r}, recomputed {value!r}")
    return {"row": row, "counted_points": len(points), "max_feature_rel_error": recomputed["max_feature_rel_error"],
            "success_rate": recomputed["success_rate"], "problems": problems}
