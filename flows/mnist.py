"""The MNIST experiment as a Prefect flow: `python -m flows.mnist`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import flows  # noqa: F401  (telemetry off before prefect loads)
from collide.config import MnistExperiment
from tasks import mnist as t


@flow(name="mnist", log_prints=True)
def mnist_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paper §3.1: train the MLP, find colliding polytopes, write Tables 1-2.

    Args:
        config: fields of :class:`collide.config.MnistExperiment` to override.
    """
    cfg = MnistExperiment.from_dict(config or {})
    logger = get_run_logger()
    logger.info("experiment %s (config %s), results in %s", cfg.name, cfg.digest(), cfg.results_root)
    t.prepare_data(cfg)
    trained = t.train_model(cfg)
    logger.info("model test accuracy %.4f (%s)", trained["test_accuracy"],
                "reused checkpoint" if trained["reused"] else "trained")
    examples = t.pick_examples(trained["checkpoint"], cfg)
    gradient = [r for r, s in enumerate(cfg.rows) if s.method == "gradient"]
    exact = [r for r, s in enumerate(cfg.rows) if s.method == "exact"]
    solved = [t.solve_rows.submit([r], trained["checkpoint"], examples, cfg) for r in exact]
    if gradient:
        solved.append(t.solve_rows.submit(gradient, trained["checkpoint"], examples, cfg))
    for future in solved:
        for summary in future.result():
            logger.info("row %d (%s, init=%s): solved in %.2f s, outcomes %s", summary["row"],
                        summary["method"], summary["init"], summary["seconds"], summary["outcomes"])
    metrics = t.evaluate_row.map(list(range(len(cfg.rows))), config=cfg).result()
    for m in metrics:
        logger.info("row %d: success %.3f, vertex distance %.2f, feature error %.1e",
                    m["row"], m["success_rate"], m["vertex_avg_distance"], m["max_feature_rel_error"])
    outputs = t.write_outputs(cfg)
    logger.info("wrote %s and %s", outputs["table"], outputs["figure"])
    return {**outputs, "test_accuracy": trained["test_accuracy"]}


if __name__ == "__main__":
    mnist_flow()
