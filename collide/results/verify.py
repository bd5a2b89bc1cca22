"""Recompute a table from its store by a second route, and say where they disagree.

For a reader who does not trust the code that wrote the table: every vertex that
carries sample weight is pushed through the recorded model in float64 (its own forward
pass, not the evaluation's), the samples are rebuilt from the stored weights and
classified again, and the row's ``success_rate``, ``max_feature_rel_error``,
``vertex_avg_distance`` and ``valid_vertices`` are compared with what was recomputed.
A weighted vertex that does not collide to its row's criterion is a failure too. An
exact row's collision set and a scan row's examples have their stored balls and
dimensions checked against the set rebuilt from the model: every row of it holds on
the ball, and a flat set's pinned rows have the rank its dimension says and hold with
equality all over it by their stored certificate (:func:`flat_claim`). A dimension with
no certificate is reported as not certified, which is not a disagreement.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from collide.copies import cast_copy
from collide.models.zoo import load_model_source
from collide.piecewise.collision_set import collision_set, moving_rows
from collide.piecewise.linearise import affine_piece
from collide.piecewise.row_space import rank_of
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
# How far (input units) a flat set's pinned rows may be shown to miss equality anywhere
# on it, by the bound their stored certificate gives (:func:`flat_claim`); the MNIST
# sets' certificates bound it by about 1e-12.
FLAT_CLAIM = 1e-6
# A ball certifies the dimension of the flat it lies in only where its centre has this
# much room (input units) to every face, measured with no tolerance.
CERTIFYING_RADIUS = 1e-7


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
    region: dict[str, Any] = {}
    if "region_samples" in arrays:
        found, region["region_dim_certified"] = _verify_region(net, model, arrays, attrs, sources)
        problems += found
    scan_checks: dict[str, int] = {}
    if "scan_image" in arrays:
        found, scan_checks = _verify_scan(net, model, arrays, attrs)
        problems += found
    return {"row": row, "counted_vertices": int(weighted.sum()), "max_feature_rel_error": expected[
        "max_feature_rel_error"], "rel_tol": tol, "success_rate": expected["success_rate"], "problems": problems,
        **({"counted_region_samples": len(arrays["region_samples"])} if "region_samples" in arrays else {}),
        **region, **scan_checks}


def _verify_region(net: torch.nn.Module, model: torch.nn.Module, arrays: dict[str, np.ndarray],
                   attrs: dict[str, Any], sources: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], bool]:
    """An exact row's collision set, rechecked: every stored sample and extreme point
    collides (float64 feature error ≤ :data:`EXACT_CLAIM`), the success rate and width
    follow from them, and the stored ball and dimension hold against the set's rows,
    rebuilt here from the model's affine piece rather than read from the solver
    (:func:`flat_claim`). Returns the problems and whether the dimension is certified."""
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
    cs = _set_of(model, layer, target, t_pre, flats, attrs["geometry"]["box"])
    center = arrays["region_center"].reshape(-1).astype(np.float64)
    claimed, certified = flat_claim(cs, int(attrs["geometry"]["dim"]), arrays.get("region_pinned"),
                                    arrays.get("region_pinned_weights"), center, float(attrs["geometry"]["radius"]))
    return problems + claimed, certified


def _set_of(model: torch.nn.Module, layer: Any, target: torch.Tensor, t_pre: torch.Tensor, flats: Any,
            box: Sequence[float]) -> Any:
    """``target``'s collision set at ``layer`` in ``box``, from ``model``'s affine piece there."""
    piece = affine_piece(model, layer, target.float())
    return collision_set([(piece, t_pre[0].numpy())], target.flatten().numpy(), lower=box[0], upper=box[1],
                         max_entries=2**62, flats=[flats.at(0.0)])


def _ball_in_set(cs: Any, center: np.ndarray, radius: float, basis: np.ndarray | None = None,
                 pinned: np.ndarray | None = None) -> tuple[list[str], float]:
    """What keeps the ball of ``center`` and ``radius`` (within the flat ``cs.origin +
    span(basis)``, the equality subspace by default) from lying in the set ``cs`` (none
    when it does), and the room the centre has: its least distance, within the flat, to
    a face of a row that moves there (0 where it misses one), which a ball of any radius
    below fits in exactly, with no tolerance. ``pinned``: rows of :meth:`all_rows` the
    flat holds with equality, which the centre meets and the ball does not cross."""
    a_all, b_all = cs.all_rows()
    basis = cs.basis if basis is None else basis
    # Every row a·x ≤ b of the set holds on the ball iff a·c + r‖basisᵀa‖ ≤ b.
    reach = np.linalg.norm(a_all @ basis, axis=1)
    gap = b_all - a_all @ center
    over = radius * reach - gap
    problems = []
    if (over > BALL_SLACK * (1 + np.abs(b_all))).any():
        problems.append(f"(radius {radius:.6g}) crosses {int((over > 0).sum())} rows of the collision set, by up "
                        f"to {over.max():.3g}")
    off = np.abs(cs.equalities @ (center - cs.origin)).max(initial=0.0)
    if off > BALL_SLACK:
        problems.append(f"(radius {radius:.6g}) has its centre off the equality subspace by {off:.3g}")
    if pinned is not None and len(pinned):
        below = float(gap[pinned].max())
        if below > BALL_SLACK * (1 + np.abs(b_all[pinned]).max()):
            problems.append(f"(radius {radius:.6g}) has its centre off a pinned row by {below:.3g}")
    moves = moving_rows(a_all, reach)
    # A row that does not move on the flat holds on all of it or none: the pinned ones the
    # centre meets to rounding (checked above), any other it must meet outright.
    still = ~moves
    if pinned is not None:
        still[pinned] = False
    room = float((gap[moves] / reach[moves]).min(initial=np.inf)) if (gap[still] >= 0).all() else 0.0
    return problems, max(room, 0.0)


def flat_claim(cs: Any, dim: int, pinned: np.ndarray | None, weights: np.ndarray | None, center: np.ndarray,
               radius: float) -> tuple[list[str], bool]:
    """A set's stored dimension and ball against ``cs``, rebuilt from the model: what is
    wrong with them (none: they hold), and whether the dimension is certified.

    The ball must lie in the set, within the flat its pinned rows leave where it has them
    (its centre in the set where it has none). Its dimension ``dim`` is certified from
    below by the room its centre has within that flat (:func:`_ball_in_set`) above
    :data:`CERTIFYING_RADIUS`: that is a ball of ``dim`` dimensions inside the set with
    no tolerance. It is certified from above, where it is below the subspace's ``k =
    cs.free_dim``, by the rows ``pinned`` (indices into :meth:`all_rows`) and their
    ``weights`` (each ≥ 1): with ``ĝᵢ`` a pinned row on the subspace at unit reach and
    ``sᵢ`` its slack at the target t in input units, every point x = t + Bz of the set
    has ``Σ wᵢ (aᵢx − bᵢ)/‖aᵢB‖ = (Σ wᵢĝᵢ)·z − Σ wᵢsᵢ``, a sum of terms ≤ 0, so no pinned
    row's slack anywhere on the set exceeds ``‖Σ wᵢĝᵢ‖·R + Σ wᵢ|sᵢ|`` (R: the box's
    farthest point from t), which must be at most :data:`FLAT_CLAIM`; their rank on the
    subspace (at unit reach, the project's cut-off) must be ``k − dim``. The set then
    lies within that bound of each pinned face, and so, by the rows' least singular
    value, near a flat of ``dim`` dimensions. A dimension below k without a certificate
    (found by zero widths along random directions, or by Fukuda's rounds where no LP gave
    one, or stored before certificates were kept) is checked as far as it can be and not
    certified."""
    k = cs.free_dim
    if not (np.isfinite(radius) and np.isfinite(center).all()):
        return [f"its ball is not finite (radius {radius!r}, centre finite: {bool(np.isfinite(center).all())})"], False
    if dim > k:
        return [f"dimension {dim} is above its set's subspace dimension {k}"], False
    if dim == k:
        found, room = _ball_in_set(cs, center, radius)
        return [f"the stored inscribed ball {p}" for p in found], not found and room > CERTIFYING_RADIUS
    if pinned is None:
        found, _ = _ball_in_set(cs, center, 0.0)
        return [f"the stored inscribed ball's centre {p}" for p in found], False
    a_all, b_all = cs.all_rows()
    if not np.issubdtype(np.asarray(pinned).dtype, np.integer):
        return [f"its pinned rows are stored as {np.asarray(pinned).dtype}, not as row indices"], False
    pinned = np.asarray(pinned, dtype=np.int64)
    if not len(pinned) or pinned.min() < 0 or pinned.max() >= len(b_all):
        return [f"its pinned rows are not rows of its set ({len(pinned)} rows, {len(b_all)} in the set)"], False
    g = a_all[pinned] @ cs.basis
    reach = np.linalg.norm(g, axis=1)
    if not moving_rows(a_all[pinned], reach).all():
        return [f"pinned rows {pinned[~moving_rows(a_all[pinned], reach)][:10].tolist()} are constant on the "
                "subspace"], False
    unit = g / reach[:, None]
    _, sv, vt = np.linalg.svd(unit, full_matrices=True)
    rank = rank_of(sv, (len(sv), k))
    problems = []
    if k - rank != dim:
        problems.append(f"its pinned rows have rank {rank} on its {k}-dimensional subspace: dimension {k - rank}, "
                        f"not {dim}")
    certified = False
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        slack = (b_all[pinned] - a_all[pinned] @ cs.origin) / reach
        if len(weights) != len(pinned) or not weights.min() >= 1 - 1e-12:
            problems.append("its certificate's weights are not one per pinned row, each at least 1")
        elif slack.min() < -BALL_SLACK:
            problems.append(f"the target misses a pinned row by {-slack.min():.3g}")
        else:
            far = np.linalg.norm(np.maximum(cs.upper - cs.origin, cs.origin - cs.lower))
            bound = float(np.linalg.norm(unit.T @ weights) * far + (weights * np.abs(slack)).sum())
            if not bound <= FLAT_CLAIM:
                problems.append(f"its certificate bounds the pinned rows' slack over the set only by {bound:.3g} > "
                                f"{FLAT_CLAIM:g}")
            certified = not problems
    # The flat the pinned rows leave (a point where they leave none): the ball lies in it.
    found, room = _ball_in_set(cs, center, radius, cs.basis @ vt[rank:].T, pinned)
    problems += [f"the stored inscribed ball {p}" for p in found]
    if dim == 0 and radius > CERTIFYING_RADIUS:
        problems.append(f"one point has the radius {radius:.6g}")
    certified = certified and (dim == 0 or room > CERTIFYING_RADIUS)
    return problems, certified and not problems


def _verify_scan(net: torch.nn.Module, model: torch.nn.Module, arrays: dict[str, np.ndarray],
                 attrs: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """A scan's stored sizes, rechecked for every example around its stored image
    (``scan_image``): its gradient vertices (:func:`_scan_vertices`) where the row keeps
    them, and its ball and dimension where it has an exact set (:func:`_scan_balls`).
    Returns the problems and how many examples' vertices and balls were checked and
    dimensions certified."""
    images = arrays["scan_image"].astype(np.float64)
    # One layer for every example: its site depends on the input's shape, not its values.
    layer = site_of(net, attrs["layer"], torch.from_numpy(images[:1]))
    problems, checked = [], {}
    if "scan_vertices" in arrays:
        found, checked["checked_scan_vertices"] = _scan_vertices(net, layer, images, arrays, attrs)
        problems += found
    if "scan_center" in arrays:
        found, counted = _scan_balls(net, model, layer, images, arrays, attrs)
        problems += found
        checked.update(counted)
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
                arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """Every example with an exact set: its ball (``scan_center``, ``scan_radius``) and
    its dimension (``scan_dim``, with its pinned rows and their certificate where the set
    is flat: ``scan_pinned``, ``scan_pinned_weights``, ``scan_pinned_count``) hold against
    the collision set rebuilt around its image (:func:`flat_claim`). Returns the problems
    and how many examples' balls were checked and dimensions certified."""
    problems, checked, certified = [], 0, 0
    centers = arrays["scan_center"]
    flats = function_of(layer)
    counts = arrays.get("scan_pinned_count", np.full(len(images), -1))
    starts = np.r_[0, np.cumsum(np.maximum(counts, 0))]
    for k in np.flatnonzero(np.isfinite(arrays["scan_radius"])):
        target = torch.from_numpy(images[k])
        cs = _set_of(model, layer, target, preactivation(net, target[None], layer), flats, attrs["scan_box"])
        pinned = weights = None
        if counts[k] >= 0:
            pinned = arrays["scan_pinned"][starts[k]:starts[k + 1]]
            weights = arrays["scan_pinned_weights"][starts[k]:starts[k + 1]]
            weights = None if np.isnan(weights).all() else weights
        found, sure = flat_claim(cs, int(arrays["scan_dim"][k]), pinned, weights, centers[k],
                                 float(arrays["scan_radius"][k]))
        problems += [f"example {int(arrays['scan_example'][k])}: {p}" for p in found]
        checked += 1
        certified += sure
    return problems, {"checked_scan_balls": checked, "certified_scan_dims": certified}


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
