"""Where data is thin (paper §5.1): does collision size predict misclassification or low
confidence on the test set?

For each training seed's MLP (the shipped checkpoints of seeds 0-4 where they match), a
seeded sample of misclassified and of correctly classified test images is scanned
(:func:`collide.scan`, one row per seed: :mod:`collide.experiments.scanned`).
``summarize`` gives, for each collision size (inscribed radius, gradient spread,
dimension), the AUROC of "larger set, misclassified" and of "larger set, low
confidence", with a percentile bootstrap interval per seed and a t-interval over seeds;
one minus the confidence is the reference score for misclassification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from collide.datasets.mnist import ensure_mnist, load_mnist
from collide.experiments import mnist
from collide.experiments.configs.thin import ThinExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.experiments.scanned import read_scans, scan_config, scan_folder, scan_row, seeds_context
from collide.models.zoo import load_checkpoint
from collide.results.detection import detection_summary, draw_detection
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary

NAME = "thin"
Config = ThinExperiment
OUTPUTS = SUMMARY_OUTPUTS
layers = mnist.layers

QUESTIONS = {"misclassified": "wrong", "low confidence": "unsure"}
SIZES = {"radius": "radius", "spread": "spread", "dim": "dim"}
SCORES = {"misclassified": {**SIZES, "1 - confidence": "doubt"}, "low confidence": SIZES}


def validate(*, config: ThinExperiment) -> None:
    mnist.validate(config=config)


def pick(config: ThinExperiment, pred: torch.Tensor, labels: torch.Tensor, seed: int) -> list[int]:
    """``wrong_scanned`` misclassified and ``right_scanned`` correctly classified test
    indices (all there are, if fewer), drawn with ``subset_seed + seed``."""
    gen = torch.Generator().manual_seed(config.subset_seed + seed)
    out = []
    for mask, n in ((pred != labels, config.wrong_scanned), (pred == labels, config.right_scanned)):
        pool = torch.nonzero(mask).flatten()
        out += pool[torch.randperm(len(pool), generator=gen)[:n]].tolist()
    return sorted(out)


def prepare(*, config: ThinExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST, each seed's classifier (shipped, or trained and reused), the examples to scan."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    test = load_mnist(config.data_root, "test")
    seeds = {}
    for k, seed in enumerate(config.seeds):
        progress("checkpoints (seeds)", k, len(config.seeds))
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        trained = mnist.train_model(config=cfg, progress=progress)
        model, _ = load_checkpoint(trained["checkpoint"])
        with torch.no_grad():
            pred = model(test.images).argmax(1)
        seeds[str(seed)] = {**trained, "examples": pick(config, pred, test.labels, seed)}
    progress("checkpoints (seeds)", len(config.seeds), len(config.seeds))
    return seeds_context(seeds, test.images, config=config)


def plan(context: dict[str, Any], *, config: ThinExperiment) -> list[Job]:
    """One job per seed: its scan and its row."""
    return [job(f"seed-{seed}-scan", [i], seed=seed, examples=context["seeds"][str(seed)]["examples"])
            for i, seed in enumerate(config.seeds)]


def solve(job: Job, context: dict[str, Any], *, config: ThinExperiment, progress: Progress = no_progress) -> None:
    seed, examples = job.spec["seed"], job.spec["examples"]
    test = load_mnist(config.data_root, "test")
    scan_row(config, row=job.rows[0], seed=seed, checkpoint=context["seeds"][str(seed)]["checkpoint"],
             images=test.images, labels=test.labels, examples=examples, extra={},
             dataset_distance=context["dataset_avg_distance"], progress=progress,
             measure=scan_config(config), folder=scan_folder(config, seed), model_name=f"mnist-{config.train.arch}",
             attrs={"split": "test", "scanned": len(examples)})


def scans(store: ExperimentStore, *, low_confidence: float) -> Any:
    """The scans of every seed with the questions' columns: ``wrong`` (misclassified),
    ``unsure`` (confidence below ``low_confidence``), and ``doubt`` (one minus the confidence)."""
    frame = read_scans(store)
    return frame.assign(wrong=frame["correct"] == 0, unsure=frame["confidence"] < low_confidence,
                        doubt=1 - frame["confidence"])


def summarize(*, config: ThinExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` (:func:`collide.results.detection.detection_summary`) and its figure."""
    store = ExperimentStore.of(config)
    frame = scans(store, low_confidence=config.low_confidence)
    summary = detection_summary(frame, questions=QUESTIONS, scores=SCORES, top_k=config.top_k,
                                n_boot=config.n_boot)
    title = (f"{config.name}: {config.wrong_scanned} misclassified and {config.right_scanned} correct test images "
             f"per seed scanned at {config.layer}, {len(config.seeds)} seeds; low confidence < "
             f"{config.low_confidence:g}")
    return write_summary(store, summary, lambda s: draw_detection(s, frame, scatter=("confidence", "radius", "wrong"),
                                                                   title=title))
