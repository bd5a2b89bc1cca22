"""The auditor's scan: every example of a split or an image folder (or N per class, or a list), ranked.

What the paper's §5 suggests auditors do: find the examples the model is most blind
around. Each example is a target, right or wrong, with a gradient and an exact row (the
MNIST experiment's stages, fanned out by the engine). Then:

- ``<name>-ranking.parquet``: one row per example, its label, prediction, confidence,
  the sizes (the gradient polytope's valid vertices and spread; the exact set's
  dimension, inscribed radius and mean width with its standard error) and its rank by
  ``rank_by`` (the certified radius by default; :mod:`collide.audit` says why);
- ``<name>-gallery.png``: the most and the least blind examples with their sizes;
- ``<name>-summary.parquet`` and its figure: per class, how often a polytope exists and
  keeps its class, how wide it is, and the exact dimension bound;
- with ``certify`` k > 0, ``<name>-certified.parquet``: the second stage, the full
  measurement of the k most and k least blind examples by the ranking (widths to
  ``certify_geometry``'s error, samples whose statistics are reported only where the
  chains mixed), each kept while what it was measured from is unchanged.

Examples the model cannot hold a polytope around (fewer units it can push than
``n_vertices`` at the layer) are left out before any job, and counted in a note.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collide._io import file_digest, json_digest
from collide.api import collision_geometry
from collide.audit import rank_examples, width_summary
from collide.datasets.folders import list_folder
from collide.datasets.mnist import ensure_mnist
from collide.errors import DataError
from collide.experiments import mnist
from collide.experiments.configs.scan import ScanExperiment
from collide.experiments.contract import Progress, no_progress
from collide.models.zoo import load_checkpoint
from collide.results.figures import draw_class_summary, draw_gallery, save_figure
from collide.results.report import CERTIFIED_OUTPUT, GALLERY_OUTPUT, RANKING_OUTPUT
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, summary_table, write_summary, write_summary_table
from collide.taps import preactivation

RANKING, GALLERY, CERTIFIED = "ranking", GALLERY_OUTPUT, "certified"
# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name
# (engine.experiment_store).
OUTPUTS = (*SUMMARY_OUTPUTS, summary_table(RANKING), GALLERY, summary_table(CERTIFIED))
# What a certified example's row holds of its collision set's sampler (NaN where the
# chains did not mix: the statistics are then not reported).
_SAMPLED = ("mean_distance_to_target", "mean_distance_to_target_mcse", "mean_pairwise_distance",
            "mean_pairwise_distance_mcse")
assert summary_table(RANKING) == RANKING_OUTPUT  # the report finds the ranking by this name
assert summary_table(CERTIFIED) == CERTIFIED_OUTPUT  # and the second stage by this one

NAME = "scan"
Config = ScanExperiment
layers, plan, solve = mnist.layers, mnist.plan, mnist.solve


def _kind(config: ScanExperiment) -> str:
    """What the scanned examples are, in a title: their split, their image folder's name,
    or the dataset factory."""
    if config.dataset:
        return config.dataset
    return f"{Path(config.image_root).name}/" if config.image_root else config.split


def _source(config: ScanExperiment) -> str:
    if config.dataset:
        return f"dataset {config.dataset}"
    return f"image folder {config.image_root}" if config.image_root else f"{config.split} split"


def validate(*, config: ScanExperiment) -> None:
    mnist.validate(config=config)


def pick_examples(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  config: ScanExperiment) -> tuple[list[dict[str, int]], list[str]]:
    """The examples to scan (each with its ``other`` init, the first example of another
    label) and notes on those left out: exactly ``indices``, else the first
    ``targets_per_class`` of every label, else every example; an example with fewer
    units it can push at the layer than ``n_vertices`` is left out."""
    n = len(labels)
    if config.indices:
        wrong = [i for i in config.indices if i >= n]
        if wrong:
            raise DataError(f"indices {wrong[:5]} are past the {_source(config)}'s {n} examples: "
                            f"pass indices below {n}")
        chosen = list(config.indices)
    elif config.targets_per_class:
        chosen = sorted(int(i) for c in labels.unique().tolist()
                        for i in torch.nonzero(labels == c).flatten()[:config.targets_per_class])
    else:
        chosen = list(range(n))
    with torch.no_grad():
        pre = torch.cat([preactivation(model, images[chosen[k:k + 1000]], config.layer)
                         for k in range(0, len(chosen), 1000)])
    units = (pre <= 0).sum(1).tolist()
    kept = [i for i, u in zip(chosen, units, strict=True) if u >= config.n_vertices]
    notes = [] if len(kept) == len(chosen) else [
        f"{len(chosen) - len(kept)} of {len(chosen)} examples left out: fewer than n_vertices={config.n_vertices} "
        f"non-positive units at {config.layer}"]
    if not kept:
        raise DataError(f"no example to scan: every one has fewer than n_vertices={config.n_vertices} non-positive "
                        f"units at {config.layer}; lower n_vertices or pick another layer")
    firsts = {int(c): int(torch.nonzero(labels != c).flatten()[0]) for c in labels.unique().tolist()}
    return [{"target_index": i, "other_index": firsts[int(labels[i])]} for i in kept], notes


def prepare(*, config: ScanExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """The MNIST experiment's shared work, with the scan's examples of its split."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    context = mnist.prepare(config=_one_target(config), progress=progress)
    model, _ = load_checkpoint(context["checkpoint"])
    data = mnist.indexed_images(config)
    targets, notes = pick_examples(model, data.images, data.labels, config=config)
    inputs = {**context["inputs"], "split": config.split}
    if config.image_root:  # the rows index these images: their files and labels are what they depend on
        paths = [path for path, _ in list_folder(config.image_root)[1]]  # the order indexed_images read them in
        inputs["images"] = json_digest({"files": file_digest(paths), "labels": data.labels.tolist()})
    if config.dataset:  # the factory's examples themselves: the code that built them may change
        inputs["images"] = mnist.images_digest(data)
        # Rows index examples by position: a factory that returns other examples on the next
        # call is refused here, before the plan writes anything (each job checks again).
        mnist.require_same_images(config, mnist.indexed_images(config), inputs["images"])
    return {**context, "targets": targets, "notes": [*context.get("notes", []), *notes], "inputs": inputs}


def _one_target(config: ScanExperiment) -> mnist.MnistExperiment:
    """The MNIST experiment's config for the shared work (checkpoint, data, distance): its
    own target picking is the scan's to replace."""
    from dataclasses import fields

    keep = {f.name: getattr(config, f.name) for f in fields(mnist.MnistExperiment)}
    return mnist.MnistExperiment(**{**keep, "targets_per_class": 0, "n_vertices": 1})


def class_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (class, method) of a scan's table.

    Columns: ``targets``; ``polytopes`` (rows with at least two valid vertices) and its
    share; ``success_rate_mean``/``_min`` over those; ``vertex_avg_distance_mean``
    (the spread: mean pairwise L2 of valid vertices); ``max_feature_rel_error``;
    ``dim_upper_bound_mean``/``_min`` (exact rows: d − rank J⁺, NaN for the others).
    """
    frame = table.assign(**{"class": table["target_class"].astype(int)})
    bound = frame["dim_upper_bound"].where(frame["dim_upper_bound"] >= 0) if "dim_upper_bound" in frame else np.nan
    frame = frame.assign(dim_upper_bound=bound, polytope=frame["valid_vertices"] >= 2)
    out = frame.groupby(["class", "method"], sort=True).agg(
        targets=("row", "size"),
        polytopes=("polytope", "sum"),
        success_rate_mean=("success_rate", "mean"),
        success_rate_min=("success_rate", "min"),
        vertex_avg_distance_mean=("vertex_avg_distance", "mean"),
        max_feature_rel_error=("max_feature_rel_error", "max"),
        dim_upper_bound_mean=("dim_upper_bound", "mean"),
        dim_upper_bound_min=("dim_upper_bound", "min"),
    ).reset_index()
    out["polytopes"] = out["polytopes"].astype(int)
    out.insert(4, "polytope_share", out["polytopes"] / out["targets"])
    return out


# The ranking's columns: what each example's gradient and exact rows say of it.
_GRADIENT = {"valid_vertices": "valid_vertices", "vertex_avg_distance": "spread", "success_rate": "success_rate",
             "target_top_prob": "confidence", "target_class": "prediction"}
_EXACT = {"region_dim": "dim", "region_radius": "radius", "region_mean_width": "mean_width",
          "region_mean_width_se": "mean_width_se", "region_n_directions": "width_directions"}


def ranking(table: pd.DataFrame, labels: np.ndarray, *, rank_by: str = "auto") -> pd.DataFrame:
    """One row per example of a scan's table, most blind first (:func:`collide.audit.rank_examples`).

    ``labels``: the split's labels, by example index. ``rank_by`` auto takes the radius
    when every example has an exact row, else the spread.
    """
    grad = table[table["method"] == "gradient"].set_index("target_index")
    exact = table[table["method"] == "exact"].set_index("target_index")
    frame = grad[list(_GRADIENT)].rename(columns=_GRADIENT)
    for src, dst in _EXACT.items():
        frame[dst] = exact[src].reindex(frame.index) if src in exact else np.nan
    frame["reason"] = grad["invalid_reason"]
    frame = frame.reset_index().rename(columns={"target_index": "index"})
    frame.insert(1, "label", labels[frame["index"].to_numpy()].astype(int))
    frame.insert(4, "correct", frame["prediction"].astype(int) == frame["label"])
    by = rank_by if rank_by != "auto" else ("radius" if frame["radius"].notna().all() else "spread")
    return rank_examples(frame, by)


def summarize(*, config: ScanExperiment) -> dict[str, Any]:
    """The per-class summary and its figure, the ranking and the gallery, from the store;
    each kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    table = store.read_table()
    title = (f"{name}: {table['target_index'].nunique()} {_kind(config)} example(s) at {config.layer}, "
             f"{config.n_vertices} vertices per polytope")
    written = write_summary(store, class_summary(table), lambda frame: draw_class_summary(frame, title=title))
    data = mnist.indexed_images(config)
    ranked = ranking(table, data.labels.numpy(), rank_by=config.rank_by)
    path, gallery = store.output(summary_table(RANKING)), store.output(GALLERY)
    same = path.is_file() and pd.read_parquet(path).equals(ranked)
    write_summary_table(store, RANKING, ranked)
    if not (same and gallery.is_file()):
        k = min(config.gallery, len(ranked) // 2 or 1)
        shown = pd.concat([ranked.head(k), ranked.tail(k)]).drop_duplicates("index")
        save_figure(draw_gallery(data.images[torch.tensor(shown["index"].tolist())], shown, title=(
            f"{name}: the {k} most (top) and least (bottom) blind {_kind(config)} examples by "
            f"{ranked['rank_by'].iloc[0]}")), gallery)
    out = {**written, "ranking": str(path), "gallery": str(gallery)}
    certified = store.output(summary_table(CERTIFIED))
    if config.certify:
        frame = certify(ranked, data.images, config=config)
        out["certified"] = str(write_summary_table(store, CERTIFIED, frame))
    elif certified.is_file():
        certified.unlink()  # an earlier config's second stage, not this one's
    return out


def certify(ranked: pd.DataFrame, images: torch.Tensor, *, config: ScanExperiment) -> pd.DataFrame:
    """The second stage: the full measurement (``config.certify_geometry``) of the
    ``config.certify`` most and least blind examples of ``ranked`` that have a size.

    One row per example, most blind first: its ``index``, ``rank`` and screened
    ``radius``; the certified ``dim``, ``radius``, ``mean_width`` with
    ``mean_width_se`` and ``width_directions``; the sampler's ``converged``, ``rhat``,
    ``ess``, ``reason`` and its statistics (NaN unless converged); ``seconds``; and
    ``key``, what the row was measured from. A row whose key is in the stored table is
    read back, not measured again.
    """
    model_info = mnist.train_model(config=_one_target(config))
    model, _ = load_checkpoint(model_info["checkpoint"])
    sized = ranked[ranked["size"].notna()]
    k = config.certify
    picked = pd.concat([sized.head(k), sized.tail(k)]).drop_duplicates("index")
    store = ExperimentStore.of(config)
    path = store.output(summary_table(CERTIFIED))
    kept = pd.read_parquet(path).set_index("key") if path.is_file() else pd.DataFrame()
    geometry = asdict(config.certify_geometry)
    rows = []
    for example in picked.itertuples():
        image = images[int(example.index)]
        key = json_digest({"index": int(example.index), "checkpoint_sha256": model_info["sha256"],
                           "layer": config.layer, "geometry": geometry,
                           "image": hashlib.sha256(image.numpy().tobytes()).hexdigest()})
        head = {"index": int(example.index), "rank": int(example.rank), "screen_radius": float(example.radius)}
        if key in kept.index:
            rows.append({**kept.loc[key].to_dict(), **head, "key": key})
            continue
        geo = collision_geometry(model, config.layer, image, config=config.certify_geometry)
        sampler = geo.sampler
        rows.append({
            **head, "dim": geo.dim, "dim_method": geo.dim_method, "radius": geo.radius,
            **width_summary(geo.widths.numpy()), "converged": bool(sampler.get("converged", False)),
            "rhat": float(sampler.get("rhat", np.nan)), "ess": float(sampler.get("ess", np.nan)),
            "reason": str(sampler.get("reason", "")),
            **{name: float(sampler.get(name, np.nan)) if sampler.get("converged") else np.nan for name in _SAMPLED},
            "seconds": geo.seconds, "key": key})
    columns = ["index", "rank", "screen_radius", "dim", "dim_method", "radius", "mean_width", "mean_width_se",
               "width_directions", "converged", "rhat", "ess", "reason", *_SAMPLED, "seconds", "key"]
    return pd.DataFrame(rows, columns=columns)
