"""The patch-composition experiment as a Prefect flow: `python -m flows.patches`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import flows  # noqa: F401  (telemetry off before prefect loads)
from collide.config import PatchExperiment
from collide.results.cells import row_summary
from flows._outputs import write_and_publish
from tasks import patches as t


@flow(name="patches", log_prints=True)
def patches_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paper §4: patches with Dask, a pynndescent index, composition vertices, Tables 5-6.

    Args:
        config: fields of :class:`collide.config.PatchExperiment` to override.
    """
    cfg = PatchExperiment.from_dict(config or {})
    logger = get_run_logger()
    logger.info("experiment %s (config %s), results in %s", cfg.name, cfg.digest(), cfg.results_root)
    t.prepare_data(cfg)
    trained = t.train_model(cfg)
    if trained["test_accuracy"] is not None:
        logger.info("model test accuracy %.4f (%s)", trained["test_accuracy"],
                    "reused checkpoint" if trained["reused"] else "trained")
    if trained["model_source"].get("random"):
        logger.warning("VGG-16 has RANDOM weights, as asked: the results say nothing about the paper's model")
    examples = t.pick_examples(trained["model_source"], cfg)
    store = t.build_patches(cfg)
    logger.info("patch store %s: %d patches (%d chunks written, %d reused)", store["path"], store["n_patches"],
                store["chunks_written"], store["chunks_reused"])
    index = t.build_index(cfg)
    logger.info("kNN index %s (%s, %.1f s to build)", index["index"],
                "reused" if index["reused"] else "built", index["build_seconds"])
    for summary in t.solve_rows(trained["model_source"], examples, cfg):
        logger.info("row %d (%s): solved in %.1f s, outcomes %s", summary["row"], summary["init"],
                    summary["seconds"], summary["outcomes"])
    metrics = t.evaluate_row.map(list(range(len(cfg.rows))), config=cfg).result()
    for m in metrics:
        logger.info("%s; kNN recall@%d %.3f", row_summary(m), m["knn_k"], m["knn_recall"])
    outputs = write_and_publish(cfg.results_root, cfg.name, logger)
    return {**outputs, "test_accuracy": trained["test_accuracy"],
            "random_weights": bool(trained["model_source"].get("random"))}


if __name__ == "__main__":
    patches_flow()
