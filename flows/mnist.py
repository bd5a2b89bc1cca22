"""The MNIST experiment as a Prefect flow: `python -m flows.mnist`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped

import flows  # noqa: F401  (telemetry off before prefect loads)
from collide.config import MnistExperiment
from collide.results.cells import row_summary
from flows._outputs import write_and_publish
from flows.runner import dask_runner
from tasks import mnist as t


@flow(name="mnist", log_prints=True, task_runner=dask_runner())
def mnist_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paper §3.1: train the MLP, find colliding polytopes, write Tables 1-2.

    Each target's polytopes are separate jobs, fanned out over Dask; a job reuses every
    stage already finished with the same inputs, so a rerun after a crash redoes only
    what was cut off, and a rerun of a finished experiment writes nothing.

    Args:
        config: fields of :class:`collide.config.MnistExperiment` to override.
    """
    cfg = MnistExperiment.from_dict(config or {})
    logger = get_run_logger()
    logger.info("experiment %s (config %s): %d target(s), %d rows, results in %s",
                cfg.name, cfg.digest(), cfg.n_targets, cfg.n_rows, cfg.results_root)
    t.prepare_data(cfg)
    trained = t.train_model(cfg)
    logger.info("model test accuracy %.4f (%s)", trained["test_accuracy"],
                "reused checkpoint" if trained["reused"] else "trained")
    jobs = t.plan_jobs(trained["checkpoint"], cfg)
    logger.info("fanning out %d polytope jobs", len(jobs))
    done = t.polytope_job.map(jobs, checkpoint=unmapped(trained["checkpoint"]), config=unmapped(cfg)).result()
    rows = [row for job in done for row in job]
    reused = sum(not r["solved"] and not r["evaluated"] for r in rows)
    for m in rows:
        logger.info("%s, target %d: %s", row_summary(m), m["target_index"],
                    "reused" if not (m["solved"] or m["evaluated"]) else "computed")
    logger.info("%d of %d rows were already finished and reused", reused, len(rows))
    outputs = write_and_publish(cfg.results_root, cfg.name, logger)
    return {**outputs, "test_accuracy": trained["test_accuracy"], "reused_rows": reused}


if __name__ == "__main__":
    mnist_flow()
