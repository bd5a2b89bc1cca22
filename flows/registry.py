"""Every experiment in one place: its config class, its library stages, its flow.

Adding an experiment is one entry here; the CLI and the deployments read this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Experiment:
    name: str
    config: str  # "module:Class" of the frozen config
    stages: str  # module with validate(*, config) and run(*, config, progress)
    flow: str  # "module:function" of the Prefect flow
    summary: str

    def _load(self, ref: str) -> Any:
        module, _, attr = ref.partition(":")
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod

    def config_class(self) -> Any:
        return self._load(self.config)

    def stages_module(self) -> Any:
        return self._load(self.stages)

    def flow_function(self) -> Any:
        return self._load(self.flow)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("mnist", "collide.config:MnistExperiment", "collide.mnist", "flows.mnist:mnist_flow",
                   "MNIST MLP, gradient and exact polytopes at the first hidden layer (Tables 1-2)"),
        Experiment("patches", "collide.config:PatchExperiment", "collide.patch_experiment",
                   "flows.patches:patches_flow",
                   "patch-composition polytopes, MNIST + LeNet-5 at fc1 (the offline Tables 5-6)"),
        Experiment("imagenet", "collide.config:ImagenetExperiment", "collide.imagenet",
                   "flows.imagenet:imagenet_flow",
                   "VGG-16 at fc6 in pixel space on an ImageNet-style folder (Tables 3-4)"),
    )
}
