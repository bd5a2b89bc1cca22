"""Training a classifier with a penalty on the weights in front of its collision layer (paper §5.2).

The paper suggests regularisers that shrink the colliding polytopes. A collision set at a
ReLU layer is bounded by the hyperplanes ``w_i·x + b_i = 0`` of the units the target
leaves non-positive; near-collinear rows of ``W`` cut the input space along nearly the
same direction and leave long, thin cells between them. :func:`cosine_penalty`
discourages exactly that (positive cosine similarity between rows of ``W``); plain weight
decay (Adam's L2 term on every parameter) is its baseline.

The loop is :func:`collide.models.zoo.train`'s, step for step (same initialisation, data
order and determinism), with the penalty added to the loss: at strength 0 it trains the
same weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collide.config import TrainConfig
from collide.datasets.mnist import Split
from collide.errors import ConfigError
from collide.models.zoo import build_model, deterministic, train_loop

# What a penalty can be: none, Adam's L2 weight decay on every parameter, or the cosine penalty.
PENALTIES = ("none", "weight-decay", "cosine")


def cosine_penalty(weight: torch.Tensor) -> torch.Tensor:
    """The mean over ordered pairs i ≠ j of ``relu(cos(w_i, w_j))²``: zero when no two rows
    point within 90° of each other, one when all are parallel.

    Shapes:
        weight: (U, D): one row per unit of the layer.
    """
    if weight.ndim != 2 or weight.shape[0] < 2:
        raise ConfigError(f"the cosine penalty needs a weight matrix of two or more rows, got {tuple(weight.shape)}")
    unit = F.normalize(weight, dim=1)
    cos = unit @ unit.T
    off = ~torch.eye(len(cos), dtype=torch.bool, device=cos.device)
    return F.relu(cos[off]).square().mean()


def train_regularised(
    train_split: Split,
    test_split: Split,
    *,
    config: TrainConfig,
    penalty: str,
    strength: float,
    module: str,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config.arch`` as :func:`collide.models.zoo.train` does, with ``penalty`` at
    ``strength``: ``cosine`` adds ``strength * cosine_penalty(module.weight)`` to every
    batch's loss, ``weight-decay`` gives Adam ``weight_decay=strength``.

    Args:
        module: the Linear (or conv, flattened per output channel) whose rows the cosine
            penalty spreads: the one in front of the collision layer.

    Returns:
        The model in eval mode on CPU and its metadata (``zoo.train``'s, with the penalty).
    """
    if penalty not in PENALTIES:
        raise ConfigError(f"unknown penalty {penalty!r}: expected one of {PENALTIES}")
    if strength < 0:
        raise ConfigError(f"expected a penalty strength >= 0, got {strength}")
    with deterministic(config.threads, cuda=str(device).startswith("cuda")):
        return _train(train_split, test_split, config=config, penalty=penalty, strength=strength, module=module,
                      device=device, progress=progress)


def _train(train_split: Split, test_split: Split, *, config: TrainConfig, penalty: str, strength: float,
           module: str, device: str, progress: Callable[[int, int, float], None] | None,
           ) -> tuple[nn.Module, dict[str, Any]]:
    weighted = {n: m for n, m in build_model(config.arch).named_modules()
                if isinstance(getattr(m, "weight", None), torch.Tensor)}
    if module not in weighted:
        raise ConfigError(f"{config.arch} has no weighted module {module!r}: expected one of {list(weighted)}")

    def rows_of(model: nn.Module) -> torch.Tensor:
        return dict(model.named_modules())[module].weight.flatten(1)

    extra = (lambda model: strength * cosine_penalty(rows_of(model))) if penalty == "cosine" and strength > 0 else None
    model, meta = train_loop(train_split, test_split, config=config, device=device, progress=progress,
                                 extra_loss=extra, weight_decay=strength if penalty == "weight-decay" else 0.0)
    with torch.no_grad():
        final = float(cosine_penalty(rows_of(model).detach()))
    return model, {**meta, "penalty": penalty, "penalty_strength": strength, "penalty_module": module,
                   "cosine_penalty": final}
