"""Figures: the paper's Table 1/3 layout (target, init, then each row's vertices).

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly, not through
pyplot: the caller's backend and open figures stay as they were, and no display is
needed on servers and CI.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from collide._io import atomic_file

INVALID_COLOUR = "#d62728"
BOX_COLOUR = "#a020f0"  # the paper's purple boxes (Table 5)
LEADING_COLUMNS = ("target", "init")


def fitted_title(title: str, fig: Figure, fontsize: float) -> str:
    """``title`` wrapped to ``fig``'s width (each of its lines): a figure's title wider than
    the figure is cut off at both edges (a long flag note, a narrow gallery of 2 images).
    A character is taken as 0.6 of the font size wide, a little over DejaVu Sans's mean."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in title.splitlines())


def column_titles(n_vertices: int, item: str = "vertex") -> list[str]:
    """The figure's column headers for rows of up to ``n_vertices`` vertices (``item``
    "point" where the rows hold points, not a polytope's vertices)."""
    return [*LEADING_COLUMNS, *(f"{item} {i}" for i in range(n_vertices))]


def _as_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow draws, and its colour map."""
    if x.shape[0] == 1:
        return x[0], "gray"
    return np.clip(np.transpose(x, (1, 2, 0)), 0, 1), None


def draw_vertex_grid(
    targets: Sequence[np.ndarray],
    inits: Sequence[np.ndarray | None],
    vertices: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    valid: Sequence[np.ndarray | None] | None = None,
    title: str = "",
    boxes: Sequence[Sequence[tuple[int, int, int]]] | None = None,
    item: str = "vertex",
) -> Figure:
    """One figure row per polytope: its target, its init, then its vertices.

    A vertex with ``valid[r][i]`` False (it missed its method's criterion and carries
    no sample weight) is still drawn, in a red frame marked "invalid"; a vertex that is
    not finite (never solved) leaves its cell empty. ``boxes[r]`` lists (row, col, size)
    squares drawn on row r's vertices: where they differ most (the paper's Table 5).

    Shapes:
        targets[r], inits[r]: (C, H, W); vertices[r]: (V, C, H, W), values in [0, 1];
        valid[r]: (V,) bool, or None when every vertex counts
    """
    n_rows = len(vertices)
    titles = column_titles(max(len(v) for v in vertices), item)
    lead = len(LEADING_COLUMNS)
    fig = Figure(figsize=(1.5 * len(titles), 1.7 * n_rows + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, len(titles), squeeze=False)
    for r in range(n_rows):
        marks = valid[r] if valid is not None and valid[r] is not None else np.ones(len(vertices[r]), bool)
        for c, name in enumerate(titles):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            k = c - lead
            image = (targets[r], inits[r])[c] if c < lead else (vertices[r][k] if k < len(vertices[r]) else None)
            if image is None or not np.isfinite(image).all():
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if image is not None:
                    ax.text(0.5, 0.5, "not solved", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            pixels, cmap = _as_image(image)
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            if k < 0:
                continue
            for top, left, size in boxes[r] if boxes else []:
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor=BOX_COLOUR, lw=1.2))
            if not marks[k]:
                for spine in ax.spines.values():
                    spine.set_edgecolor(INVALID_COLOUR)
                    spine.set_linewidth(3)
                ax.set_xlabel("invalid", color=INVALID_COLOUR, fontsize=8)
        axes[r][0].set_ylabel(labels[r], fontsize=7)
    if title:
        fig.suptitle(fitted_title(title, fig, 9), fontsize=9)
    fig.tight_layout()
    return fig


def vertex_grid(
    targets: Sequence[np.ndarray],
    inits: Sequence[np.ndarray | None],
    vertices: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    *,
    valid: Sequence[np.ndarray | None] | None = None,
    title: str = "",
    boxes: Sequence[Sequence[tuple[int, int, int]]] | None = None,
    item: str = "vertex",
) -> Path:
    """:func:`draw_vertex_grid`, written to ``path`` as PNG (atomically)."""
    fig = draw_vertex_grid(targets, inits, vertices, labels, valid=valid, title=title, boxes=boxes, item=item)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return Path(path)


def draw_scan_classes(frame: Any, *, title: str = "") -> Figure:
    """Per class of a scan: the share of its examples the model gets right and the share
    with a gradient polytope, and the mean inscribed radius of their exact sets with
    its smallest.

    ``frame`` has one row per class with ``class``, ``correct_share``, ``polytope_share``,
    ``radius_mean`` and ``radius_min`` (NaN: no exact set; no bar)
    (:func:`collide.experiments.scan.class_summary`).
    """
    classes = [str(c) for c in frame["class"]]
    x = np.arange(len(classes))
    fig = Figure(figsize=(max(6.0, 0.6 * len(classes)), 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for k, (column, label) in enumerate((("correct_share", "right"), ("polytope_share", "with a gradient polytope"))):
        axes[0].bar(x + (k - 0.5) * 0.4, frame[column].to_numpy(dtype=float), 0.4, label=label)
    axes[0].set_ylabel("share of the class's examples")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="lower right", fontsize="small")
    axes[1].bar(x, frame["radius_mean"].to_numpy(dtype=float), 0.6, label="mean")
    axes[1].plot(x, frame["radius_min"].to_numpy(dtype=float), "k_", markersize=14, label="smallest")
    axes[1].set_ylabel("inscribed radius, L2")
    axes[1].legend(loc="upper right", fontsize="small")
    axes[1].set_xticks(x, classes)
    axes[1].set_xlabel("label")
    if title:
        fig.suptitle(fitted_title(title, fig, 12))  # suptitle's default size, "large"
    fig.tight_layout()
    return fig


def label_rates(ax: Any, x: np.ndarray, rates: np.ndarray, scored: np.ndarray, targets: np.ndarray) -> None:
    """Says on a bar chart of success rates what a bar cannot: "n/a" where a group has none
    (no bar would read as 0) and "k of n" over a mean of fewer targets than the group has
    (the others' rates withheld)."""
    for xi, rate, k, n in zip(x, rates, scored, targets, strict=True):
        if not np.isfinite(rate):
            ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7)
        elif k < n:
            ax.text(xi, rate + 0.01, f"{int(k)} of {int(n)}", ha="center", va="bottom", fontsize=7)


def save_figure(fig: Figure, path: str | Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def draw_gallery(images: Any, ranked: Any, *, title: str = "", columns: int = 8) -> Figure:
    """Examples as images, each captioned with its rank, label, prediction and size.

    ``ranked`` has one row per image, in order, with ``rank``, ``label``, ``prediction``,
    ``rank_by`` and ``size`` (:func:`collide.experiments.scan.ranking`).

    Shapes:
        images: (n, C, H, W) in [0, 1]
    """
    n = len(ranked)
    columns = max(1, min(n, columns))  # as many as are drawn: fewer leave the grid wider than the figure
    rows = -(-n // columns)
    fig = Figure(figsize=(1.6 * columns, 1.9 * rows + 0.6))
    FigureCanvasAgg(fig)
    for k, (image, row) in enumerate(zip(images, ranked.itertuples(), strict=True)):
        ax = fig.add_subplot(rows, columns, k + 1)
        pixels = np.asarray(image, dtype=float)
        ax.imshow(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        wrong = int(row.prediction) != int(row.label)
        ax.set_title(f"#{int(row.rank)} label {int(row.label)}\npred {int(row.prediction)}"
                     f"{' (wrong)' if wrong else ''}\n{row.rank_by} {row.size:.3g}", fontsize=7,
                     color="red" if wrong else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(fitted_title(title, fig, 9), fontsize=9)
    fig.tight_layout()
    return fig
