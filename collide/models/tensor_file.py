"""Reading a torch weights file without ever running code from it.

``torch.load(weights_only=True)`` refuses a file holding anything but tensors and plain
containers, and its message then advises ``weights_only=False``: the one thing never
to do with a file someone else could have replaced. Here every failure to read is a
:class:`~collide.errors.CheckpointError` that says what the file should have been and
how to get a good one, and nothing else.
"""

from __future__ import annotations

import threading
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


def build_with_weights(build: Callable[[], nn.Module], source: dict[str, Any], *, what: str, fix: str,
                       skip_init: bool = False) -> nn.Module:
    """``build()`` with the weights ``source`` names: ``random`` (seeded by ``source["seed"]``)
    or a state dict file, which must still have the sha256 it was recorded with.

    Args:
        what: what the weights are, for messages ("VGG-16", "torchvision:resnet18").
        fix: how to get a good file, for the message.
        skip_init: with a file, build without drawing the initial weights it replaces
            (:func:`_without_init`); with random weights, copy those the last build of
            ``what`` with the same seed drew (:func:`_random`). Only for an architecture
            known to hold no tensor outside its state dict (torchvision's VGG-16): a
            model's own code could keep one as a plain attribute, which the meta device
            would leave empty.
    """
    if source.get("weights") == "random":
        seed = int(source.get("seed", 0))
        return _random(build, what, seed) if skip_init else _drawn(build, seed)
    path = Path(source["weights"])
    if not path.is_file():
        raise CheckpointError(f"{what} weights file {path} is gone: restore it or rerun the experiment")
    if source.get("sha256") and file_sha256(path) != source["sha256"]:
        raise CheckpointError(f"{what} weights file {path} changed since the row was solved: rerun the experiment")
    state = load_tensors(path, expected=f"a {what} state dict", fix=fix)
    net = _without_init(build, state) if skip_init else None
    if net is not None:
        return net
    net = build()
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a {what} state dict ({str(exc)[:300]}): {fix}") from None
    return net


def _drawn(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with its initial weights drawn from ``seed``, the caller's generator untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # torchvision draws init from the global generator
        return build()


# The tensors of the last random skip_init model built, by (what, seed), and the lock
# that guards them: VGG-16's init draws 138 M numbers (1.2-1.5 s a build on 2 cores,
# 2026-12-06), and an ImageNet run with random weights builds it twice per job, where
# a copy of the drawn tensors takes about 0.15 s. One entry (528 MB for VGG-16), so a
# long-lived process holds at most one model's worth.
_LAST_DRAWN: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
_DRAWN_LOCK = threading.Lock()


def _random(build: Callable[[], nn.Module], what: str, seed: int) -> nn.Module:
    """``_drawn(build, seed)`` for a skip_init architecture: copies of the tensors the last
    build of ``what`` with ``seed`` drew, where there was one; the same numbers either way.
    Only skip_init callers come here: their ``what`` names one architecture, whose tensors
    are all in its state dict (so a copy of it is the whole model)."""
    with _DRAWN_LOCK:
        drawn = _LAST_DRAWN.get((what, seed))
    if drawn is not None:
        net = _without_init(build, {k: v.clone() for k, v in drawn.items()})
        if net is not None:
            return net
    net = _drawn(build, seed)
    with _DRAWN_LOCK:
        _LAST_DRAWN.clear()
        _LAST_DRAWN[(what, seed)] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return net


def _without_init(build: Callable[[], nn.Module], state: Any) -> nn.Module | None:
    """``build()`` holding ``state``'s tensors, without drawing the initial weights they
    replace: built on the meta device, then given the tensors themselves. VGG-16's init
    draws 138 M random numbers, about 1.5 to 3 s a build, and an ImageNet job builds it
    twice (its solve and its evaluation). None (build it as usual) unless ``state`` holds
    exactly the module's own tensors, each of its shape and dtype, and the module has no
    tensor that a state dict leaves out (a non-persistent buffer)."""
    with torch.device("meta"):
        net = build()
    own = net.state_dict()
    if not isinstance(state, dict) or set(state) != set(own) or len(own) != len(list(net.parameters())) + len(
            list(net.buffers())):
        return None
    for key, tensor in own.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.dtype != tensor.dtype or got.shape != tensor.shape:
            return None
    net.load_state_dict(state, assign=True)
    return net
