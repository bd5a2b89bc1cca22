"""Every experiment, by name: the one list the CLI, the Prefect flow and the tests read.

Adding an experiment is a module in :mod:`collide.experiments` (``NAME``, ``SUMMARY``,
``Config``, ``layers``, ``validate``, ``prepare``, ``plan``, ``solve``; see
:mod:`collide.experiments.engine`), one entry here and one deployment in ``prefect.yaml``
(``tests/test_ops_config.py`` checks all three agree).
"""

from __future__ import annotations

from types import ModuleType

from collide.errors import ConfigError
from collide.experiments import (
    baselines,
    frontier,
    imagenet,
    mnist,
    model,
    patches,
    profile,
    scan,
    spread,
    transfer,
)

EXPERIMENTS: dict[str, ModuleType] = {
    m.NAME: m for m in (mnist, patches, imagenet, scan, model, profile, baselines, frontier, transfer, spread)
}

REQUIRED = ("NAME", "SUMMARY", "Config", "layers", "validate", "prepare", "plan", "solve")


def experiment(name: str) -> ModuleType:
    """The experiment module called ``name``."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}: expected one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
