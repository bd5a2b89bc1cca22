"""Tasks of the ImageNet experiment, one per stage of :mod:`collide.experiments.imagenet`."""

from __future__ import annotations

from typing import Any

from prefect import task

from collide.config import ImagenetExperiment
from collide.experiments import imagenet as stages
from tasks._common import TASK_OPTIONS as _OPTIONS
from tasks._common import logging_progress


@task(name="prepare", **_OPTIONS)
def prepare(config: ImagenetExperiment) -> dict[str, Any]:
    return stages.prepare(config=config)


@task(name="solve-vertices", **_OPTIONS)
def solve_rows(plan: dict[str, Any], config: ImagenetExperiment) -> list[dict[str, Any]]:
    return stages.solve_rows(plan, config=config, progress=logging_progress())


@task(name="evaluate-polytope", **_OPTIONS)
def evaluate_row(row: int, config: ImagenetExperiment) -> dict[str, Any]:
    return stages.evaluate_row(row, config=config)
