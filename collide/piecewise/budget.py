"""How large the exact LP at a layer is, measured from one forward pass before any
Jacobian, and the refusal of one larger than the budget (``ExactConfig.max_entries``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from collide.errors import ConfigError, DataError, LayerError
from collide.piecewise.linearise import piecewise_events
from collide.sites import HARDTANH, MAX_POOL, Event, Site, eval_mode
from collide.taps import site_of


def lp_size(events: list[Event], d: int) -> tuple[int, int]:
    """Rows of the LP before any are dropped (layer units, ReLU and Hardtanh rows, an upper
    bound on the max-pooling pairs) and its dense constraint entries, rows x ``d``."""
    rows = events[-1].value[0].numel()
    for e in events[:-1]:
        n = e.value[0].numel()
        if e.kind == MAX_POOL:
            kernel = e.params["kernel_size"]
            size = int(np.prod(kernel)) if isinstance(kernel, tuple | list) else int(kernel) ** e.params["nd"]
            rows += n * (size - 1)  # at most one row per entry and window it loses in
        else:
            rows += n * (2 if e.kind == HARDTANH else 1)
    return rows, rows * d


def lp_entries(model: nn.Module, layer: str | Site, target: torch.Tensor) -> tuple[int, int]:
    """The exact LP's rows and dense constraint entries at ``layer`` for an input shaped like
    ``target``, from one forward pass (no Jacobian, no LP).

    Shapes:
        target: (*input), one example
    """
    site = site_of(model, layer, target.unsqueeze(0))
    with torch.no_grad(), eval_mode(model):
        events = piecewise_events(model, target.unsqueeze(0), site)
    return lp_size(events, target.numel())


def largest_side(model: nn.Module, layer: str, target: torch.Tensor, *, max_entries: int) -> int | None:
    """The largest square image side (same channels) whose LP at ``layer`` fits ``max_entries``,
    found by measuring sides, not by a scaling rule: strides round, so the entries do not
    grow exactly with the fourth power of the side. None when no side down to 1 fits or the
    model takes no smaller image.

    Shapes:
        target: (C, H, W)
    """
    _, entries = lp_entries(model, layer, target)
    # Rows and inputs both grow about with the area: start a little above that estimate.
    side = max(1, int(target.shape[-1] * (max_entries / entries) ** 0.25) + 2)
    while side >= 1:
        try:
            if lp_entries(model, layer, torch.zeros(*target.shape[:-2], side, side))[1] <= max_entries:
                return side
        except (DataError, LayerError):  # too small for the model, or the layer gone
            return None
        side -= 1
    return None


def check_lp_size(model: nn.Module, layer: str | Site, target: torch.Tensor, *, max_entries: int) -> int:
    """Refuse, before any Jacobian or LP, an exact problem larger than ``max_entries``.

    The message names the LP's size and the largest input it would take (measured by
    :func:`largest_side`). Returns the entry count.

    Shapes:
        target: (*input), one example
    """
    site = site_of(model, layer, target.unsqueeze(0))
    rows, entries = lp_entries(model, site, target)
    if entries <= max_entries:
        return entries
    d = target.numel()
    shape = "x".join(str(s) for s in target.shape)
    side = largest_side(model, site.name, target, max_entries=max_entries) if target.ndim == 3 else None
    if side is not None:
        smaller = f"the largest input it takes is {'x'.join(str(s) for s in target.shape[:-2])}x{side}x{side}"
    elif target.ndim == 3:
        smaller = "no smaller square input fits either"
    else:
        smaller = "the input's size is fixed by the model, so only an earlier layer is smaller"
    raise ConfigError(
        f"the exact LP at layer {site.name!r} for a {shape} input is too large: about {rows:,} rows over "
        f"{d:,} input coordinates, {entries:.2e} dense float64 entries ({entries * 8 / 2**30:.1f} GiB), above "
        f"max_entries={max_entries:.2e} (ExactConfig.max_entries); {smaller}. Use a smaller input, an earlier "
        "layer, or method='gradient' (or, from Python, collide.solvers.exact.solve_exact(..., form='layered'), "
        "whose LP grows with the weights' nonzeros instead, and is slow at that size)")
