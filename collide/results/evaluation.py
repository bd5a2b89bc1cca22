"""Evaluating stored polytopes, for any experiment.

Everything needed is in the row group: the vertices and target, and in the attrs the
model source (verified by hash), the layer, the dataset's average distance and the
pixel scale that distances are reported in.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import torch

from collide.api import check_polytope, measure
from collide.config import SampleConfig
from collide.errors import DataError
from collide.models.zoo import load_model_source
from collide.precision import full_precision
from collide.results.cells import SET_NOT_MIXED
from collide.results.points import evaluate_points, flat_rows, is_points_row, point_metrics, spread
from collide.results.store import ExperimentStore
from collide.validity import Criterion

SAMPLE_ARRAYS = ("sample_weights", "sample_pred", "sample_prob")
# A target whose top class is below this multiple of chance means the model tells
# nothing apart (random weights): its "success" says nothing about collisions.
UNINFORMATIVE = 2.0

# The flag of a row whose hull samples miss its method's criterion.
HULL_NOT_COLLISION = "hull-not-collision"

# Row attrs copied into the table as they are, when present.
_PASS_THROUGH = (
    "init", "loss", "target_index", "init_index", "test_accuracy", "weights", "knn_recall", "knn_k",
    "n_patches", "index_build_seconds", "knn_query_seconds", "exact_query_seconds", "target_path", "init_path",
    "knn_queries", "target_weight_share", "mean_distance_to_start_all", "mean_distance_to_target_all", "paper_lr",
    "arch", "depth", "dataset", "data_digest", "checkpoint_origin", "scan_rank_by",
    # What tells one run's rows apart where method and init do not (cells.run_lines).
    "activation", "saturation_tol", "penalty", "seed",
)


def evaluate_row(
    store: ExperimentStore, row: int, *, sample: SampleConfig, device: str = "cpu",
    trusted: Collection[str] = (),
) -> dict[str, Any]:
    """Check the row's vertices, sample the polytope of the valid ones, classify, store.

    Only vertices that meet their method's criterion (``attrs["criterion"]``, checked in
    float64 by :func:`collide.validity.check_vertices`) carry sample weight; the others
    stay in the store, marked by ``vertex_valid``. With fewer than two valid vertices
    there is no polytope: the success rate and sample columns are NaN and
    ``invalid_reason`` says why. ``trusted``: the user's own model specs the caller named
    (a run passes its config's); any other such model the row names is refused
    (:func:`collide.models.zoo.load_model_source`).

    Returns:
        The row's table record (the storage contract's columns and more).
    """
    arrays, attrs = store.read_row(row)
    if is_points_row(attrs):
        return evaluate_points(store, row, device=device, trusted=trusted)
    if "criterion" not in attrs:
        raise DataError(f"row {row} of {store.name} was solved by an older collide that recorded no vertex "
                        "criterion: rerun the experiment to recompute it")
    with full_precision():  # TF32 errors are near the 1e-2 criterion
        return _evaluate(store, row, arrays, attrs, sample=sample, device=device, trusted=trusted)


@torch.no_grad()
def _evaluate(
    store: ExperimentStore, row: int, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
    *, sample: SampleConfig, device: str, trusted: Collection[str],
) -> dict[str, Any]:
    model = load_model_source(attrs["model_source"], trusted=trusted).to(device).eval()
    vertices = torch.from_numpy(arrays["vertices"])
    target = torch.from_numpy(arrays["target"])
    init = torch.from_numpy(arrays["init"])
    layer, solver = attrs["layer"], attrs["solver"]
    criterion = Criterion.from_dict(attrs["criterion"])
    poly = check_polytope(model, layer, vertices, target, init, torch.tensor(attrs["units"]), method=attrs["method"],
                          criterion=criterion, solver=solver, device=device)
    m = measure(model, layer, poly, n_samples=sample.n_samples, sampler=sample.sampler, seed=sample.seed + row,
                device=device)
    valid, n_valid, n_all = poly.valid, poly.n_valid, len(vertices)
    finite = torch.isfinite(vertices.flatten(1)).all(1)
    scale = float(attrs.get("pixel_scale", 1.0))
    nan = float("nan")
    reason = m.invalid_reason
    sampled = {} if reason else {
        "sample_weights": m.weights.numpy().astype(np.float32),  # type: ignore[union-attr]
        "sample_pred": m.sample_pred.numpy().astype(np.int64),  # type: ignore[union-attr]
        "sample_prob": m.sample_prob.numpy().astype(np.float32),  # type: ignore[union-attr]
    }
    flags = []
    if attrs["model_source"].get("random"):
        flags.append("random-weights")
    if m.target_top_prob < UNINFORMATIVE / m.n_classes:
        flags.append("uninformative-model")
    # Past a first layer the hull of colliding vertices can leave the collision set: its
    # samples then miss the method's criterion, and the success rate measures the hull.
    collides = m.hull_collides
    if collides is False:
        flags.append(HULL_NOT_COLLISION)
    metrics: dict[str, Any] = {
        "experiment": store.name,
        "row": row,
        "method": attrs["method"],
        "model": attrs["model"],
        "layer": layer,
        "n_vertices": n_all,
        "n_samples": m.n_samples,
        "success_rate": m.success_rate,
        "target_top_prob": m.target_top_prob,
        "samples_top_prob": m.samples_top_prob,
        # null in the attrs where there was no dataset to measure (one image): NaN in the table
        "dataset_avg_distance": float(attrs["dataset_avg_distance"] if attrs["dataset_avg_distance"] is not None
                                      else nan),
        "vertex_avg_distance": m.vertex_avg_distance * scale,
        # the pairs that spread averages: 2 valid vertices of 5 give it from one pair (issue §7)
        "vertex_pairs": n_valid * (n_valid - 1) // 2,
        "max_feature_rel_error": m.max_feature_rel_error,
        "valid_vertices": n_valid,
        "converged": solver["converged"] if attrs["method"] != "exact" else None,
        # which points an exact row holds: 0, each unit's minimum over the collision set (its extreme
        # points); > 0, vertices pulled toward the init and short of that minimum (issue §7)
        "exact_proximity": _exact_proximity(attrs),
        "criterion": criterion.describe(),
        "invalid_reason": reason,
        "flags": ",".join(flags),
        "max_feature_rel_error_all": float(poly.rel_error[finite].max()) if bool(finite.any()) else nan,
        "max_nonpositive": float(poly.violation[valid].max()) if n_valid else nan,
        "samples_max_feature_rel_error": m.samples_max_feature_rel_error,
        "hull_collides": collides,
        "vertices_in_target_class": m.vertices_in_target_class,
        "pushed_below_target": float((poly.target_pushed - poly.pushed)[valid].mean()) if n_valid else nan,
        "mean_distance_to_init": float(_distances(vertices, init)[valid].mean()) * scale if n_valid else nan,
        "mean_distance_to_target": float(_distances(vertices, target)[valid].mean()) * scale if n_valid else nan,
        **({"mean_distance_to_start": float(_distances(vertices, torch.from_numpy(arrays["start"]))[valid].mean())
            * scale if n_valid else nan} if "start" in arrays else {}),
        "sampler": sample.sampler,
        "target_class": m.target_class,
        "pixel_scale": scale,
        "model_sha256": attrs["model_source"].get("sha256", ""),
        "random_weights": bool(attrs["model_source"].get("random", False)),
        "solver_seconds": solver["seconds"],
        "outcomes": ",".join(solver["outcomes"]),
        "input_dim": solver.get("input_dim", int(target.numel())),
        "n_positive": solver.get("n_positive", -1),
        "rank_positive": solver.get("rank_positive", -1),
        "dim_upper_bound": solver.get("dim_upper_bound", -1),
        "config_digest": attrs["config_digest"],
    }
    metrics.update({k: attrs[k] for k in _PASS_THROUGH if k in attrs})
    if not reason:
        # Invalid vertices have weight 0 but may be NaN (an LP with no solution).
        hull = (m.weights @ torch.nan_to_num(vertices.double()).flatten(1)).view(  # type: ignore[operator]
            -1, *vertices.shape[1:])
        metrics.update({"hull_mean_distance_to_target": float(_distances(hull, target).mean()) * scale,
                        "hull_spread": spread(hull) * scale})
    region_arrays: dict[str, np.ndarray] = {}
    if "region_samples" in arrays:
        region, region_arrays = _region(model, layer, arrays, attrs, target, init, scale=scale, device=device)
        good = vertices[valid].double().flatten(1).numpy()
        directions = flat_rows(arrays["region_directions"])
        region["hull_mean_width"] = float((
            (good @ directions.T).max(0) - (good @ directions.T).min(0)).mean()) * scale if n_valid and len(
            directions) else float("nan")
        metrics.update(region)
        mixed = region.get("region_converged")
        if mixed is not None and not mixed:  # its sample statistics are withheld: say so everywhere
            metrics["flags"] = ",".join([*filter(None, metrics["flags"].split(",")), SET_NOT_MIXED])
    per_vertex = {
        "vertex_valid": valid.numpy(),
        "vertex_rel_error": poly.rel_error.numpy(),
        "vertex_violation": poly.violation.numpy(),
        "pushed_value": poly.pushed.numpy(),
        "target_pushed_value": poly.target_pushed.numpy(),
        "distance_to_init": _distances(vertices, init).numpy(),
        "distance_to_target": _distances(vertices, target).numpy(),
    }
    store.write_row(
        row, {**per_vertex, **sampled, **region_arrays},
        {"target_class": m.target_class, "vertex_reasons": list(poly.reasons), "push_margin_value": poly.margin,
         "metrics": metrics},
        keep_existing=True, drop=() if sampled else SAMPLE_ARRAYS,
    )
    return metrics


def _exact_proximity(attrs: dict[str, Any]) -> float:
    """An exact row's ``ExactConfig.proximity`` from its stored config; NaN for other methods
    (and for an exact row whose config has no ``exact`` section)."""
    exact = attrs.get("config", {}).get("exact") if attrs["method"] == "exact" else None
    return float(exact["proximity"]) if isinstance(exact, dict) and "proximity" in exact else float("nan")


def region_widths(directions: np.ndarray, extremes: np.ndarray) -> np.ndarray:
    """Each direction's width between its two extreme points (maximiser, minimiser).
    Shapes: directions (w, d); extremes (2w, d) -> (w,)"""
    return np.einsum("nd,nd->n", directions, extremes[0::2] - extremes[1::2])


def _region(model: torch.nn.Module, layer: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
            target: torch.Tensor, init: torch.Tensor, *, scale: float, device: str,
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The columns of an exact row's collision set: its geometry as solved, and how the
    model sees its stored samples (each claimed to collide exactly).

    The certified sizes are always given: the radius, and the mean width over directions
    uniform on the set's hull with its standard error (std/√n over the directions). The
    sample statistics (mean distance to the target, mean pairwise distance) are the
    sampler's estimates with their Monte Carlo standard errors, given only where every
    reported statistic converged (R̂ ≤ 1.01, ESS ≥ 400 by default); else NaN and
    ``region_sampler_reason`` says why. A set sampled by a collide that did not diagnose
    convergence reports NaN too."""
    found, per_point = point_metrics(model, layer, torch.from_numpy(arrays["region_samples"]), target, init,
                                     claim=0.0, scale=scale, device=device)
    geometry = attrs["geometry"]
    sampler = geometry["sampler"]
    directions = flat_rows(arrays["region_directions"]).astype(np.float64)
    extremes = flat_rows(arrays["region_extremes"]).astype(np.float64)
    widths = region_widths(directions, extremes) * scale
    nan = float("nan")
    converged = bool(sampler.get("converged", False))
    reason = sampler.get("reason", "not diagnosed: sampled by an older collide, rerun the row") if not converged \
        else ""

    def estimate(key: str) -> float:
        value = sampler.get(key)
        return float(value) * scale if converged and value is not None else nan

    columns = {
        # No widths: a point's width is 0; a larger set measured for its sizes only has none.
        "region_mean_width": float(widths.mean()) if len(widths) else 0.0 if geometry["dim"] == 0 else nan,
        "region_mean_width_se": float(widths.std(ddof=1) / np.sqrt(len(widths))) if len(widths) > 1 else nan,
        "region_n_directions": len(widths),
        "region_dim": geometry["dim"], "region_dim_method": geometry["dim_method"],
        "region_radius": geometry["radius"] * scale, "region_free_dim": geometry["free_dim"],
        "region_n_samples": found["n_samples"], "region_success_rate": found["success_rate"],
        "region_max_feature_rel_error": found["max_feature_rel_error"],
        "region_claim_met": found["claim_met"],
        "region_mean_distance_to_target": estimate("mean_distance_to_target"),
        "region_mean_distance_to_target_mcse": estimate("mean_distance_to_target_mcse"),
        "region_max_distance_to_target": found["max_distance_to_target"],
        "region_spread": estimate("mean_pairwise_distance"),
        "region_spread_mcse": estimate("mean_pairwise_distance_mcse"),
        "region_converged": converged,
        "region_sampler_reason": reason,
        # NaN is stored as null in the attrs' JSON
        "region_rhat": float(sampler.get("rhat") if sampler.get("rhat") is not None else nan),
        "region_ess": float(sampler.get("ess") if sampler.get("ess") is not None else nan),
        "region_sampler": sampler.get("sampler", ""),
        "region_sampler_draws": sampler.get("draws", sampler.get("steps")),
        "region_seconds": geometry["seconds"],
    }
    if found["claim_met"] is False:  # samples that do not collide give no success rate
        columns["region_success_rate"] = float("nan")
    return columns, {f"region_{k.removeprefix('point_')}": v for k, v in per_point.items()}


def _distances(vertices: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """L2 distance of each vertex to ``point``, in float64. (V, *input), (*input) -> (V,)"""
    return (vertices.double() - point.double()).flatten(1).norm(dim=1)
