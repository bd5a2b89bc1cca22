"""What marks a run record (``<name>.run.json``: a run's plan, written beside its store),
and the config it runs again: apart from :mod:`collide.results.store` (Zarr, pandas) so
that `collide run --config FILE` reads and refuses a file without them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collide.errors import ConfigError

__all__ = ["RUN_RECORD", "rerun_config"]

RUN_RECORD = "collide run record"


def rerun_config(record: Mapping[str, Any], *, path: str | Path, kind: str) -> dict[str, Any] | None:
    """The config fields to run again from a JSON file ``path`` that holds ``record``: the
    planned config with ``results_root`` the file's folder when it is a run record
    (``<name>.run.json``), None when it is not one (a plain config file).

    Raises:
        ConfigError: the record is of a run of another experiment kind than ``kind``.
    """
    if record.get("kind") != RUN_RECORD:
        return None
    if record.get("experiment") != kind:
        raise ConfigError(f"{path} records a run of {record.get('experiment')!r}, not {kind!r}: "
                         f"collide run {record.get('experiment')} --config {path}")
    return {**record["config"], "results_root": str(Path(path).parent)}
