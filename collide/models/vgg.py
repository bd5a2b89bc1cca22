"""VGG-16 on [0, 1] RGB images, with fc6/fc7 named, and where its weights come from.

The authors fed Caffe's VGG-16 RGB in 0-255 minus the ImageNet mean. torchvision's
IMAGENET1K_V1 weights expect (x - mean) / std on [0, 1] inputs instead, so the wrapper
applies that normalisation inside the model: solvers work on [0, 1] pixels and keep
them there, and distances are reported in those [0, 1] units, like every experiment's
(the paper's 0-255 figures are divided by 255 where they are shown beside ours).

Weights: ``torchvision`` (downloaded or found in the torch cache), a local file, or
``random`` (seeded; every output then says so). No weights are ever fetched in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from collide._io import file_sha256
from collide.errors import CheckpointError
from collide.models.tensor_file import build_with_weights, load_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_FILE = "vgg16-397923af.pth"


class NormalisedVGG(nn.Module):
    """VGG-16 taking [0, 1] RGB, normalising as its weights expect."""

    collide_aliases = {"fc6": "net.classifier.1", "fc7": "net.classifier.4"}

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _torchvision_weights() -> tuple[dict[str, torch.Tensor], Path]:
    from torchvision.models import VGG16_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    if not cached.is_file():
        try:
            VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:
            raise CheckpointError(
                f"VGG-16 ImageNet weights are not in the torch cache ({cached}) and could not be "
                f"downloaded ({type(exc).__name__}): copy {TORCHVISION_FILE} there, or pass the file "
                "with --set weights=/path/to/vgg16.pth, or ask for random weights with --set weights=random"
            ) from exc
    fix = f"delete {cached} so that it is fetched again, or pass a file with --set weights=/path/to/vgg16.pth"
    return load_tensors(cached, expected="a VGG-16 state dict", fix=fix), cached


def resolve_weights(weights: str, *, seed: int = 0) -> dict[str, Any]:
    """A model source for VGG-16: where its weights are and their hash. Fails early."""
    if weights == "random":
        return {"kind": "vgg16", "weights": "random", "seed": seed, "random": True, "sha256": ""}
    if weights == "torchvision":
        _, path = _torchvision_weights()
    else:
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(
                f"VGG-16 weights file {path} does not exist: pass an existing file, 'torchvision', or 'random'"
            )
    return {"kind": "vgg16", "weights": str(path), "seed": seed, "random": False, "sha256": file_sha256(path)}


def vgg16_from_source(source: dict[str, Any]) -> NormalisedVGG:
    """Build the model a source names, checking the weights file against its hash."""
    from torchvision.models import vgg16

    fix = "pass torchvision's vgg16-397923af.pth (or a state dict saved from torchvision's vgg16)"
    net = build_with_weights(lambda: vgg16(weights=None), source, what="VGG-16", fix=fix, skip_init=True)
    return NormalisedVGG(net).eval()
