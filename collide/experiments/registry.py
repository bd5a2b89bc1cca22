"""Every experiment, by name: the one list the CLI, the Prefect flow and the tests read.

Adding an experiment is a module in :mod:`collide.experiments` named as the experiment
(satisfying :class:`collide.experiments.contract.Experiment`: ``NAME``, ``Config``,
``layers``, ``validate``, ``prepare``, ``plan``, ``solve``; see
:mod:`collide.experiments.engine`), its config class in a module of the same name under
:mod:`collide.experiments.configs`, one entry here and one deployment in ``prefect.yaml``
(``tests/flows/test_ops_config.py`` checks all three agree).

Names and summaries are listed without importing any experiment (each pulls in torch and
more): an experiment's module is imported when it is first asked for, and its config
class comes from a module of its own (:func:`config`, under
:mod:`collide.experiments.configs`, free of torch), so that ``collide --help``, ``collide
config show`` and a refused input answer at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from collide.errors import ConfigError, InternalError

if TYPE_CHECKING:
    from collide.experiments.contract import Experiment, ExperimentConfig

#: Each experiment's one-line summary, by name (the name of its module too).
SUMMARIES: dict[str, str] = {
    "mnist": "MNIST MLP, paper §3.1 (Tables 1-2); many targets with targets_per_class",
    "patches": ("patch-composition polytopes, paper §4 (Tables 5-6); offline on MNIST + LeNet-5 at fc1, or an image "
                "folder + VGG-16 (fc6) with dataset=folder"),
    "imagenet": "VGG-16 at fc6 in pixel space on an ImageNet-style folder, paper §3.2 (Tables 3-4)",
    "scan": "the auditor's scan: examples of an MNIST split ranked by collision size, with a gallery (paper §5)",
    "model": ("any classifier (torchvision:NAME or module:factory) at any activation call, on an image folder or "
              "one image"),
    "profile": ("collision size at every ReLU layer of the MLP and LeNet-5: N+, dim C, inscribed radius, spread, "
                "success"),
    "baselines": ("baselines side by side: gradient hull, exact region, random ball, null space, code inversion "
                  "(MNIST)"),
    "frontier": "approximation frontier: closest point to another digit within feature error ε of a 7 (relu1)",
    "transfer": "collisions across models: exact sets shared by two networks, and how one model's polytopes transfer",
    "spread": ("spread over training seeds x targets: mean, std and 95% interval of every Table 2 column and "
               "collision-set size, the paper's values against our range"),
    "activations": ("the MLP with ReLU, tanh, sigmoid, ELU or GELU: valid vertices, spread, success and samples' "
                    "feature error at fc1 over seeds x targets, and spread against the saturation tolerance"),
    "mislabelled": ("paper §5.3: flip 1% of the training labels, train, scan: do large collision sets single out the "
                    "flipped examples (AUROC, precision at k against training loss and confidence)"),
    "thin": ("paper §5.1: does collision size predict misclassification or low confidence on the test set (AUROC "
             "with intervals over seeds)"),
    "regularisers": ("paper §5.2: the MLP trained with a cosine penalty between the rows of W at several strengths "
                     "and with weight decay: test accuracy against collision-set dimension, radius and mean width"),
}


def experiment(name: str) -> Experiment:
    """The experiment module called ``name``, imported now if it was not yet."""
    if name not in SUMMARIES:
        raise ConfigError(f"unknown experiment {name!r}: expected one of {sorted(SUMMARIES)}")
    module = importlib.import_module(f"{__package__}.{name}")
    if getattr(module, "NAME", None) != name:
        raise InternalError(f"{module.__name__} names itself {getattr(module, 'NAME', None)!r}, not {name!r}")
    return module  # type: ignore[return-value]  # a module satisfies the protocol (tests/flows/test_ops_config.py)


def config(name: str) -> type[ExperimentConfig]:
    """The config class of experiment ``name``, from its own module under
    :mod:`collide.experiments.configs`, which imports no torch: building, showing and
    refusing a config never loads the experiment (the experiment's ``Config`` is this class)."""
    if name not in SUMMARIES:
        raise ConfigError(f"unknown experiment {name!r}: expected one of {sorted(SUMMARIES)}")
    return importlib.import_module(f"{__package__}.configs.{name}").Config  # type: ignore[no-any-return]


class _Experiments(Mapping[str, "Experiment"]):
    """Names to modules: listing names imports nothing, looking one up imports that one."""

    def __getitem__(self, name: str) -> Experiment:
        if name not in SUMMARIES:
            raise KeyError(name)
        return experiment(name)

    def __iter__(self) -> Iterator[str]:
        return iter(SUMMARIES)

    def __len__(self) -> int:
        return len(SUMMARIES)

    def __contains__(self, name: object) -> bool:
        return name in SUMMARIES


#: Every experiment by name, in the order of :data:`SUMMARIES`.
EXPERIMENTS: Mapping[str, Experiment] = _Experiments()
