"""Every experiment, in one place: how the CLI runs it and which flow deploys it.

Adding an experiment is one entry here and one deployment in ``prefect.yaml`` (a test
checks that the two agree). ``collide tables`` and ``collide status`` need no entry:
they work from any ``<name>.zarr`` store.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Experiment:
    """Dotted ``module:attribute`` paths, imported only when used (Prefect loads slowly)."""

    name: str
    flow: str  # the Prefect flow, taking ``config: dict | None``
    config: str  # the frozen config class, with ``from_dict``
    plain: str  # the same pipeline in plain Python: ``run(*, config, progress)``
    summary: str
    validate: str | None = None  # ``validate(*, config)``: fails on bad input before any work

    @property
    def entrypoint(self) -> str:
        """The flow as ``prefect.yaml`` names it: ``path/to/file.py:function``."""
        module, attr = self.flow.split(":")
        return f"{module.replace('.', '/')}.py:{attr}"

    def load(self, which: str) -> Any:
        module, attr = getattr(self, which).split(":")
        return getattr(importlib.import_module(module), attr)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            name="mnist",
            flow="flows.mnist:mnist_flow",
            config="collide.config:MnistExperiment",
            plain="collide.experiments.mnist_jobs:run",
            summary="MNIST MLP, paper §3.1 (Tables 1-2); many targets with targets_per_class",
            validate="collide.experiments.mnist:validate",
        ),
        Experiment(
            name="patches",
            flow="flows.patches:patches_flow",
            config="collide.config:PatchExperiment",
            plain="collide.experiments.patches:run",
            summary="patch-composition polytopes, paper §4 (Tables 5-6); offline on MNIST + LeNet-5 at fc1, "
            "or an image folder + VGG-16 with dataset=folder",
            validate="collide.experiments.patches:validate",
        ),
        Experiment(
            name="imagenet",
            flow="flows.imagenet:imagenet_flow",
            config="collide.config:ImagenetExperiment",
            plain="collide.experiments.imagenet:run",
            summary="VGG-16 at fc6 in pixel space on an ImageNet-style folder, paper §3.2 (Tables 3-4)",
            validate="collide.experiments.imagenet:validate",
        ),
    )
}
