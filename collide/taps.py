"""Pre-activation capture at a call site (see :mod:`collide.sites` for how sites are named).

Every entry point resolves a layer name the same way, :func:`collide.sites.resolve`: the
public :func:`preactivation`, :func:`tap` and :func:`layers`, both gradient solvers,
the exact solver's region rows, validity checks and evaluation. The value captured is
the call's input, the pre-activation, seen before the call runs: an in-place ReLU
(``inplace=True``, ``x.relu_()``) cannot overwrite it first. Hooks and the function
mode are removed when a capture ends, whatever happens inside.

Nothing here changes the caller's model for good: :func:`preactivation` runs in eval
mode (batch norm on its running statistics, no dropout) and restores every module's
``training`` flag afterwards; :func:`tap` runs no forward pass of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from collide.errors import ConfigError, LayerError
from collide.sites import (
    ADAPTIVE_MAX_POOL,
    HARDTANH,
    LEAKY,
    MAX_POOL,
    NONLINEAR,
    RELU,
    SMOOTH,
    Event,
    Site,
    Stop,
    Watch,
    eval_mode,
    listed_aliases,
    probe,
    resolve,
)


def _batch(example: torch.Tensor) -> torch.Tensor:
    """One input without a batch dimension, as a batch of one."""
    if not isinstance(example, torch.Tensor) or example.ndim == 0:
        raise LayerError(f"expected one example input (a tensor without a batch dimension), got {example!r}")
    return example.detach().unsqueeze(0)


def layers(model: nn.Module, example_input: torch.Tensor) -> list[Site]:
    """Every activation call site of ``model`` that ``layer=`` can name (ReLU, or one that
    saturates: :mod:`collide.sites`), in forward order.

    Each :class:`~collide.sites.Site` has its ``name`` (``layer2.1.relu#1``,
    ``relu()``), ``kind`` (``module`` or ``function``), pre-activation ``shape`` and
    ``units``. Aliases (``fc6``, the module before a ReLU) work as well;
    :func:`layer_names` lists them too. Calls no method can address are left out, so a
    model with only those (leaky ReLUs, which are injective; ELU) gives an empty list:
    :func:`collide.sites.probe` lists every call, and each one's ``why_not()`` says why.
    A call that a skip connection passes by is listed (its features collide), but its
    collisions need not reach the output: :func:`collide.skips.passed_by` names those.

    Shapes:
        example_input: (*input), one input without a batch dimension
    """
    return [s for s in probe(model, _batch(example_input)) if s.addressable]


def layer_names(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Every name ``layer`` accepts for ``model``: its aliases (``fc6 (= net.classifier.1)``)
    first, then the activation call sites' own names."""
    sites = [s for s in probe(model, torch.zeros(1, *input_shape)) if s.addressable]
    known = {s.base for s in sites} | {s.name for s in sites}
    return [f"{a} (= {m})" for a, m in listed_aliases(model).items() if m in known] + [s.name for s in sites]


def resolve_layer(model: nn.Module, name: str, example: torch.Tensor) -> str:
    """The canonical name of the ReLU call that ``name`` refers to (an alias resolved,
    ``NAME#0`` of a module called once written ``NAME``), or a :class:`LayerError`.

    Shapes:
        example: (B, *input), a batch the model takes
    """
    return resolve(model, name, example).name


def site_of(model: nn.Module, layer: str | Site, example: torch.Tensor) -> Site:
    return layer if isinstance(layer, Site) else resolve(model, layer, example)


def capture(model: nn.Module, x: torch.Tensor, site: Site) -> torch.Tensor:
    """The pre-activation at ``site`` for the batch ``x``, in whatever mode ``model`` is,
    flattened per example; the forward stops there. Gradients flow to ``x``.

    Shapes:
        x: (B, *input); returns (B, D)
    """
    got: list[torch.Tensor] = []

    def at_site(event: Event) -> None:
        if event.base == site.base and event.call == site.call:
            got.append(event.value)
            raise Stop

    try:
        with Watch(model, at_site):
            model(x)
    except Stop:
        pass
    if not got:
        raise LayerError(f"layer {site.name!r} was not reached in the forward pass")
    return got[0].flatten(1)


def preactivation(model: nn.Module, x: torch.Tensor, layer: str | Site) -> torch.Tensor:
    """The pre-activation of ``layer`` for input ``x``, flattened per example.

    The forward pass stops at the layer, so nothing after it is computed; gradients
    flow when ``x`` requires them. It runs in eval mode whatever mode ``model`` is in
    (batch norm uses its running statistics and leaves them as they were; dropout is
    off), and leaves every module's mode as it found it.

    Shapes:
        x: (B, *input) or any shape the model takes; returns (B, D)
    """
    site = site_of(model, layer, x)
    with eval_mode(model):
        return capture(model, x, site)


def region_events(model: nn.Module, x: torch.Tensor, site: Site) -> list[Event]:
    """Every call before ``site`` that shapes the input's linear piece, then the site's own.

    That is each ReLU, LeakyReLU/PReLU, Hardtanh/ReLU6 and max-pooling call, and the
    calls that make the layer non-piecewise-linear (smooth activations, softmax,
    normalisation by the input's own statistics, adaptive max pooling), for the exact
    solver to refuse. Values are cloned (an in-place call overwrites its input next);
    the last event is the site's pre-activation.

    Shapes:
        x: (B, *input)
    """
    seen: list[Event] = []
    kinds = (RELU, LEAKY, HARDTANH, SMOOTH, MAX_POOL, ADAPTIVE_MAX_POOL, NONLINEAR)

    def keep(event: Event) -> None:
        if event.base == site.base and event.call == site.call:
            seen.append(event)
            raise Stop
        if event.kind in kinds:
            seen.append(Event(event.base, event.call, event.kind, event.op, event.module, event.value.clone(),
                              event.params))

    try:
        with Watch(model, keep):
            model(x)
    except Stop:
        pass
    if not seen or (seen[-1].base, seen[-1].call) != (site.base, site.call):
        raise LayerError(f"layer {site.name!r} was not reached in the forward pass")
    return seen


@dataclass
class Tap:
    """The pre-activations captured during the latest forward pass, by layer name as given."""

    values: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]


@contextlib.contextmanager
def tap(model: nn.Module, layers: Sequence[str], example: torch.Tensor, *, detach: bool = False) -> Iterator[Tap]:
    """Capture the pre-activation of each named layer on every forward pass in the block.

    The caller runs the forward passes, in whatever mode the model is in: wrap them in
    :func:`eval_mode` for what :func:`preactivation` would give.

    Args:
        model: any module.
        layers: layer names, resolved as :func:`preactivation` resolves them.
        example: one input without a batch dimension, to resolve the names with.
        detach: store detached tensors (no graph kept).

    Yields:
        A :class:`Tap` whose ``values[name]`` is the latest pre-activation at that call,
        keyed by the name as given, shaped as the call's input.
    """
    batch = _batch(example)
    wanted: dict[tuple[str, int], list[str]] = {}
    for given in layers:
        site = resolve(model, given, batch)
        wanted.setdefault((site.base, site.call), []).append(given)
    result = Tap({})

    def record(event: Event) -> None:
        for given in wanted.get((event.base, event.call), []):
            value = event.value.clone()  # an in-place call overwrites it next
            result.values[given] = value.detach() if detach else value

    with Watch(model, record):
        yield result


def check_units(model: nn.Module, layer: str, input_shape: Sequence[int], n_vertices: int) -> int:
    """The number of units of ``layer`` for one input of ``input_shape``; a config asking
    for more vertices than that (each vertex pushes one unit) is refused before any work."""
    site = resolve(model, layer, torch.zeros(1, *input_shape))
    if n_vertices > site.units:
        raise ConfigError(f"n_vertices={n_vertices} is more than the {site.units} units of layer {layer!r} "
                          "(each vertex pushes one of the target's non-positive units): lower n_vertices")
    return site.units
