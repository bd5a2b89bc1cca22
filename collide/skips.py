"""Which activation calls a skip connection passes by.

A collision at a layer carries on to the model's output only where every path from the
input to the output runs through that layer: then the later layers see nothing of the
input but its features there. Inside a residual block, or in one branch of an inception
module, the input also reaches the output around the call (``out = f(relu(z)) + x``), and
two inputs with the same features at the call can still be told apart after it.

Found on the autograd graph of one forward pass: a call is passed by when the input's
gradient node stays reachable from the output's once the call's own node is taken out.
The test is structural (a path exists), not numerical, so a path whose weights happen to
be zero still counts. It errs towards "passed by" wherever the graph cannot show a cut:

- a call whose output the graph does not record (computed without gradients) is counted
  as passed by;
- an activation applied in place to a view of a larger tensor is recorded on that tensor,
  not on the call, and is counted as passed by too.

What the graph cannot see is a path through an operation without a gradient (``argmax``,
a comparison used as a mask, integer indexing, ``detach``): a model whose output reads
the input that way around a call is reported as if it did not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from collide.sites import CallOutputs, Event, Watch, eval_mode, example_for, module_kind, probe


def _reaches(start: Any, goal: Any, without: Any) -> bool:
    """Whether ``goal`` is reachable from the autograd node ``start`` avoiding ``without``."""
    seen, stack = {without}, [start]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node is goal:
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def passed_by(model: nn.Module, example: torch.Tensor) -> set[str]:
    """The names of the activation calls (as :func:`collide.sites.probe` names them) that
    the input also reaches the output around: a collision there need not survive to the
    output (see the module docstring for the cases it counts in and the paths it cannot
    see). One forward pass in eval mode (every module's flag restored) with gradients on,
    on a copy of the input: the model's parameters are not touched. A model whose calls
    depend on whether gradients are on (a fast path taken only without them) may make
    other calls here than :func:`probe` found; those are matched by name and call index.

    Shapes:
        example: (B, *input); the first input is used
    """
    sites = probe(model, example)
    wanted = {(s.base, s.call): s.name for s in sites}
    nodes: dict[str, Any] = {}
    module_pending: list[Event] = []

    def keep(event: Event, out: Any) -> Any:
        name = wanted.get((event.base, event.call))
        # An in-place call on a view is recorded on its base (CopySlices): no node of its own.
        if name is not None and isinstance(out, torch.Tensor) and out.grad_fn is not None and out._base is None:
            nodes[name] = out.grad_fn
        return out

    outputs = CallOutputs(keep)

    def on_event(event: Event) -> None:
        if (event.base, event.call) not in wanted:
            return
        if event.module == "module":
            module_pending.append(event)
        else:
            outputs.pending = event

    def module_out(_mod: nn.Module, _args: Any, out: Any) -> None:
        if module_pending:
            keep(module_pending.pop(), out)

    # The model gets a copy of the leaf: one that changes its input in place cannot touch
    # a leaf that requires gradients.
    leaf = example_for(model, example).requires_grad_(True)
    hooks = [m.register_forward_hook(module_out) for m in model.modules() if module_kind(m) is not None]
    try:
        with torch.enable_grad(), eval_mode(model), outputs, Watch(model, on_event):
            out = model(leaf.clone())
            goal = leaf.view_as(leaf).grad_fn.next_functions[0][0]  # the node leaf's gradient accumulates in
    finally:
        for h in hooks:
            h.remove()
    unknown = set(wanted.values()) - set(nodes)
    if out.grad_fn is None:  # nothing of the input reaches the output through the graph
        return unknown
    return unknown | {name for name, node in nodes.items() if _reaches(out.grad_fn, goal, node)}
