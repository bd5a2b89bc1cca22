"""An experiment's own figure, ``<name>-vertices.png``: which rows it shows and how each is labelled.

Targets, inits and vertices of the first :data:`FIGURE_ROWS` rows (the paper's Tables 1,
3, 5), drawn by :func:`collide.results.figures.vertex_grid` from the store alone.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from collide.results.cells import flag_text, missing, pairs_text, row_flags, success_text, valid_text
from collide.results.figures import vertex_grid
from collide.results.reference import reference_for
from collide.results.store import ExperimentStore, is_points_row

FIGURE_ROWS = 16  # a figure of more polytopes than this is too tall to read
POINTS_SHOWN = 5  # the first points of a points row, as many as the paper shows vertices


def row_label(row: int, attrs: dict[str, Any]) -> str:
    """Method, init, valid vertices, success (or why none) and the paper's row, if any."""
    metrics = attrs.get("metrics", {})
    if is_points_row(attrs):
        return _points_label(row, attrs, metrics)
    head = f"row {row}: {attrs.get('method', '?')}, init={attrs.get('init', '?')}"
    if attrs.get("target_index") is not None and attrs.get("config", {}).get("targets_per_class"):
        head += f" t={attrs['target_index']}"
    lines = [head]
    if metrics:
        # The full reason is in the table and report; the label only has room for the gist.
        if missing(metrics.get("success_rate")):
            lines.append(f"valid {valid_text(metrics)}: no success rate")
        else:
            lines.append(f"valid {valid_text(metrics)}, success rate {success_text(metrics)}")
        dist, err = metrics.get("vertex_avg_distance"), metrics.get("max_feature_rel_error_all")
        lines.append(f"dist {'n/a' if missing(dist) else format(dist, '.3g') + pairs_text(metrics)}, "
                     f"err {'n/a' if missing(err) else format(err, '.1e')}")
    reference = reference_for({**attrs, **metrics})
    if reference is not None:
        lines.append(f"{reference.name}: {reference.success_rate:.0%}, dist {reference.vertex_avg_distance:.4g}")
    return "\n".join(textwrap.fill(line, 28) for line in lines)


def _points_label(row: int, attrs: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Method, what its columns asked for (ε), success, feature error and distance to the target."""
    asked = "".join(f", {k}={v:.3g}" for k, v in attrs.get("columns", {}).items() if k == "epsilon")
    lines = [f"row {row}: {attrs.get('method', '?')}{asked}, {metrics.get('n_samples', '?')} pts"]
    if metrics:
        err, dist = metrics.get("max_feature_rel_error"), metrics.get("mean_distance_to_target")
        lines.append(f"success rate {success_text(metrics)}")
        lines.append(f"err {'n/a' if missing(err) else format(err, '.1e')}, "
                     f"to target {'n/a' if missing(dist) else format(dist, '.3g')}")
    return "\n".join(textwrap.fill(line, 28) for line in lines)


def _difference_boxes(vertices: np.ndarray, size: int, stride: int, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` windows where the vertices differ most from each other (their spread)."""
    spread = vertices.std(0).sum(0)  # (H, W)
    h, w = spread.shape
    scores = []
    for r in range(0, h - size + 1, stride):
        for c in range(0, w - size + 1, stride):
            scores.append((float(spread[r : r + size, c : c + size].sum()), r, c))
    scores.sort(reverse=True)
    picked: list[tuple[int, int, int]] = []
    for _, r, c in scores:  # skip windows overlapping one already picked
        if all(abs(r - pr) >= size or abs(c - pc) >= size for pr, pc, _ in picked):
            picked.append((r, c, size))
        if len(picked) == n:
            break
    return picked


def write_figure(store: ExperimentStore, rows: list[int], *, warning: str = "") -> Path:
    """Targets, inits and vertices of the first :data:`FIGURE_ROWS` rows (the paper's Tables 1, 3, 5).

    Invalid vertices are drawn, framed in red; each row's label gives its valid vertices
    and success rate (or why it has none); the title names every row flag and its rows. Rows of a
    patch experiment get boxes where their vertices differ most.
    """
    targets, inits, vertices, valid, labels, boxes = [], [], [], [], [], []
    layer = "?"
    flagged: dict[str, list[int]] = {}
    points = 0  # rows of points (a baseline's, the frontier's), not of a polytope's vertices
    for row in rows[:FIGURE_ROWS]:
        arrays, attrs = store.read_row(row)
        targets.append(arrays["target"])
        inits.append(arrays.get("init"))
        # A points row shows its first points where a polytope row shows its vertices.
        vertices.append(arrays["vertices"] if "vertices" in arrays else arrays["points"][:POINTS_SHOWN])
        valid.append(arrays.get("vertex_valid"))
        labels.append(row_label(row, attrs))
        layer = attrs.get("layer", layer)
        points += is_points_row(attrs)
        for flag in row_flags({**attrs, **attrs.get("metrics", {})}):
            flagged.setdefault(flag, []).append(row)
        patch = attrs.get("composition")
        boxes.append(_difference_boxes(arrays["vertices"], patch["size"], patch["stride"], 3) if patch else [])
    shown = "" if len(rows) <= FIGURE_ROWS else f" (first {FIGURE_ROWS} of {len(rows)} rows)"
    # A flag names its rows: one flagged row must not read as the whole figure's.
    note = "".join(f" - {flag_text(f).upper()} ({'rows' if len(at) > 1 else 'row'} {', '.join(map(str, at))})"
                   for f, at in flagged.items())
    shown_rows = min(len(rows), FIGURE_ROWS)
    if points == shown_rows:
        # Points need not collide (the frontier's trade feature error for distance): the title
        # claims no collision; each row's label gives its success and feature error.
        head = f"the first {POINTS_SHOWN} points of each row, for the target at {layer}"
    else:
        kind = "patch compositions (boxes: largest differences)" if any(boxes) else "polytopes"
        head = f"{kind} colliding with the target at {layer}" + (
            f" (rows of points show their first {POINTS_SHOWN})" if points else "")
    title = f"{store.name}: {head}{shown}{note}"
    if warning:
        title += f"\n{warning}"
    if any(v is not None and not np.all(v) for v in valid):
        title += "\nred frame: invalid vertex (missed its criterion; no sample weight)"
    item = "point" if points == shown_rows else "vertex"
    return vertex_grid(targets, inits, vertices, labels, store.figure_path, valid=valid, title=title, boxes=boxes,
                       item=item)
