"""Tasks that turn a results store into tables, figures, a report and UI artifacts."""

from __future__ import annotations

import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from collide.results import report, tables
from collide.results.store import ExperimentStore
from tasks._common import TASK_OPTIONS as _OPTIONS


@task(name="regenerate-tables", **_OPTIONS)
def regenerate(results_root: str) -> dict[str, Any]:
    return tables.regenerate(results_root)


@task(name="publish-artifacts", **_OPTIONS)
def publish(results_root: str, experiment: str) -> dict[str, Any]:
    """The table as a table artifact and the report (figure inlined) as a markdown artifact."""
    store = ExperimentStore(results_root, experiment)
    frame = store.read_table()
    key = re.sub(r"[^a-z0-9-]+", "-", experiment.lower())  # what Prefect allows in a key
    table_id = create_table_artifact(
        table=tables.records(frame), key=f"{key}-table",
        description=f"{experiment}: one row per colliding polytope ({len(frame)} rows)",
    )
    markdown_id = create_markdown_artifact(
        markdown=report.markdown(store), key=f"{key}-report",
        description=f"{experiment}: table and figure",
    )
    out = {"table": str(table_id), "markdown": str(markdown_id)}
    ranking = report.ranking_markdown(store)
    if ranking is not None:  # an auditor's scan: every example ranked, and the gallery
        frame, markdown = ranking
        out["ranking"] = str(create_table_artifact(
            table=tables.records(frame), key=f"{key}-ranking",
            description=f"{experiment}: every example, most blind first ({len(frame)} examples)"))
        out["gallery"] = str(create_markdown_artifact(
            markdown=markdown, key=f"{key}-gallery", description=f"{experiment}: the most and least blind examples"))
    return out
