"""collide: find, verify and measure feature collisions in ReLU networks.

After Li, Zhang, Malik, "Approximate Feature Collisions in Neural Nets" (NeurIPS 2019).
The library never imports Prefect; orchestration lives in ``tasks/`` and ``flows/``.
"""

from collide.config import ExactConfig, GradientConfig, MnistExperiment, SampleConfig, TrainConfig
from collide.errors import CollideError
from collide.exact import solve_exact
from collide.polytope import evaluate, sample_weights
from collide.taps import preactivation, tap
from collide.vertices import solve_gradient

__all__ = [
    "CollideError",
    "ExactConfig",
    "GradientConfig",
    "MnistExperiment",
    "SampleConfig",
    "TrainConfig",
    "evaluate",
    "preactivation",
    "sample_weights",
    "solve_exact",
    "solve_gradient",
    "tap",
]
