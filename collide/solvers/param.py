"""What a vertex solver optimises: the input's pixels, or parameters that decode to an input.

Every parameterisation answers three questions: where the parameters start, how they
decode to an input in the model's range, and what extra per-vertex loss they carry.
The gradient solver takes any of them; pixels are the paper's §3 setting, a
composition of patches (:class:`collide.patches.compose.ComposedPatches`) its §4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


class Parameterisation(Protocol):
    """``initial(n)`` -> (n, *θ); ``decode(θ)`` -> (n, *input); ``regularizer(θ)`` -> (n,) or None."""

    def initial(self, n: int) -> torch.Tensor: ...

    def on(self, device: str) -> Parameterisation: ...

    @property
    def decode(self) -> Callable[[torch.Tensor], torch.Tensor] | None: ...

    @property
    def regularizer(self) -> Callable[[torch.Tensor], torch.Tensor] | None: ...


@dataclass(frozen=True)
class Pixels:
    """The input itself, started at ``init``: θ is the image, nothing to decode.

    Shapes:
        init: (*input)
    """

    init: torch.Tensor

    def initial(self, n: int) -> torch.Tensor:
        return self.init.unsqueeze(0).expand(n, *self.init.shape).clone()

    def on(self, device: str) -> Pixels:
        return self

    decode = None
    regularizer = None
