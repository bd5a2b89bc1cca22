"""Any classifier: a torchvision model or a factory of the user's own, with its weights and
input normalisation, named so that a stored row can build it again.

A model spec is ``torchvision:NAME`` (any classification model torchvision lists, e.g.
``torchvision:resnet18``) or ``package.module:factory`` (a function of no arguments that
returns an ``nn.Module``, imported from the user's own code). Weights are a file (read
with torch's safe loader only, checked against its sha256 whenever it is read again),
``torchvision`` (the spec's default weights from the torch cache, downloaded where the
internet answers), or ``random`` (seeded; only on request, and every output says so).

Solvers work on [0, 1] pixels, so a model that expects normalised inputs is wrapped in
:class:`Normalized`; mean, std and the input size come from the torchvision weights' own
transforms where there are such, else from the config (no normalisation by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collide._io import file_sha256
from collide.errors import CheckpointError, ConfigError, DataError
from collide.models.tensor_file import build_with_weights
from collide.usercode import call_factory, split_spec

TORCHVISION = "torchvision:"


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for x in [0, 1]: the model as the solvers see it.

    Transparent to layer names (``collide_unwrap``): the wrapped model's layers keep the
    names they have in it (``layer2.1.relu#1``, not ``net.layer2...``).
    """

    collide_unwrap = "net"

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ConfigError(f"expected mean and std of one length per channel, got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"expected every std > 0, got {list(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.mean.shape[1]:
            # Broadcasting would turn a grey image into three equal channels without a word.
            raise DataError(f"the model takes {self.mean.shape[1]} input channel(s) (its normalisation has "
                            f"{self.mean.shape[1]} means), got an input of shape {tuple(x.shape)}: set channels="
                            f"{self.mean.shape[1]}")
        return self.net((x - self.mean) / self.std)


def _check_spec(spec: str) -> tuple[str, str]:
    return split_spec(spec, what="model", forms="'torchvision:NAME' (e.g. torchvision:resnet18) or "
                      "'package.module:factory'")


def _torchvision_weights_enum(name: str) -> Any:
    from torchvision import models

    try:
        return models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _require_torchvision_model(name: str) -> None:
    """Refuse a name torchvision has no classification model of, with the names like it."""
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        near = [m for m in known if name.lower()[:4] in m][:8]
        raise ConfigError(f"torchvision has no classification model {name!r}"
                          + (f"; similar: {', '.join(near)}" if near else "; see torchvision.models.list_models()"))


def input_defaults(spec: str) -> dict[str, Any]:
    """Mean, std and input size from the torchvision weights' transforms ({} for other models);
    a name torchvision does not have is refused here, before anything asks for what it lacks."""
    where, name = _check_spec(spec)
    if where != "torchvision":
        return {}
    _require_torchvision_model(name)
    weights = _torchvision_weights_enum(name)
    if weights is None:
        return {}
    transform = weights.transforms()
    size = getattr(transform, "crop_size", [224])
    return {"mean": [float(m) for m in transform.mean], "std": [float(s) for s in transform.std],
            "input_size": int(size[0] if isinstance(size, list | tuple) else size)}


def _architecture(spec: str) -> nn.Module:
    where, name = _check_spec(spec)
    if where == "torchvision":
        from torchvision import models

        _require_torchvision_model(name)
        return models.get_model(name, weights=None)
    net = call_factory(spec, what="model")
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {spec!r}: {name}() returned a {type(net).__name__}, not an nn.Module")
    return net


def resolve_model(spec: str, weights: str, *, seed: int = 0, mean: Sequence[float] = (),
                  std: Sequence[float] = (), input_size: int = 0) -> dict[str, Any]:
    """A model source: what to build, from which weights (hashed), normalised how. Fails early.

    ``mean``/``std``/``input_size`` left empty come from the torchvision weights'
    transforms, else mean () (no normalisation) and an input size the caller must give.
    """
    _check_spec(spec)
    defaults = input_defaults(spec)
    mean = list(mean) or defaults.get("mean", [])
    std = list(std) or defaults.get("std", [])
    if bool(mean) != bool(std):
        raise ConfigError("give both mean and std (one value per input channel), or neither")
    size = input_size or defaults.get("input_size", 0)
    source: dict[str, Any] = {"kind": "external", "model": spec, "seed": seed, "mean": mean, "std": std,
                              "input_size": size}
    if weights == "random":
        return {**source, "weights": "random", "random": True, "sha256": ""}
    if weights == "torchvision":
        path = _cached_torchvision(spec)
    else:
        path = Path(weights)
        if not weights or not path.is_file():
            raise CheckpointError(f"weights file {weights!r} does not exist: pass a state dict file (--weights FILE), "
                                  "'torchvision' (torchvision models), or 'random' (an untrained model, on request)")
    return {**source, "weights": str(path), "random": False, "sha256": file_sha256(path)}


def _cached_torchvision(spec: str) -> Path:
    where, name = _check_spec(spec)
    weights = _torchvision_weights_enum(name) if where == "torchvision" else None
    if weights is None:
        raise CheckpointError(f"{spec} has no torchvision weights: pass a state dict file or 'random'")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        try:
            weights.get_state_dict(progress=False)
        except Exception as exc:
            raise CheckpointError(f"{name}'s torchvision weights are not in the torch cache ({cached}) and could not "
                                  f"be downloaded ({type(exc).__name__}): copy {cached.name} there, or pass the file "
                                  "with --weights FILE, or ask for an untrained model with --weights random") from exc
    return cached


def build(source: dict[str, Any]) -> nn.Module:
    """The model a source names, in eval mode, its weights checked against their hash."""
    spec = source["model"]
    fix = f"pass a state dict saved from {spec} (torch.save(model.state_dict(), path))"
    net = build_with_weights(lambda: _architecture(spec), source, what=spec, fix=fix)
    if source.get("mean"):
        net = Normalized(net, source["mean"], source["std"])
    return net.eval()
