"""Reading a torch weights file without ever running code from it.

``torch.load(weights_only=True)`` refuses a file holding anything but tensors and plain
containers, and its message then advises ``weights_only=False``: the one thing never
to do with a file someone else could have replaced. Here every failure to read is a
:class:`~collide.errors.CheckpointError` that says what the file should have been and
how to get a good one, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collide._io import file_sha256
from collide.errors import CheckpointError


def load_tensors(path: str | Path, *, expected: str, fix: str) -> Any:
    """The tensors in ``path``, loaded on the CPU with torch's safe unpickler only.

    Args:
        expected: what the file should be ("a collide checkpoint", "a VGG-16 state dict").
        fix: how to get a good file, for the message.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: {fix}") from None
    except Exception as exc:  # UnpicklingError, zip and EOF errors alike: the file is not tensors
        raise CheckpointError(
            f"{path} is not {expected}: it cannot be read as plain tensors ({type(exc).__name__}); "
            f"collide loads weights only that way. {fix}"
        ) from None


def build_with_weights(build: Callable[[], nn.Module], source: dict[str, Any], *, what: str, fix: str) -> nn.Module:
    """``build()`` with the weights ``source`` names: ``random`` (seeded by ``source["seed"]``)
    or a state dict file, which must still have the sha256 it was recorded with.

    Args:
        what: what the weights are, for messages ("VGG-16", "torchvision:resnet18").
        fix: how to get a good file, for the message.
    """
    if source.get("weights") == "random":
        with torch.random.fork_rng():
            torch.manual_seed(int(source.get("seed", 0)))  # torchvision draws init from the global generator
            return build()
    path = Path(source["weights"])
    if not path.is_file():
        raise CheckpointError(f"{what} weights file {path} is gone: restore it or rerun the experiment")
    if source.get("sha256") and file_sha256(path) != source["sha256"]:
        raise CheckpointError(f"{what} weights file {path} changed since the row was solved: rerun the experiment")
    net = build()
    state = load_tensors(path, expected=f"a {what} state dict", fix=fix)
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a {what} state dict ({str(exc)[:300]}): {fix}") from None
    return net
