"""Figures: the paper's Table 1/3 layout (target, then each row's vertices)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from collide.store import atomic_file  # noqa: E402


def _as_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> something imshow draws, and its colour map."""
    if x.shape[0] == 1:
        return x[0], "gray"
    return np.clip(np.transpose(x, (1, 2, 0)), 0, 1), None


def vertex_grid(
    targets: Sequence[np.ndarray],
    vertices: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    boxes: Sequence[Sequence[tuple[int, int, int]]] | None = None,
) -> Path:
    """One figure row per polytope: its target, then its vertices.

    ``boxes[r]`` lists (row, col, size) squares drawn on row r's vertices: where they
    differ most (the paper's purple boxes, Table 5).

    Shapes:
        targets[r]: (C, H, W); vertices[r]: (V, C, H, W); values in [0, 1]
    """
    n_rows = len(vertices)
    n_cols = 1 + max(len(v) for v in vertices)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.5 * n_cols, 1.6 * n_rows + 0.4), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = targets[r] if c == 0 else (vertices[r][c - 1] if c - 1 < len(vertices[r]) else None)
            if image is None or not np.isfinite(image).all():
                ax.axis("off")
                continue
            pixels, cmap = _as_image(image)
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            for top, left, size in (boxes[r] if boxes and c > 0 else []):
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="#a020f0", lw=1.2))
            if r == 0:
                ax.set_title("target" if c == 0 else f"vertex {c - 1}", fontsize=8)
        axes[r][0].set_ylabel(labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
