"""The tail every experiment flow shares: write the table and figure, then publish them."""

from __future__ import annotations

from typing import Any

from tasks import outputs as o


def write_and_publish(results_root: str, experiment: str, logger: Any) -> dict[str, Any]:
    """Rebuild the table and figure from the store (kept when unchanged), log it, publish the artifacts."""
    outputs = o.write_outputs(results_root, experiment)
    logger.info("%s %s and %s", "kept" if outputs["reused"] else "wrote", outputs["table"], outputs["figure"])
    o.publish(results_root, experiment)
    return outputs
