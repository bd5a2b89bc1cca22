"""Pre-activation capture by layer name.

A *layer* is a ReLU module, named as in ``model.named_modules()``. The name of the
module right before a ReLU in the same ``nn.Sequential`` (``fc1`` before ``relu1``,
VGG's ``classifier.0`` before ``classifier.1``) names the same layer, and a model may
name its own layers in a ``collide_aliases`` dict (``fc6`` for VGG-16).

The tap is a forward *pre*-hook on the ReLU: it sees the ReLU's input, which is the
pre-activation, even when the ReLU is ``inplace=True`` (a hook on the Linear before it
would see a tensor the ReLU later overwrites). The captured tensor is cloned for the
same reason. Hooks are removed when the ``with`` block ends, whatever happens inside.

Nothing here changes the caller's model for good: :func:`preactivation` runs in eval
mode (batch norm on its running statistics, no dropout) and restores every module's
``training`` flag afterwards; :func:`tap` runs no forward pass of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from collide.errors import LayerError


def relu_layers(model: nn.Module) -> dict[str, nn.ReLU]:
    """Every ReLU module of ``model`` by name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}


def _aliases(model: nn.Module) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, child), (next_name, next_child) in zip(children, children[1:], strict=False):
            if isinstance(next_child, nn.ReLU) and not isinstance(child, nn.ReLU):
                full = f"{prefix}.{name}" if prefix else name
                aliases[full] = f"{prefix}.{next_name}" if prefix else next_name
    return aliases


def layer_names(model: nn.Module) -> list[str]:
    """Every name ``layer`` accepts for ``model``: its named aliases (``fc6 (= net.classifier.1)``)
    first, then the ReLU modules' own names."""
    # A nested module's own path (net.features.0) names its ReLU too, but listing every
    # one of those says nothing the ReLU's name does not.
    named = {a: r for a, r in _aliases(model).items() if "." not in a}
    aliases = {**named, **getattr(model, "collide_aliases", {})}
    return [f"{a} (= {r})" for a, r in aliases.items()] + list(relu_layers(model))


def resolve_layer(model: nn.Module, name: str) -> str:
    """The ReLU module name that ``name`` refers to, or a :class:`LayerError` listing them."""
    relus = relu_layers(model)
    if name in relus:
        return name
    aliases = {**_aliases(model), **getattr(model, "collide_aliases", {})}
    if name in aliases:
        return aliases[name]
    usable = list(relus) + [f"{a} (= {r})" for a, r in aliases.items()]
    modules = dict(model.named_modules())
    what = (
        f"{name!r} is a {type(modules[name]).__name__}, not a ReLU layer"
        if name in modules
        else f"no layer named {name!r}"
    )
    raise LayerError(f"{what}; layers that work: {', '.join(usable) or 'none (the model has no ReLU)'}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block, then give every module its own flag back.

    ``model.eval()`` alone would leave a caller's training-mode model in eval mode, and
    ``model.train()`` afterwards would switch on modules the caller had frozen: each
    submodule's ``training`` flag is restored one by one, even when the block raises.

    Yields:
        ``model`` itself (not a copy): parameters and buffers are shared.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield model
    finally:
        for m, training in flags:
            m.training = training


class _Stop(Exception):
    """Raised inside a hook to skip the rest of the forward pass."""


class Tap:
    """Holds the pre-activations captured during one forward pass, by layer name."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]


@contextlib.contextmanager
def tap(model: nn.Module, layers: Sequence[str], *, detach: bool = False) -> Iterator[Tap]:
    """Capture the pre-activation of each named ReLU layer on every forward pass.

    The caller runs the forward passes, in whatever mode the model is in: wrap them in
    :func:`eval_mode` for what :func:`preactivation` would give.

    Args:
        model: any module.
        layers: ReLU names (or the names of the modules right before them).
        detach: store detached tensors (no graph kept).

    Yields:
        A :class:`Tap` whose ``values[name]`` is the latest pre-activation, keyed by the
        name as given.
    """
    resolved = {name: resolve_layer(model, name) for name in layers}
    modules = dict(model.named_modules())
    result = Tap()
    handles = []
    try:
        for given, real in resolved.items():
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], given: str = given) -> None:
                value = args[0].clone()  # an inplace ReLU overwrites args[0] next
                result.values[given] = value.detach() if detach else value
            handles.append(modules[real].register_forward_pre_hook(hook))
        yield result
    finally:
        for h in handles:
            h.remove()


def preactivation(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The pre-activation of ``layer`` for input ``x``, flattened per example.

    The forward pass stops at the layer, so nothing after it is computed; gradients
    flow when ``x`` requires them. It runs in eval mode whatever mode ``model`` is in
    (batch norm uses its running statistics and leaves them as they were; dropout is
    off), and leaves every module's mode as it found it.

    Shapes:
        x: (B, C, H, W) or any shape the model takes; returns (B, D)
    """
    real = resolve_layer(model, layer)
    module = dict(model.named_modules())[real]
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with eval_mode(model):
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise LayerError(f"layer {layer!r} was not reached in the forward pass")
    return captured[0].flatten(1)


def check_units(model: nn.Module, layer: str, input_shape: Sequence[int], n_vertices: int) -> int:
    """The number of units of ``layer`` for one input of ``input_shape``; a config asking
    for more vertices than that (each vertex pushes one unit) is refused before any work."""
    from collide.errors import ConfigError

    with torch.no_grad():
        width = preactivation(model, torch.zeros(1, *input_shape), layer).shape[1]
    if n_vertices > width:
        raise ConfigError(f"n_vertices={n_vertices} is more than the {width} units of layer {layer!r} "
                          "(each vertex pushes one of the target's non-positive units): lower n_vertices")
    return int(width)
