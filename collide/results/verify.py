"""Recompute a table from its store by a second route, and say where they disagree.

For a reader who does not trust the code that wrote the table: every vertex that
carries sample weight is pushed through the recorded model in float64 (its own forward
pass, not the evaluation's), the samples are rebuilt from the stored weights and
classified again, and the row's ``success_rate``, ``max_feature_rel_error``,
``vertex_avg_distance`` and ``valid_vertices`` are compared with what was recomputed.
A weighted vertex that does not collide to its row's criterion is a failure too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collide.models.zoo import load_model_source
from collide.results.store import list_rows, read_row, table_path
from collide.taps import preactivation

# Table values are float64 computations of the same quantities: they must agree to this.
AGREE = 1e-9


def _close(a: Any, b: float) -> bool:
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return bool(np.isnan(b))
    return abs(float(a) - b) <= AGREE * max(1.0, abs(b))


@torch.no_grad()
def verify_row(root: str | Path, experiment: str, row: int, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row recomputed; ``problems`` lists every disagreement (empty: the row holds).

    The recomputed figures are compared with the metrics stored in the row and, given
    ``table`` (the row as ``<experiment>.parquet`` holds it), with the table file too: an
    edited table is caught, not only an edited store."""
    arrays, attrs = read_row(root, experiment, row)
    metrics = attrs.get("metrics")
    if metrics is None:
        return {"row": row, "problems": ["never evaluated"]}
    model = load_model_source(attrs["model_source"]).eval()
    net = copy.deepcopy(model).double()
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
    t_post = preactivation(net, target, attrs["layer"]).clamp_min(0)
    rel = np.full(len(vertices), np.nan)
    if weighted.any():
        post = preactivation(net, torch.from_numpy(vertices[weighted]), attrs["layer"]).clamp_min(0)
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
    return {"row": row, "counted_vertices": int(weighted.sum()), "max_feature_rel_error": expected[
        "max_feature_rel_error"], "success_rate": expected["success_rate"], "problems": problems}


def verify(root: str | Path, experiment: str) -> list[dict[str, Any]]:
    """:func:`verify_row` for every row of the experiment's store, against its table file
    (``<experiment>.parquet``) too; a row the table lacks is a problem of its own."""
    path = table_path(root, experiment)
    table = {int(r["row"]): r for r in pd.read_parquet(path).to_dict("records")} if path.is_file() else {}
    out = []
    for r in list_rows(root, experiment):
        checked = verify_row(root, experiment, r, table.get(r))
        if r not in table:  # the store is still checked against itself
            missing = f"no table file {path.name}" if not table else f"row {r} is missing from {path.name}"
            checked["problems"] = [*checked["problems"], f"{missing}: run `collide tables`"]
        out.append(checked)
    return out
