"""Rebuild every table, figure and the report from the stores: `collide tables`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import flows  # noqa: F401  (telemetry off before prefect loads)
from tasks import outputs as o


@flow(name="tables", log_prints=True)
def tables_flow(results_root: str = "data/results") -> dict[str, Any]:
    """Regenerate the Parquet tables, PNG figures and ``report.html`` under ``results_root``
    from the Zarr stores alone (no vertex is recomputed), and publish them as artifacts."""
    logger = get_run_logger()
    out = o.regenerate(results_root)
    for name, written in out["experiments"].items():
        logger.info("%s: %d rows -> %s, %s", name, written["rows"], written["table"], written["figure"])
        if written.get("incomplete"):
            logger.warning("%s: %s", name, written["incomplete"])
        o.publish(results_root, name)
    logger.info("report: %s", out["report"])
    return out


if __name__ == "__main__":
    tables_flow()
