"""Vulnerable training examples (paper §5.3): do large collision sets single out flipped labels?

For each training seed: a share of the training labels is flipped (seeded), the MLP is
trained on them (:mod:`collide.experiments.variants`), and every flipped image with a
seeded sample of clean ones is scanned (:func:`collide.scan`, one row per seed:
:mod:`collide.experiments.scanned`). ``summarize`` asks whether each score ranks the
flipped images first: the collision sizes (inscribed radius, gradient spread, dimension)
against the obvious baselines, the training loss on the label trained on and one minus
the confidence; AUROC with a percentile bootstrap interval per seed and a t-interval
over seeds, and the precision at k.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from collide.datasets.mnist import Split, ensure_mnist, load_mnist
from collide.experiments import mnist
from collide.experiments.configs.mislabelled import MislabelledExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.experiments.scanned import read_scans, scan_config, scan_folder, scan_row, seeds_context
from collide.experiments.variants import flip_labels, variant_checkpoint
from collide.models.zoo import load_checkpoint, train
from collide.results.detection import detection_summary, draw_detection
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary

NAME = "mislabelled"
Config = MislabelledExperiment
OUTPUTS = SUMMARY_OUTPUTS
layers = mnist.layers

QUESTIONS = {"flipped label": "flipped"}
# Each score, higher meaning more suspect, as a column of the scans' frame.
SCORES = {"flipped label": {"radius": "radius", "spread": "spread", "dim": "dim", "training loss": "loss",
                            "1 - confidence": "doubt"}}


def validate(*, config: MislabelledExperiment) -> None:
    mnist.validate(config=config)


def seed_train(config: MislabelledExperiment, seed: int) -> MislabelledExperiment:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


def trained_on(config: MislabelledExperiment, total: int) -> int:
    """How many of the ``total`` training examples the models are trained on (the first ones)."""
    return total if config.train.train_limit is None else min(config.train.train_limit, total)


def flips(config: MislabelledExperiment, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels seed ``seed``'s model is trained on, and the flipped indices."""
    return flip_labels(labels, fraction=config.flip_fraction, n=trained_on(config, len(labels)),
                       seed=config.flip_seed + seed)


def scanned(config: MislabelledExperiment, flipped: torch.Tensor, n: int, seed: int) -> list[int]:
    """Every flipped index and ``clean_scanned`` others of the first ``n``, drawn with ``subset_seed + seed``."""
    clean = torch.ones(n, dtype=torch.bool)
    clean[flipped] = False
    pool = torch.nonzero(clean).flatten()
    gen = torch.Generator().manual_seed(config.subset_seed + seed)
    picked = pool[torch.randperm(len(pool), generator=gen)[: config.clean_scanned]]
    return sorted(int(i) for i in torch.cat([flipped, picked]))


def prepare(*, config: MislabelledExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST, each seed's model trained on its flipped labels (or reused), the examples to scan."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    train_split = load_mnist(config.data_root, "train")
    seeds = {}
    for k, seed in enumerate(config.seeds):
        progress("checkpoints (seeds)", k, len(config.seeds))
        labels, flipped = flips(config, train_split.labels, seed)
        cfg = seed_train(config, seed)
        variant = {"flip_fraction": float(config.flip_fraction), "flip_seed": config.flip_seed + seed,
                   "flipped": len(flipped)}
        trained = variant_checkpoint(
            cfg, variant=variant, progress=progress,
            fit=lambda tr, te, labels=labels, cfg=cfg: train(Split(tr.images, labels), te, config=cfg.train))
        seeds[str(seed)] = {**trained, "flipped": [int(i) for i in flipped],
                            "examples": scanned(config, flipped, trained_on(config, len(train_split)), seed)}
    progress("checkpoints (seeds)", len(config.seeds), len(config.seeds))
    return seeds_context(seeds, load_mnist(config.data_root, "test").images, config=config)


def plan(context: dict[str, Any], *, config: MislabelledExperiment) -> list[Job]:
    """One job per seed: its scan and its row."""
    return [job(f"seed-{seed}-scan", [i], seed=seed, examples=context["seeds"][str(seed)]["examples"],
                flipped=context["seeds"][str(seed)]["flipped"]) for i, seed in enumerate(config.seeds)]


def solve(job: Job, context: dict[str, Any], *, config: MislabelledExperiment,
          progress: Progress = no_progress) -> None:
    seed, examples = job.spec["seed"], job.spec["examples"]
    checkpoint = context["seeds"][str(seed)]["checkpoint"]
    split = load_mnist(config.data_root, "train")
    labels, flipped = flips(config, split.labels, seed)
    if [int(i) for i in flipped] != job.spec["flipped"]:
        raise RuntimeError(f"seed {seed}: the flipped labels drawn now differ from those the model was trained on")
    where = torch.as_tensor(examples)
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        logits = model(split.images[where])
        loss = F.cross_entropy(logits, labels[where], reduction="none").numpy()
    is_flipped = np.isin(np.asarray(examples), flipped.numpy())
    scan_row(config, row=job.rows[0], seed=seed, checkpoint=checkpoint, images=split.images, labels=labels,
             examples=examples, dataset_distance=context["dataset_avg_distance"], progress=progress,
             measure=scan_config(config), folder=scan_folder(config, seed),
             model_name=f"mnist-{config.train.arch}-flipped-labels",  # not the paper's model: beside none of its rows
             extra={"flipped": is_flipped, "loss": loss, "true_label": split.labels[where].numpy()},
             attrs={"split": "train", "flipped_count": len(flipped), "scanned": len(examples)})


def scans(store: ExperimentStore) -> Any:
    """The scans of every seed, with the baselines' scores: ``doubt`` is one minus the confidence."""
    frame = read_scans(store)
    return frame.assign(flipped=frame["flipped"].astype(bool), doubt=1 - frame["confidence"])


def summarize(*, config: MislabelledExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` (:func:`collide.results.detection.detection_summary`) and its figure."""
    store = ExperimentStore.of(config)
    frame = scans(store)
    summary = detection_summary(frame, questions=QUESTIONS, scores=SCORES, top_k=config.top_k,
                                n_boot=config.n_boot)
    title = (f"{config.name}: {config.flip_fraction:.0%} of {config.train.train_limit or 60000} training labels "
             f"flipped, every flipped and {config.clean_scanned} clean images scanned at {config.layer}, "
             f"{len(config.seeds)} seeds")
    return write_summary(store, summary, lambda s: draw_detection(s, frame, scatter=("loss", "radius", "flipped"),
                                                                   title=title))
