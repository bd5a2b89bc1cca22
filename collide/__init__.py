"""collide: find, verify and measure feature collisions in neural networks.

After Li, Zhang, Malik, "Approximate Feature Collisions in Neural Nets" (NeurIPS 2019).
The public API is :func:`find_polytope` and :func:`measure` (in memory, any model), and
:func:`scan` (every example of a dataset, ranked by how blind the model is around it);
the experiments of the paper live in :mod:`collide.experiments`. The library never
imports Prefect; orchestration lives in ``tasks/`` and ``flows/``.

The names below are imported on first use: ``import collide.errors`` (the command line's
start, say) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collide.api import (
        Geometry,
        Measurement,
        Polytope,
        check_polytope,
        collision_geometry,
        collision_size,
        find_polytope,
        find_polytopes,
        measure,
    )
    from collide.audit import ScanConfig, scan
    from collide.config import ExactConfig, GeometryConfig, GradientConfig, PaperConfig
    from collide.errors import CollideError
    from collide.solvers import ExactSolver, GradientSolver, PaperSolver, Solver
    from collide.taps import layers, preactivation, tap

# Each public name and the module that holds it.
_HOMES = {
    "CollideError": "collide.errors",
    "ExactConfig": "collide.config",
    "ExactSolver": "collide.solvers",
    "Geometry": "collide.api",
    "GeometryConfig": "collide.config",
    "GradientConfig": "collide.config",
    "GradientSolver": "collide.solvers",
    "Measurement": "collide.api",
    "PaperConfig": "collide.config",
    "PaperSolver": "collide.solvers",
    "Polytope": "collide.api",
    "ScanConfig": "collide.audit",
    "Solver": "collide.solvers",
    "check_polytope": "collide.api",
    "collision_geometry": "collide.api",
    "collision_size": "collide.api",
    "find_polytope": "collide.api",
    "find_polytopes": "collide.api",
    "measure": "collide.api",
    "scan": "collide.audit",
    "layers": "collide.taps",
    "preactivation": "collide.taps",
    "tap": "collide.taps",
}

__all__ = [
    "CollideError",
    "ExactConfig",
    "ExactSolver",
    "Geometry",
    "GeometryConfig",
    "GradientConfig",
    "GradientSolver",
    "Measurement",
    "PaperConfig",
    "PaperSolver",
    "Polytope",
    "ScanConfig",
    "Solver",
    "check_polytope",
    "collision_geometry",
    "collision_size",
    "find_polytope",
    "find_polytopes",
    "measure",
    "scan",
    "layers",
    "preactivation",
    "tap",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'collide' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
