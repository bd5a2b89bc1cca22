"""The ImageNet experiment as a Prefect flow: `python -m flows.imagenet`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import flows  # noqa: F401  (telemetry off before prefect loads)
from collide.config import ImagenetExperiment
from collide.results.cells import format_probability, row_summary
from flows._outputs import write_and_publish
from tasks import imagenet as t


@flow(name="imagenet", log_prints=True)
def imagenet_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paper §3.2: VGG-16 collisions at fc6 in pixel space, Tables 3-4.

    Args:
        config: fields of :class:`collide.config.ImagenetExperiment` to override;
            ``image_root`` must name an ImageNet-style folder.
    """
    cfg = ImagenetExperiment.from_dict(config or {})
    logger = get_run_logger()
    plan = t.prepare(cfg)
    if plan["model_source"]["random"]:
        logger.warning("VGG-16 has RANDOM weights, as asked: the results say nothing about the paper's model")
    logger.info("target %s (%s), other-class init %s (%s)", plan["target_path"], plan["target_class_name"],
                plan["other_path"], plan["other_class_name"])
    for summary in t.solve_rows(plan, cfg):
        logger.info("row %d (init=%s): solved in %.1f s, outcomes %s", summary["row"], summary["init"],
                    summary["seconds"], summary["outcomes"])
    metrics = t.evaluate_row.map(list(range(len(cfg.rows))), config=cfg).result()
    for m in metrics:
        logger.info("%s; target prob %s (%.3f between images)", row_summary(m),
                    format_probability(m["target_top_prob"]), m["dataset_avg_distance"])
    outputs = write_and_publish(cfg.results_root, cfg.name, logger)
    return {**outputs, "random_weights": plan["model_source"]["random"]}


if __name__ == "__main__":
    imagenet_flow()
