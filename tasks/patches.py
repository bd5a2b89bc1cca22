"""Tasks of the patch-composition experiment, one per stage of :mod:`collide.experiments.patches`."""

from __future__ import annotations

from typing import Any

from prefect import task

from collide.config import PatchExperiment
from collide.experiments import patches as stages
from tasks._common import TASK_OPTIONS as _OPTIONS
from tasks._common import logging_progress


@task(name="prepare-data", **_OPTIONS)
def prepare_data(config: PatchExperiment) -> dict[str, Any]:
    return stages.prepare_data(config=config)


@task(name="train-model", **_OPTIONS)
def train_model(config: PatchExperiment) -> dict[str, Any]:
    return stages.train_model(config=config, progress=logging_progress())


@task(name="pick-examples", **_OPTIONS)
def pick_examples(model_source: dict[str, Any], config: PatchExperiment) -> dict[str, Any]:
    return stages.pick_examples(model_source, config=config)


@task(name="extract-patches", **_OPTIONS)
def build_patches(config: PatchExperiment) -> dict[str, Any]:
    return stages.build_patches(config=config, progress=logging_progress())


@task(name="build-index", **_OPTIONS)
def build_index(config: PatchExperiment) -> dict[str, Any]:
    return stages.build_index(config=config, progress=logging_progress())


@task(name="solve-compositions", **_OPTIONS)
def solve_rows(
    model_source: dict[str, Any], examples: dict[str, Any], config: PatchExperiment
) -> list[dict[str, Any]]:
    return stages.solve_rows(model_source, examples, config=config, progress=logging_progress())


@task(name="evaluate-polytope", **_OPTIONS)
def evaluate_row(row: int, config: PatchExperiment) -> dict[str, Any]:
    return stages.evaluate_row(row, config=config)
