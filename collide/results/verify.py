"""Recompute a table from its store by a second route, and say where they disagree.

For a reader who does not trust the code that wrote the table: every vertex that
carries sample weight is pushed through the recorded model in float64 (its own forward
pass, not the evaluation's), the samples are rebuilt from the stored weights and
classified again, and the row's ``success_rate``, ``max_feature_rel_error``,
``vertex_avg_distance`` and ``valid_vertices`` are compared with what was recomputed.
A weighted vertex that does not collide to its row's criterion is a failure too. An
exact row's collision set and a scan row's examples have their stored balls checked
against the set rebuilt from the model (every row of it holds on the ball).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from collide.copies import cast_copy
from collide.models.zoo import load_model_source
from collide.piecewise.collision_set import collision_set
from collide.piecewise.linearise import affine_piece
from collide.results.points import flat_rows, is_points_row, verify_points
from collide.results.store import ExperimentStore
from collide.sites import function_of
from collide.taps import preactivation, site_of

# Table values are float64 computations of the same quantities: they must agree to this.
AGREE = 1e-9
# What a point claimed to collide exactly may miss by (its relative feature error in float64).
EXACT_CLAIM = 1e-6
# What a stored ball may cross a row of its set by (HiGHS meets rows to 1e-9).
BALL_SLACK = 1e-8


def _close(a: Any, b: float) -> bool:
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return bool(np.isnan(b))
    return abs(float(a) - b) <= AGREE * max(1.0, abs(b))


@torch.no_grad()
def verify_row(store: ExperimentStore, row: int, table: dict[str, Any] | None = None, *,
               trusted: Collection[str] = ()) -> dict[str, Any]:
    """One row recomputed; ``problems`` lists every disagreement (empty: the row holds).

    The recomputed figures are compared with the metrics stored in the row and, given
    ``table`` (the row as ``<experiment>.parquet`` holds it), with the table file too: an
    edited table is caught, not only an edited store. The model is rebuilt from collide's
    registry; one of the user's own code only when its spec is in ``trusted`` (what the
    caller named with ``--model``): nothing read from the store chooses code to import."""
    arrays, attrs = store.read_row(row)
    if is_points_row(attrs):
        return verify_points(store, row, table, agree=AGREE, trusted=trusted)
    metrics = attrs.get("metrics")
    if metrics is None:
        return {"row": row, "problems": ["never evaluated"]}
    model = load_model_source(attrs["model_source"], trusted=trusted).eval()
    net = cast_copy(model)
    vertices = arrays["vertices"].astype(np.float64)
    weights = arrays.get("sample_weights")
    # The vertices a row's numbers rest on: those with sample weight, or, in a row with
    # no polytope (no samples), those it marks valid.
    if weights is not None:
        weighted = (weights > 0).any(0)
    else:
        weighted = np.asarray(arrays.get("vertex_valid", np.zeros(len(vertices), dtype=bool)), dtype=bool)
    problems = []
    if "vertex_valid" in arrays and (weighted & ~arrays["vertex_valid"]).any():
        problems.append(f"vertices {np.flatnonzero(weighted & ~arrays['vertex_valid']).tolist()} carry "
                        "sample weight but are marked invalid")
    target = torch.from_numpy(arrays["target"].astype(np.float64))[None]
    # The layer's own activation (ReLU, or one that saturates) gives the features.
    site = site_of(net, attrs["layer"], target)
    phi = function_of(site).post
    t_post = phi(preactivation(net, target, site))
    rel = np.full(len(vertices), np.nan)
    if weighted.any():
        post = phi(preactivation(net, torch.from_numpy(vertices[weighted]), site))
        rel[weighted] = ((post - t_post).norm(dim=1) / t_post.norm(dim=1)).numpy()
    tol = attrs.get("criterion", {}).get("rel_tol")
    if tol is not None and (rel[weighted] > tol).any():
        problems.append(f"weighted vertices {np.flatnonzero(rel > tol).tolist()} do not collide: feature "
                        f"errors {rel[rel > tol].round(6).tolist()} > {tol}")
    expected = {
        "valid_vertices": float(weighted.sum()) if weighted.any() else None,
        "max_feature_rel_error": float(np.nanmax(rel)) if weighted.any() else float("nan"),
    }
    if weighted.sum() >= 2:
        good = vertices[weighted]
        pairs = [np.linalg.norm(good[i] - good[j]) for i in range(len(good)) for j in range(i + 1, len(good))]
        expected["vertex_avg_distance"] = float(np.mean(pairs)) * float(attrs.get("pixel_scale", 1.0))
        samples = (weights.astype(np.float64) @ vertices.reshape(len(vertices), -1)).astype(np.float32)
        pred = model(torch.from_numpy(samples).view(len(samples), *vertices.shape[1:])).argmax(-1).numpy()
        t_class = int(model(target.float()).argmax())
        expected["success_rate"] = float((pred == t_class).mean())
    else:
        expected["success_rate"] = float("nan")
    sources = [("store", metrics)] + ([("table file", table)] if table is not None else [])
    for key, value in expected.items():
        if value is None:
            continue
        for where, stated in sources:
            if key == "success_rate":  # float32 sums in another order may flip a borderline sample
                ok = (np.isnan(value) and _close(stated.get(key), value)) or (
                    not np.isnan(value) and abs(float(stated.get(key)) - value) <= 1 / max(1, len(weights)))
            else:
                ok = _close(stated.get(key), value)
            if not ok:
                problems.append(f"{key}: {where} {stated.get(key)!r}, recomputed {value!r}")
    if "region_samples" in arrays:
        problems += _verify_region(net, model, arrays, attrs, sources)
    scan_checks: dict[str, int] = {}
    if "scan_image" in arrays:
        found, scan_checks = _verify_scan(net, model, arrays, attrs)
        problems += found
    return {"row": row, "counted_vertices": int(weighted.sum()), "max_feature_rel_error": expected[
        "max_feature_rel_error"], "rel_tol": tol, "success_rate": expected["success_rate"], "problems": problems,
        **({"counted_region_samples": len(arrays["region_samples"])} if "region_samples" in arrays else {}),
        **scan_checks}


def _verify_region(net: torch.nn.Module, model: torch.nn.Module, arrays: dict[str, np.ndarray],
                   attrs: dict[str, Any], sources: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """An exact row's collision set, rechecked: every stored sample and extreme point
    collides (float64 feature error ≤ :data:`EXACT_CLAIM`), the success rate and width
    follow from them, and the stored ball lies inside the set's rows, rebuilt here from
    the model's affine piece rather than read from the solver."""
    target = torch.from_numpy(arrays["target"].astype(np.float64))
    layer = site_of(net, attrs["layer"], target[None])
    flats = function_of(layer)  # the layer's activation, and its flat pieces below
    t_pre = preactivation(net, target[None], layer)
    t_post = flats.post(t_pre)
    problems = []

    def errors(points: np.ndarray) -> np.ndarray:
        post = flats.post(preactivation(net, torch.from_numpy(points.astype(np.float64)), layer))
        return ((post - t_post).norm(dim=1) / t_post.norm(dim=1)).numpy()

    samples, extremes = arrays["region_samples"], arrays["region_extremes"]
    rel, rel_ext = errors(samples), errors(extremes) if len(extremes) else np.zeros(0)
    for what, values in (("region samples", rel), ("width extreme points", rel_ext)):
        if (values > EXACT_CLAIM).any():
            problems.append(f"{what} {np.flatnonzero(values > EXACT_CLAIM)[:10].tolist()} do not collide exactly: "
                            f"feature errors up to {values.max():.3g} > {EXACT_CLAIM}")
    pred = model(torch.from_numpy(samples)).argmax(-1).numpy()
    t_class = int(model(target.float()[None]).argmax())
    scale = float(attrs.get("pixel_scale", 1.0))
    directions = flat_rows(arrays["region_directions"])
    flat_ext = flat_rows(extremes).astype(np.float64)
    widths = np.einsum("nd,nd->n", directions, flat_ext[0::2] - flat_ext[1::2])
    recomputed = {"region_max_feature_rel_error": float(rel.max()),
                  "region_success_rate": float((pred == t_class).mean()),
                  "region_mean_width": float(widths.mean()) * scale if len(widths)
                  else 0.0 if attrs["geometry"]["dim"] == 0 else float("nan"),
                  "region_mean_width_se": float(widths.std(ddof=1) / np.sqrt(len(widths))) * scale
                  if len(widths) > 1 else float("nan")}
    for where, stated in sources:
        for key, value in recomputed.items():
            tol = 1 / len(samples) if key == "region_success_rate" else AGREE * max(1.0, abs(value))
            if key == "region_mean_width_se" and (key not in stated or np.isnan(value)):
                continue  # a row evaluated before the column existed, or one direction: no error bar
            if np.isnan(value):  # no widths measured (geometry.sizes_only): none may be stated
                if stated.get(key) is not None and not np.isnan(float(stated[key])):  # JSON keeps NaN as null
                    problems.append(f"{key}: {where} {stated.get(key)!r}, but the row measured no widths")
                continue
            if stated.get(key) is None or abs(float(stated[key]) - value) > tol:
                problems.append(f"{key}: {where} {stated.get(key)!r}, recomputed {value!r}")
    # The ball: every row a·x ≤ b of the set holds on it iff a·c + r‖Bᵀa‖ ≤ b.
    cs = _set_of(model, layer, target, t_pre, flats, attrs["geometry"]["box"])
    center = arrays["region_center"].reshape(-1).astype(np.float64)
    return problems + [f"the stored inscribed ball {p}" for p in _ball_in_set(cs, center,
                                                                             float(attrs["geometry"]["radius"]))]


def _set_of(model: torch.nn.Module, layer: Any, target: torch.Tensor, t_pre: torch.Tensor, flats: Any,
            box: Sequence[float]) -> Any:
    """``target``'s collision set at ``layer`` in ``box``, from ``model``'s affine piece there."""
    piece = affine_piece(model, layer, target.float())
    return collision_set([(piece, t_pre[0].numpy())], target.flatten().numpy(), lower=box[0], upper=box[1],
                         max_entries=2**62, flats=[flats.at(0.0)])


def _ball_in_set(cs: Any, center: np.ndarray, radius: float) -> list[str]:
    """What keeps the ball of ``center`` and ``radius`` (within the equality subspace)
    from lying in the set ``cs``: none when it does."""
    a_all, b_all = cs.all_rows()
    reach = np.linalg.norm(a_all @ cs.basis, axis=1)
    over = a_all @ center + radius * reach - b_all
    problems = []
    if (over > BALL_SLACK * (1 + np.abs(b_all))).any():
        problems.append(f"(radius {radius:.6g}) crosses {int((over > 0).sum())} rows of the collision set, by up "
                        f"to {over.max():.3g}")
    off = np.abs(cs.equalities @ (center - cs.origin)).max(initial=0.0)
    if off > BALL_SLACK:
        problems.append(f"(radius {radius:.6g}) has its centre off the equality subspace by {off:.3g}")
    return problems


def _verify_scan(net: torch.nn.Module, model: torch.nn.Module, arrays: dict[str, np.ndarray],
                 attrs: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """A scan's stored sizes, rechecked for every example around its stored image
    (``scan_image``): its gradient vertices (:func:`_scan_vertices`) where the row keeps
    them, and its ball where it has an exact set (:func:`_scan_balls`). Returns the
    problems and how many examples' vertices and balls were checked."""
    images = arrays["scan_image"].astype(np.float64)
    # One layer for every example: its site depends on the input's shape, not its values.
    layer = site_of(net, attrs["layer"], torch.from_numpy(images[:1]))
    problems, checked = [], {}
    if "scan_vertices" in arrays:
        found, checked["checked_scan_vertices"] = _scan_vertices(net, layer, images, arrays, attrs)
        problems += found
    if "scan_center" in arrays:
        found, checked["checked_scan_balls"] = _scan_balls(net, model, layer, images, arrays, attrs)
        problems += found
    return problems, checked


def _scan_vertices(net: torch.nn.Module, layer: Any, images: np.ndarray, arrays: dict[str, np.ndarray],
                   attrs: dict[str, Any]) -> tuple[list[str], int]:
    """Each example's valid vertices and spread, recomputed from its stored gradient
    vertices (``scan_vertices``, ``scan_vertex_valid``): those marked valid collide with
    its image within the criterion's ``rel_tol`` in float64, there are
    ``scan_valid_vertices`` of them, and their mean pairwise distance is ``scan_spread``."""
    phi = function_of(layer).post
    tol = attrs.get("criterion", {}).get("rel_tol")
    problems = []
    for k in range(len(images)):
        example = int(arrays["scan_example"][k])
        good = arrays["scan_vertices"][k][arrays["scan_vertex_valid"][k]].astype(np.float64)
        stated = float(arrays["scan_valid_vertices"][k])
        if len(good) != stated:
            problems.append(f"example {example}: scan_valid_vertices {stated:g}, but {len(good)} of its stored "
                            "vertices are marked valid")
        if len(good):
            t_post = phi(preactivation(net, torch.from_numpy(images[k])[None], layer))
            post = phi(preactivation(net, torch.from_numpy(good), layer))
            rel = ((post - t_post).norm(dim=1) / t_post.norm(dim=1)).numpy()
            if tol is not None and (rel > tol).any():
                problems.append(f"example {example}: valid vertices {np.flatnonzero(rel > tol).tolist()} do not "
                                f"collide: feature errors {rel[rel > tol].round(6).tolist()} > {tol}")
        flat = good.reshape(len(good), -1)
        spread = (float(np.mean([np.linalg.norm(flat[i] - flat[j]) for i in range(len(flat))
                                 for j in range(i + 1, len(flat))])) if len(flat) >= 2 else float("nan"))
        if not _close(float(arrays["scan_spread"][k]), spread):
            problems.append(f"example {example}: scan_spread {float(arrays['scan_spread'][k])!r}, recomputed "
                            f"{spread!r}")
    return problems, len(images)


def _scan_balls(net: torch.nn.Module, model: torch.nn.Module, layer: Any, images: np.ndarray,
                arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> tuple[list[str], int]:
    """Every example with an exact set: its ball (``scan_center``, ``scan_radius``) lies
    in the collision set rebuilt around its image, and ``scan_dim`` is not above the
    set's equality subspace's dimension. A set whose dimension is below that (some rows
    hold with equality all over it: its ball lies in a flat the referee does not rebuild)
    has only its dimension checked."""
    problems, checked = [], 0
    centers = arrays["scan_center"]
    flats = function_of(layer)
    for k in np.flatnonzero(np.isfinite(arrays["scan_radius"])):
        target = torch.from_numpy(images[k])
        cs = _set_of(model, layer, target, preactivation(net, target[None], layer), flats, attrs["scan_box"])
        example, dim = int(arrays["scan_example"][k]), int(arrays["scan_dim"][k])
        if dim > cs.free_dim:
            problems.append(f"example {example}: scan_dim {dim} is above its set's subspace dimension {cs.free_dim}")
        elif dim == cs.free_dim:
            problems += [f"example {example}: the stored ball {p}"
                         for p in _ball_in_set(cs, centers[k], float(arrays["scan_radius"][k]))]
            checked += 1
    return problems, checked


def verify(store: ExperimentStore, *, trusted: Collection[str] = ()) -> list[dict[str, Any]]:
    """:func:`verify_row` for every row of the experiment's store, against its table file
    (``<experiment>.parquet``) too, in both directions: a store row the table lacks and a
    table row the store lacks are problems of their own. Entries of the store that are not
    rows (a ``note``, skipped, no problem) and damaged root metadata (a problem) come back
    as entries with ``row`` None and ``what``.
    ``trusted``: the user's own model specs the caller named (``--model``)."""
    path = store.table_path
    table = {int(r["row"]): r for r in store.read_table().to_dict("records")} if path.is_file() else {}
    out: list[dict[str, Any]] = []
    damage = store.damage()
    if damage is not None:
        out.append({"row": None, "what": "store",
                    "problems": [f"{damage}: rerun the experiment, which rewrites it"]})
    strays = store.strays()
    if strays:
        # Not a disagreement (no row is read from them): named, so that nothing is skipped silently.
        out.append({"row": None, "what": "entries", "note": store.stray_text(strays), "problems": []})
    rows = store.rows()
    for r in rows:
        checked = verify_row(store, r, table.get(r), trusted=trusted)
        if r not in table:  # the store is still checked against itself
            missing = f"no table file {path.name}" if not table else f"row {r} is missing from {path.name}"
            checked["problems"] = [*checked["problems"], f"{missing}: run `collide tables`"]
        out.append(checked)
    for r in sorted(set(table) - set(rows)):
        gone = (f"{path.name} lists row {r}, but {store.path.name} has no row-{r}: "
                f"{store.rerun_hint()}, which recomputes it (or `collide tables` to drop it from the table)")
        out.append({"row": r, "missing": True, "problems": [gone]})
    return out
