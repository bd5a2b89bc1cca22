"""The auditor's scan: every example of a dataset, ranked by how blind the model is around it.

The paper's §5 says what collision sizes are for: finding the examples a model depends
on most (possibly mislabelled or tampered with), and where the data is too thin.
:func:`scan` measures, for each example of a batch, a ``Dataset`` or a ``DataLoader``:

- what the model makes of it: prediction, confidence, whether it is right;
- **screen** (every example): a gradient polytope (all examples of a chunk in one
  solver batch): its valid vertices and their *spread* (mean pairwise L2), and, where
  the layer is a ReLU whose exact LP fits, the exact collision set's dimension and
  inscribed *radius* (one LP; :func:`collide.api.collision_size`);
- **certify** (``certify=k``: the k most and k least blind by the screen): the exact
  set's mean width with its standard error, from LPs along random directions of its
  hull (:func:`collide.api.collision_geometry`).

Which size to act on. The radius and the widths are certified: each is an LP optimum
with a certificate (a ball inside the set; two points of it), so two examples compare
on them whatever the solver did. The spread is the distance between the vertices one
gradient run happened to reach: it depends on the steps, the seed and the pushed units,
and ranks examples differently (on a small CNN the top five by spread and by width
shared one example). The scan ranks by the radius where the exact set exists, else by
the spread, and says which in ``rank_by``.

An interrupted scan resumes when given a ``store`` folder: each chunk of examples is one
Parquet file, written whole or not at all, keyed by what it was computed from (the
model's weights, the chunk's inputs, the config), so a rerun of a finished scan
computes nothing and a changed input is computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from collide._io import atomic_file, code_version, json_digest
from collide.api import collision_geometry, collision_size, find_polytopes
from collide.checks import require
from collide.config import GeometryConfig, GradientConfig
from collide.datasets.examples import example_reader
from collide.errors import CollideError, ConfigError, DataError
from collide.inputs import require_finite, require_float32
from collide.piecewise.budget import check_lp_size
from collide.polytope import avg_pairwise_distance
from collide.sites import Site, eval_mode, resolve
from collide.skips import passed_by
from collide.solvers import solver_for
from collide.taps import preactivation
from collide.threads import one_blas_thread
from collide.workers import job_cores

log = logging.getLogger(__name__)

SIZES = ("radius", "spread", "dim", "valid_vertices", "mean_width")

# The columns of a scan's frame, in order.
COLUMNS = ("index", "label", "prediction", "confidence", "correct", "valid_vertices", "spread", "dim", "dim_method",
           "radius", "mean_width", "mean_width_se", "width_directions", "exact", "reason", "rank_by", "size",
           "rank")


@dataclass(frozen=True, kw_only=True)
class ScanConfig:
    """How :func:`scan` measures each example.

    Attributes:
        n_vertices: gradient vertices per example (the spread needs two valid ones).
        gradient: the gradient solver's settings.
        exact: measure the exact set's dimension and radius: auto (at a ReLU whose LP fits), always, never.
        certify: measure the mean width of the k most and k least blind examples by the screen (0: none).
        geometry: the exact set's settings (box, LP budget; widths for certify).
        rank_by: the size to rank by: auto (radius where the exact set exists, else spread) or one of SIZES.
        chunk: examples per solver batch and per stored file.
        device: cpu or cuda for the gradient solver.
        threads: examples whose exact sets the screen measures at once (0: a thread per core this process may
            take).
        centers: keep each exact set's ball centre (column ``center``: the input flattened, float64; None
            without one), so that a reader can check each ball lies in its set, and where a set is flat its
            pinned rows and their certificate (columns ``pinned``, ``pinned_weights``:
            :class:`collide.api.SetSize`'s), so that a reader can check its dimension.
        vertices: keep each example's gradient vertices and which of them are valid (columns ``vertices``:
            the n_vertices inputs flattened into one float32 array, and ``vertex_valid``; None where the
            example has no polytope), so that a reader can recompute its valid vertices and spread.
    """

    n_vertices: int = 5
    gradient: GradientConfig = field(default_factory=lambda: GradientConfig(max_steps=1000))
    exact: str = "auto"
    certify: int = 0
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(
        n_samples=1, chains=2, n_directions=8, max_directions=32, width_rel_se=0.1, max_seconds=0))
    rank_by: str = "auto"
    chunk: int = 50
    device: str = "cpu"
    threads: int = 0
    centers: bool = False
    vertices: bool = False

    def __post_init__(self) -> None:
        require(self.n_vertices >= 2, f"expected n_vertices >= 2 (a spread needs two vertices), got {self.n_vertices}")
        require(self.exact in ("auto", "always", "never"), f"expected exact auto, always or never, got {self.exact!r}")
        require(self.certify >= 0, f"expected certify >= 0, got {self.certify}")
        require(self.rank_by == "auto" or self.rank_by in SIZES,
                f"expected rank_by auto or one of {SIZES}, got {self.rank_by!r}")
        require(self.chunk >= 1, f"expected chunk >= 1, got {self.chunk}")
        require(self.threads >= 0, f"expected threads >= 0 (0: one per core), got {self.threads}")


Progress = Callable[[int, int], None]


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _chunk_key(base: dict[str, Any], x: torch.Tensor, y: torch.Tensor | None) -> str:
    h = hashlib.sha256(x.detach().cpu().float().contiguous().numpy().tobytes())
    if y is not None:
        h.update(y.numpy().tobytes())
    return json_digest({**base, "inputs": h.hexdigest()})


def exact_sizes_reason(model: nn.Module, layer: str | Site, example: torch.Tensor, config: ScanConfig) -> str:
    """"" where :func:`scan` measures the exact set of examples like ``example`` at
    ``layer`` under ``config``, else why it does not (``exact="always"`` is not refused
    here: callers that hold it name their own key)."""
    if config.exact == "never":
        return "exact sizes not asked for (exact=never)"
    site = layer if isinstance(layer, Site) else resolve(model, layer, example[None])
    reason = site.why_not("exact")
    if not reason:
        try:
            check_lp_size(model, site, example, max_entries=config.geometry.max_entries)
        except CollideError as exc:
            reason = str(exc)
    return reason


def _screen(model: nn.Module, site: Site, x: torch.Tensor, y: torch.Tensor | None, start: int, *,
            config: ScanConfig, exact_reason: str, sized: Callable[[int], None] = lambda _: None,
            ) -> list[dict[str, Any]]:
    """The rows of the examples ``x`` (the data's ``start`` on); ``sized(k)`` hears as the
    first k of them have their exact sizes, which take seconds an example on a conv net
    where the chunk's gradient polytopes take one batch."""
    with torch.no_grad(), eval_mode(model):
        prob = torch.softmax(model(x), -1)
    conf, pred = prob.max(-1)
    n_classes = prob.shape[-1]
    if y is not None and ((y < 0) | (y >= n_classes)).any():
        k = int(torch.nonzero((y < 0) | (y >= n_classes)).flatten()[0])
        raise DataError(f"example {start + k} has label {int(y[k])}, but the model has {n_classes} classes (0 to "
                        f"{n_classes - 1}): pass labels the model's outputs are indexed by, or none (labels=None)")
    rows = [{"index": start + k, "label": None if y is None else int(y[k]), "prediction": int(pred[k]),
             "confidence": float(conf[k]), "correct": None if y is None else bool(pred[k] == y[k]),
             "valid_vertices": 0, "spread": math.nan, "dim": math.nan, "dim_method": "", "radius": math.nan,
             "mean_width": math.nan, "mean_width_se": math.nan, "width_directions": 0, "exact": False,
             "reason": "", **({"vertices": None, "vertex_valid": None} if config.vertices else {})}
            for k in range(len(x))]
    solver = solver_for("gradient", config.gradient)
    sat = solver.saturation(site)
    with torch.no_grad(), eval_mode(model):
        pre = preactivation(model, x, site)
    enough = sat.saturated(pre).sum(-1) >= config.n_vertices
    for k in torch.nonzero(~enough).flatten().tolist():
        rows[k]["reason"] = (f"{int(sat.saturated(pre[k]).sum())} saturated units at the layer, fewer than "
                             f"n_vertices={config.n_vertices}")
    keep = torch.nonzero(enough).flatten().tolist()
    if keep:
        polys = find_polytopes(model, site, [x[k] for k in keep], n_vertices=config.n_vertices,
                               method=solver, device=config.device)
        for k, poly in zip(keep, polys, strict=True):
            good = poly.vertices[poly.valid]
            rows[k]["valid_vertices"] = int(poly.valid.sum())
            if config.vertices:
                rows[k]["vertices"] = poly.vertices.detach().cpu().float().flatten().numpy()
                rows[k]["vertex_valid"] = poly.valid.detach().cpu().numpy().astype(bool)
            if len(good) >= 2:
                rows[k]["spread"] = avg_pairwise_distance(good)
            else:
                rows[k]["reason"] = "; ".join(f"v{i}: {r}" for i, r in enumerate(poly.reasons) if r) or "no vertex"
    if not exact_reason:
        # HiGHS runs without the GIL: on 2 cores two sets at once take about half the time.
        # One BLAS thread whether the sets run side by side or not: the sets' bits then do
        # not depend on how many examples the call holds or on the cores.
        threads = max(1, min(len(x), config.threads or job_cores()))
        with one_blas_thread(), ThreadPoolExecutor(threads) as pool:
            sizes = []
            # In order, from this thread: the callback need not be thread-safe.
            for size in pool.map(lambda k: collision_size(model, site, x[k], config=config.geometry), range(len(x))):
                sizes.append(size)
                sized(len(sizes))
        for row, size in zip(rows, sizes, strict=True):
            row.update(dim=size.dim, dim_method=size.dim_method, radius=size.radius, exact=True)
            if config.centers:
                row.update(center=size.center, pinned=size.pinned, pinned_weights=size.pinned_weights)
    elif config.centers:
        for row in rows:
            row.update(center=None, pinned=None, pinned_weights=None)
    return rows


def rank_examples(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """``frame`` (one row per example, with ``index`` and the column ``by``) sorted most
    blind first, with ``rank_by``, ``size`` (the value ranked) and ``rank`` (1: the
    largest ``by``; ties by index; examples without it last)."""
    frame = frame.assign(rank_by=by, size=frame[by].astype(float))
    order = frame.sort_values(["size", "index"], ascending=[False, True], na_position="last", kind="stable")
    order["rank"] = np.arange(1, len(order) + 1)
    return order.reset_index(drop=True)


# Columns a scan keeps only when asked (ScanConfig.centers, .vertices).
KEPT = ("center", "pinned", "pinned_weights", "vertices", "vertex_valid")


def _rank(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    return rank_examples(frame, by)[[*COLUMNS, *(c for c in KEPT if c in frame)]]


def rank_stability(a: pd.DataFrame, b: pd.DataFrame, *, top: float = 0.01) -> dict[str, float]:
    """How far two rankings of the same examples agree: the Spearman correlation of their
    ranks over the examples both ranked (a size in each), and the share of the top
    ``top`` (at least one example) of one that is in the top of the other. Each frame
    needs ``index`` and ``size`` (larger: more blind)."""
    both = a.dropna(subset=["size"]).merge(b.dropna(subset=["size"]), on="index", suffixes=("_a", "_b"))
    n = len(both)
    if n < 2:
        return {"examples": float(n), "spearman": math.nan, "top_overlap": math.nan, "top_k": math.nan}
    # Ranked by the sizes compared, among the examples both ranked: a frame's own rank
    # column may be by another size, or over more examples.
    ra, rb = both["size_a"].rank(ascending=False), both["size_b"].rank(ascending=False)
    spearman = float(np.corrcoef(ra.to_numpy(), rb.to_numpy())[0, 1])
    k = max(1, round(top * n))
    top_a = set(both.loc[ra.nsmallest(k).index, "index"])
    top_b = set(both.loc[rb.nsmallest(k).index, "index"])
    return {"examples": float(n), "spearman": spearman, "top_overlap": len(top_a & top_b) / k, "top_k": float(k)}


def scan(
    model: nn.Module,
    layer: str | Site,
    data: Any,
    *,
    labels: Any = None,
    config: ScanConfig | None = None,
    store: str | Path | None = None,
    progress: bool | Progress = False,
) -> pd.DataFrame:
    """Every example of ``data`` with its collision sizes at ``layer``, ranked: rank 1 is
    the example the model is most blind around.

    Args:
        model: a float32 classifier (not changed).
        layer: an activation call (``collide.layers`` lists them).
        data: a tensor batch (N, *input), a ``torch.utils.data.Dataset`` of inputs or
            (input, label) pairs, or a ``DataLoader`` of such batches.
        labels: one label per example, where ``data`` carries none (optional).
        config: how each example is measured (:class:`ScanConfig`).
        store: a folder to keep each finished chunk in; a rerun reads them back.
        progress: True for a progress bar on stderr, or ``progress(done, total)``: it moves
            as each example's exact sizes come (seconds an example on a conv net), else
            with each chunk.

    Returns:
        One row per example (:data:`COLUMNS`): ``index`` in ``data``, ``label``,
        ``prediction``, ``confidence``, ``correct``; the sizes ``valid_vertices``,
        ``spread``, ``dim`` (and ``dim_method``), ``radius``, ``mean_width`` with
        ``mean_width_se`` (certified examples), ``exact`` (the set was measured),
        ``reason`` (why an example has no polytope or no exact set); ``rank_by``,
        ``size`` (the ranked value) and ``rank``; with ``config.centers``, ``center``,
        ``pinned`` and ``pinned_weights``.
        ``attrs["layer_passed_by"]``: whether a skip connection passes ``layer`` by
        (:func:`collide.skips.passed_by`; logged as a warning): the sizes are then the
        layer's, and inputs in a set can still be told apart by the output.
    """
    config = config or ScanConfig()
    require_float32(model)
    n, read = example_reader(data, labels)
    if n == 0:
        raise DataError("the data holds no example: nothing to scan")
    first, _ = read(0, 1)
    require_finite(first, "the first example", fix="pass finite inputs")
    site = layer if isinstance(layer, Site) else resolve(model, layer, first)
    exact_reason = exact_sizes_reason(model, site, first[0], config)
    if exact_reason and config.exact == "always":
        raise ConfigError(f"exact=always, but {exact_reason}")
    # How many threads measure a chunk does not change what it holds: not in its key.
    base = {"weights": _weights_digest(model), "layer": site.name, "config": json.loads(
        json.dumps({k: v for k, v in asdict(config).items() if k != "threads"}, default=str))}
    folder = Path(store) if store is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    bar = _bar(progress, n)
    frames = []
    try:
        for start in range(0, n, config.chunk):
            stop = min(n, start + config.chunk)
            x, y = read(start, stop)
            require_finite(x, f"examples {start}..{stop - 1}", fix="pass finite inputs")
            key = _chunk_key(base, x, y)
            path = folder / f"chunk-{start:08d}-{key}.parquet" if folder is not None else None
            if path is not None and path.is_file():
                frames.append(pd.read_parquet(path))
            else:
                rows = _screen(model, site, x.float(), y, start, config=config, exact_reason=exact_reason,
                               sized=lambda k, start=start: bar(start + k))
                chunk = pd.DataFrame(rows)
                chunk["reason"] = [r["reason"] or ("" if r["exact"] else exact_reason) for r in rows]
                if path is not None:
                    for old in folder.glob(f"chunk-{start:08d}-*.parquet"):  # type: ignore[union-attr]
                        old.unlink()  # a chunk of other inputs or another config
                    with atomic_file(path) as tmp:
                        chunk.to_parquet(tmp, index=False)
                frames.append(chunk)
            bar(stop)
    finally:
        bar(None)
    frame = pd.concat(frames, ignore_index=True)
    by = config.rank_by if config.rank_by != "auto" else ("radius" if not exact_reason else "spread")
    frame = _rank(frame, by)
    if config.certify and not exact_reason:
        frame = _certify(model, site, read, frame, config=config, folder=folder, base=base)
        if config.rank_by == "mean_width":
            frame = _rank(frame, "mean_width")
    frame.attrs["layer_passed_by"] = site.name in passed_by(model, first)
    if frame.attrs["layer_passed_by"]:
        log.warning("layer %s: a skip connection passes it by (collide.skips): the sizes measure how blind the "
                    "model is at that call, not at its output, which still reads the input around it", site.name)
    return frame


def _certify(model: nn.Module, site: Site, read: Callable[[int, int], tuple[torch.Tensor, Any]],
             frame: pd.DataFrame, *, config: ScanConfig, folder: Path | None, base: dict[str, Any]) -> pd.DataFrame:
    """The mean width (with its standard error) of the ``certify`` most and least blind examples."""
    ranked = frame[frame["size"].notna()]
    picked = sorted(set(ranked["index"].head(config.certify)) | set(ranked["index"].tail(config.certify)))
    frame = frame.set_index("index", drop=False)
    # One at a time: side by side on 2 cores measured no faster (8.8 s an example either
    # way: certify_s and certify_side_by_side_s in benchmarks/scan.json).
    for i in picked:
        x, _ = read(int(i), int(i) + 1)
        # The code's version too: a one-point set's widths changed (none since 2026-12-08).
        key = json_digest({**base, "code": code_version(), "certify": int(i), "inputs": _chunk_key(base, x, None)})
        path = folder / f"certify-{int(i):08d}-{key}.json" if folder is not None else None
        if path is not None and path.is_file():
            found = json.loads(path.read_text())
        else:
            geo = collision_geometry(model, site, x[0].float(), config=config.geometry)
            found = width_summary(geo.widths.numpy())
            if path is not None:
                with atomic_file(path) as tmp:
                    Path(tmp).write_text(json.dumps(found))
        for k, v in found.items():
            frame.loc[i, k] = v
    return frame.reset_index(drop=True)


def width_summary(widths: np.ndarray) -> dict[str, Any]:
    """The mean width over the directions measured, its standard error (NaN for one
    direction) and how many there were; 0 for a set of one point (no direction)."""
    n = len(widths)
    return {"mean_width": float(widths.mean()) if n else 0.0,
            "mean_width_se": float(widths.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "width_directions": n}


def _bar(progress: bool | Progress, total: int) -> Callable[[int | None], None]:
    """``update(done)`` as examples finish, ``update(None)`` at the end."""
    if callable(progress):
        heard = [-1]

        def tell(done: int | None) -> None:
            if done is not None and done != heard[0]:  # a chunk's end, its last example's already told
                heard[0] = done
                progress(done, total)

        return tell
    if not progress:
        return lambda done: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="example", desc="scan")

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update

