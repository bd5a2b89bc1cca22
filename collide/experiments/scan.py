"""The auditor's scan: every example of a split or an image folder (or N per class, or a list), ranked.

What the paper's §5 suggests auditors do: find the examples the model is most blind
around. The examples are screened ``targets_per_batch`` to a job by :func:`collide.scan`
(each example's gradient polytope, all in one solver batch, and its exact collision
set's dimension and inscribed radius, one LP each), and each job writes one row: the
gradient polytope of its most blind example, evaluated like any row, with every
example's sizes beside it (arrays ``scan_<column>``, :mod:`collide.experiments.scanned`).
Then:

- ``<name>-ranking.parquet``: one row per example, its label, prediction, confidence,
  the sizes (the gradient polytope's valid vertices and spread; the exact set's
  dimension and inscribed radius) and its rank by ``rank_by`` (the certified radius by
  default; :mod:`collide.audit` says why), and why an example has no size;
- ``<name>-gallery.png``: the most and the least blind examples with their sizes;
- ``<name>-summary.parquet`` and its figure: per class, how many examples, how many of
  them the model gets right, how often a gradient polytope and an exact set exist, and
  their sizes;
- with ``certify`` k > 0, ``<name>-certified.parquet``: the second stage, the full
  measurement of the k most and k least blind examples by the ranking (widths to
  ``certify_geometry``'s error, samples whose statistics are reported only where the
  chains mixed), each kept while what it was measured from is unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collide._io import code_version, file_digest, json_digest
from collide.api import collision_geometry
from collide.audit import ScanConfig, rank_examples, width_summary
from collide.datasets.folders import list_folder
from collide.datasets.mnist import ensure_mnist
from collide.errors import DataError
from collide.experiments import mnist
from collide.experiments.configs.scan import ScanExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.experiments.scanned import read_scans, require_exact_sizes, scan_row, screen_config
from collide.models.zoo import load_checkpoint
from collide.results.figures import draw_gallery, draw_scan_classes, save_figure
from collide.results.report import CERTIFIED_OUTPUT, GALLERY_OUTPUT, RANKING_OUTPUT
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, summary_table, write_summary, write_summary_table

# In the flow's log too (PREFECT_LOGGING_EXTRA_LOGGERS): the second stage runs minutes without a job's bar.
log = logging.getLogger(__name__)

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
layers = mnist.layers


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


def pick_examples(labels: torch.Tensor, *, config: ScanExperiment) -> list[int]:
    """The examples to scan, by index: exactly ``indices``, else the first
    ``targets_per_class`` of every label, else every example. An example the model
    cannot hold a polytope around is scanned too: the ranking says why it has no size."""
    n = len(labels)
    if config.indices:
        wrong = [i for i in config.indices if i >= n]
        if wrong:
            raise DataError(f"indices {wrong[:5]} are past the {_source(config)}'s {n} examples: "
                            f"pass indices below {n}")
        return list(config.indices)
    if config.targets_per_class:
        return sorted(int(i) for c in labels.unique().tolist()
                      for i in torch.nonzero(labels == c).flatten()[:config.targets_per_class])
    return list(range(n))


def prepare(*, config: ScanExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """The MNIST experiment's shared work, with the scan's examples of its split."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    context = mnist.prepare(config=_one_target(config), progress=progress)
    data = mnist.indexed_images(config)
    examples = pick_examples(data.labels, config=config)
    inputs = {**context["inputs"], "split": config.split}
    if config.image_root:  # the rows index these images: their files and labels are what they depend on
        paths = [path for path, _ in list_folder(config.image_root)[1]]  # the order indexed_images read them in
        inputs["images"] = json_digest({"files": file_digest(paths), "labels": data.labels.tolist()})
    if config.dataset:  # the factory's examples themselves: the code that built them may change
        inputs["images"] = mnist.images_digest(data)
        # Rows index examples by position: a factory that returns other examples on the next
        # call is refused here, before the plan writes anything (each job checks again).
        mnist.require_same_images(config, mnist.indexed_images(config), inputs["images"])
    if examples:
        require_exact_sizes(config, context["checkpoint"], data.images[examples[0]])
    return {**context, "targets": examples, "inputs": inputs}


def plan(context: dict[str, Any], *, config: ScanExperiment) -> list[Job]:
    """Job ``k`` screens the ``k``-th ``targets_per_batch`` examples and writes row ``k``."""
    examples, per = context["targets"], config.targets_per_batch
    return [job(f"examples-{first}-{min(first + per, len(examples)) - 1}", [k], examples=examples[first:first + per])
            for k, first in enumerate(range(0, len(examples), per))]


def measure(config: ScanExperiment, n: int) -> ScanConfig:
    """How a job of ``n`` examples screens them: one solver batch, the screen's sizes (each
    ball's centre and each example's gradient vertices kept, for ``collide verify``), and
    its row's polytope that of the example ranked first by the scan's own rule (radius,
    else spread), whatever ``rank_by`` the outputs use."""
    return screen_config(config, chunk=n, centers=True, vertices=True)


def solve(job: Job, context: dict[str, Any], *, config: ScanExperiment, progress: Progress = no_progress) -> None:
    """Screen the job's examples with :func:`collide.scan` and write its row."""
    data = mnist.job_images(config, context)  # the training split, an image folder, a dataset
    examples = job.spec["examples"]
    scan_row(config, row=job.rows[0], seed=config.seed, checkpoint=context["checkpoint"], images=data.images,
             labels=data.labels, examples=examples, extra={}, dataset_distance=context["dataset_avg_distance"],
             measure=measure(config, len(examples)), folder=None, model_name=mnist.model_name(
                 context, config.train.arch), progress=progress,
             attrs={"split": _kind(config), "scanned": len(examples), **mnist.data_attrs(context)})


def _one_target(config: ScanExperiment) -> mnist.MnistExperiment:
    """The MNIST experiment's config for the shared work (checkpoint, data, distance): its
    own target picking is the scan's to replace."""
    from dataclasses import fields

    keep = {f.name: getattr(config, f.name) for f in fields(mnist.MnistExperiment)}
    return mnist.MnistExperiment(**{**keep, "targets_per_class": 0, "n_vertices": 1})


def class_summary(ranked: pd.DataFrame) -> pd.DataFrame:
    """One row per class (label) of a scan's ranking.

    Columns: ``examples``; ``correct_share`` (the share the model gets right); ``polytopes`` (examples
    with a gradient polytope: two valid vertices or more) and ``polytope_share``;
    ``spread_mean``; ``exact_sets`` (examples whose exact set was measured);
    ``dim_mean``/``_min`` and ``radius_mean``/``_min`` over those.
    """
    frame = ranked.assign(**{"class": ranked["label"].astype(int), "polytope": ranked["valid_vertices"] >= 2,
                             "exact_set": ranked["radius"].notna(), "right": ranked["correct"].astype(float)})
    out = frame.groupby("class", sort=True).agg(
        examples=("index", "size"), correct_share=("right", "mean"), polytopes=("polytope", "sum"),
        spread_mean=("spread", "mean"), exact_sets=("exact_set", "sum"), dim_mean=("dim", "mean"),
        dim_min=("dim", "min"), radius_mean=("radius", "mean"), radius_min=("radius", "min"),
    ).reset_index()
    out[["polytopes", "exact_sets"]] = out[["polytopes", "exact_sets"]].astype(int)
    out.insert(4, "polytope_share", out["polytopes"] / out["examples"])
    return out


# The ranking's columns, in order: the scan's (collide.audit.COLUMNS) with ``index`` the
# example's in the split, and the row that holds it.
COLUMNS = ("index", "label", "prediction", "confidence", "correct", "valid_vertices", "spread", "dim", "radius",
           "reason", "row", "rank_by", "size", "rank")


def ranking(scans: pd.DataFrame, *, rank_by: str = "auto") -> pd.DataFrame:
    """One line per example of a scan's rows (:func:`collide.experiments.scanned.read_scans`),
    most blind first (:func:`collide.audit.rank_examples`). ``rank_by`` auto takes the
    radius when every example has an exact set, else the spread."""
    frame = scans.drop(columns=["index"]).rename(columns={"example": "index"})
    frame = frame.assign(index=frame["index"].astype(int), label=frame["label"].astype(int),
                         prediction=frame["prediction"].astype(int), correct=frame["correct"].astype(bool),
                         valid_vertices=frame["valid_vertices"].astype(int))
    by = rank_by if rank_by != "auto" else ("radius" if frame["radius"].notna().all() else "spread")
    return rank_examples(frame, by)[list(COLUMNS)]


def summarize(*, config: ScanExperiment) -> dict[str, Any]:
    """The per-class summary and its figure, the ranking and the gallery, from the store;
    each kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    ranked = ranking(read_scans(store), rank_by=config.rank_by)
    title = (f"{name}: {len(ranked)} {_kind(config)} example(s) at {config.layer}, "
             f"{config.n_vertices} vertices per polytope")
    written = write_summary(store, class_summary(ranked), lambda frame: draw_scan_classes(frame, title=title))
    data = mnist.indexed_images(config)
    path, gallery = store.output(summary_table(RANKING)), store.output(GALLERY)
    same = path.is_file() and pd.read_parquet(path).equals(ranked)
    write_summary_table(store, RANKING, ranked)
    if not (same and gallery.is_file()):
        k = min(config.gallery, len(ranked) // 2 or 1)
        shown = pd.concat([ranked.head(k), ranked.tail(k)]).drop_duplicates("index")
        # One row of the k most blind above one of the k least: what the title says.
        save_figure(draw_gallery(data.images[torch.tensor(shown["index"].tolist())], shown, columns=k, title=(
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
    for n, example in enumerate(picked.itertuples(), 1):
        image = images[int(example.index)]
        # The code's version too: what a set's sizes mean has changed with it (a flat set's
        # radius is the ball in its hull since 2026-12-08).
        key = json_digest({"code": code_version(), "index": int(example.index),
                           "checkpoint_sha256": model_info["sha256"], "layer": config.layer, "geometry": geometry,
                           "image": hashlib.sha256(image.numpy().tobytes()).hexdigest()})
        head = {"index": int(example.index), "rank": int(example.rank), "screen_radius": float(example.radius)}
        if key in kept.index:
            rows.append({**kept.loc[key].to_dict(), **head, "key": key})
            continue
        log.info("certifying example %d (rank %d), %d of %d: its exact set measured in full", int(example.index),
                 int(example.rank), n, len(picked))
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
    frame = pd.DataFrame(rows, columns=columns)
    # The sampler's own reason says why (not mixed, with its R-hat; or never sampled).
    withheld = frame[~frame["converged"].astype(bool)]
    if len(withheld):
        log.warning("%d of %d certified examples have no sample statistics, their radius and mean width stand: %s",
                    len(withheld), len(frame),
                    "; ".join(f"example {int(i)}: {why}" for i, why in zip(withheld["index"], withheld["reason"],
                                                                            strict=True)))
    return frame
