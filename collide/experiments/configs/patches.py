"""The patch experiment's config (:mod:`collide.experiments.patches`): patch-composition
polytopes on MNIST + LeNet-5, or an image folder + VGG-16. Imports no torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from collide.checks import choice, non_negative, require
from collide.config import GradientConfig, KnnConfig, PatchConfig, SampleConfig, TrainConfig
from collide.experiments.configs.mnist import DATASET, arch_layer_names, check_data_root, module_layer
from collide.experiments.contract import ExperimentConfig

DEFAULT_LAYERS = {"mnist": "fc1", "folder": "fc6"}


PATCH_ROWS = ("self", "other")

# Logits move in softmax units, so the solver takes larger steps than in pixel space.
# A composition whose feature error has not fallen by 1% in 200 steps, without meeting
# the criterion, will not meet it (it would need some 10^4 steps to halve): it stops,
# outcome "stalled", instead of running on to max_steps.
PATCH_GRADIENT = GradientConfig(lr=0.1, lr_end=1e-3, max_steps=1500, growth=1.01, min_steps=50, stall_window=200)


@dataclass(frozen=True, kw_only=True)
class PatchExperiment(ExperimentConfig):
    """Patch-composition collisions (paper §4, Tables 5-6), embedded on MNIST + LeNet-5.

    The start image is the first correctly classified test image of ``target_label``.
    Row ``self`` makes compositions of its neighbours' patches collide with the start
    image itself; row ``other`` with the first test image of another label (the paper's
    church -> cleaver). Collisions are sought at ``layer`` (LeNet-5's first fully
    connected layer: the analogue of VGG's fc6). ``targets_per_class`` > 0 takes that
    many start images of every class instead of one, start ``k`` owning rows
    ``k*len(rows)`` on.

    ``candidates_from="start"`` (the default, the paper's candidate set): each window's
    candidates are the start image's own patch and its ``knn.k`` nearest store patches,
    for both rows. On MNIST this ``other`` row finds no collision, and says so: a 7's
    patches and their neighbours hold none of a 2's strokes (per window, the best single
    candidate is hardly nearer the 2's window than the 7's own patch), so the solver's
    best composition stays a 7 far from the target's features: no vertex is valid and
    the success rate is NaN (LeNet-5 at fc1, k=10, 8x8 patches at stride 4).

    ``"start+target-neighbours"`` (a labelled variant, not the paper's) gives the
    ``other`` row also the ``knn.k`` nearest store patches of each of the target's
    windows, leaving out the target's own patches and every store patch byte-identical
    to one of them: with those, one-hot weights would rebuild the target and the
    collision would be reachable by construction. The row's ``target_weight_share``
    says how much of the composition the target-derived candidates carry: in the same
    setting nearly all of it, with vertices close to the 2. Near-copies of
    the target's patches still rebuild it closely; read that row as such, not as the
    paper's result.

    ``tv_weight`` weighs the total variation of the weight maps. The authors' 100 (beside
    β = 10) is for their scale; here 0.01 held the compositions so close to the start
    that on the ``self`` row most vertices did not move their pushed unit by the push
    margin, while 0.001 leaves most of them valid.

    ``dataset="folder"`` runs the paper's setting instead: images of ``image_root`` (an
    ImageNet-style folder) at ``image_size``, VGG-16 with ``weights`` (see
    :class:`~collide.experiments.imagenet.ImagenetExperiment`), and ``layer`` then
    defaults to ``fc6``; the start is the first image of the first class and the other
    target the first image of another class.

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-vertices.png under results_root.
        layer: the activation layer where features collide ("": fc1 on MNIST, fc6 with dataset=folder).
        n_vertices: vertices per polytope, each pushing one of the target's non-positive units.
        target_label: the digit whose first correctly classified test image is the start (dataset=mnist).
        rows: self (compositions collide with the start image) and/or other (with another label's image).
        tv_weight: weight of the total variation of the composition's weight maps.
        own_logit: initial logit of each window's own patch (the others start at 0).
        candidates_from: start (the paper's candidates) or start+target-neighbours (a labelled variant).
        dataset: mnist (LeNet-5, offline) or folder (an ImageNet-style folder with VGG-16, as in the paper).
        image_root: the ImageNet-style folder (one subfolder per class), with dataset=folder.
        image_size: image side in pixels, with dataset=folder.
        weights: VGG-16's weights with dataset=folder: torchvision, a state dict file, or random.
        n_dataset_images: images sampled for the dataset's average distance, with dataset=folder.
        data_root: folder of the MNIST IDX files (raw or .gz).
        checkpoint_dir: where trained classifiers are kept and reused.
        cache_root: where the patch store and kNN index are kept and reused.
        results_root: where the stores, tables and figures go.
        device: auto (a GPU where there is one, else the CPU), cpu or cuda[:n].
        allow_download: fetch MNIST when data_root lacks it (into another folder than the default only if set here).
        train: how LeNet-5 is trained (or which shipped checkpoint matches), with dataset=mnist.
        patch: how patches are cut from the corpus into the patch store.
        knn: the nearest-neighbour search over the patch store.
        gradient: the gradient solver's settings over composition logits.
        sample: how each polytope's samples are drawn and the dataset's distance measured.
        targets_per_class: 0: one start image; n > 0: the first n of every class.
    """

    name: str = "patches"
    layer: str = ""
    n_vertices: int = 5
    target_label: int = 7
    rows: tuple[str, ...] = PATCH_ROWS
    tv_weight: float = 0.001
    own_logit: float = 5.0
    candidates_from: str = "start"
    dataset: str = "mnist"
    image_root: str = "data/raw/imagenet"
    image_size: int = 224
    weights: str = "torchvision"
    n_dataset_images: int = 200
    data_root: str = "data/raw/mnist"
    checkpoint_dir: str = "data/checkpoints"
    cache_root: str = "data/cache"
    results_root: str = "data/results"
    device: str = "auto"
    allow_download: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(arch="lenet5", epochs=4, min_accuracy=0.98))
    patch: PatchConfig = field(default_factory=PatchConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    gradient: GradientConfig = PATCH_GRADIENT
    sample: SampleConfig = field(default_factory=SampleConfig)
    targets_per_class: int = 0

    CANDIDATE_SETS: ClassVar[tuple[str, ...]] = ("start", "start+target-neighbours")
    LAYERS_NOTE: ClassVar[str] = ("with dataset=folder (VGG-16): the layer defaults to fc6; see `collide config show "
                                  "imagenet`")

    def digest_layer(self) -> str:
        if self.dataset == "mnist":
            return module_layer(self.train.arch, self.layer)
        from collide.models.vgg import NormalisedVGG  # torch: for a digest, never to build or refuse a config

        return NormalisedVGG.collide_aliases.get(self.layer, self.layer)

    def listed_layers(self) -> list[str] | None:
        return arch_layer_names(self.train.arch) if self.dataset == "mnist" else None

    def check_request(self, given: Mapping[str, Any]) -> None:
        if self.dataset == DATASET:
            check_data_root(self, download_asked=given.get("allow_download") is True)

    def __post_init__(self) -> None:
        if not self.layer:  # the default follows the dataset: LeNet-5's fc1, VGG-16's fc6
            object.__setattr__(self, "layer", DEFAULT_LAYERS.get(self.dataset, "fc1"))
        self.check_common()
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        require(all(r in PATCH_ROWS for r in self.rows), f"expected rows from {PATCH_ROWS}, got {self.rows!r}")
        non_negative("tv_weight", self.tv_weight)
        choice("candidates_from", self.candidates_from, self.CANDIDATE_SETS)
        choice("dataset", self.dataset, ("mnist", "folder"))
        require(self.image_size >= 32, f"expected image_size >= 32, got {self.image_size}")




Config = PatchExperiment
