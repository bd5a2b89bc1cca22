"""Images as compositions of existing patches (paper §4, and the authors' code).

The start image is covered by a regular grid of windows (size p, stride s). Window g
has K candidate patches; candidate k is weighted by softmaxₖ(logits[g]) and every
window by a separable tent, and each pixel is normalised by the tents covering it:

    image(x) = Σ_g tent_g(x) Σ_k softmax(logits[g])ₖ · patch[g, k](x) / Σ_g tent_g(x)

so the weights of every pixel sum to 1 and the image is a convex combination of
real patches. Only the logits are optimised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from collide.errors import ConfigError, DataError
from collide.objective import total_variation


def tent(size: int) -> torch.Tensor:
    """A separable triangle window, positive everywhere so edges keep some weight. (p, p)"""
    x = torch.arange(size, dtype=torch.float32)
    centre = (size - 1) / 2
    one = 1 - (x - centre).abs() / (centre + 1)
    return one[:, None] * one[None, :]


@dataclass(frozen=True)
class Composition:
    """The candidate patches of every window of a grid, and the geometry to blend them.

    Shapes:
        candidates: (G, K, C, p, p) float32, G = rows * cols windows, row-major
    """

    candidates: torch.Tensor
    image_shape: tuple[int, int, int]
    stride: int

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        g, _, cc, p, p2 = self.candidates.shape
        if cc != c or p != p2:
            raise DataError(f"candidates of shape {tuple(self.candidates.shape)} do not fit images {self.image_shape}")
        for side in (h, w):
            if p > side or (side - p) % self.stride:
                raise ConfigError(
                    f"windows of size {p} at stride {self.stride} do not tile a side of {side} pixels: "
                    f"choose size and stride with (side - size) divisible by stride"
                )
        if g != self.grid[0] * self.grid[1]:
            raise DataError(f"{g} windows given, the grid has {self.grid[0] * self.grid[1]}")

    @property
    def size(self) -> int:
        return self.candidates.shape[-1]

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = self.image_shape
        return (h - self.size) // self.stride + 1, (w - self.size) // self.stride + 1

    @property
    def n_candidates(self) -> int:
        return self.candidates.shape[1]

    def to(self, device: str) -> Composition:
        return Composition(self.candidates.to(device), self.image_shape, self.stride)


def window_patches(image: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """The grid's windows of one image, row-major. (C, H, W) -> (G, C, p, p)"""
    c = image.shape[0]
    cols = F.unfold(image.unsqueeze(0), size, stride=stride)[0]  # (C*p*p, G)
    return cols.T.reshape(-1, c, size, size)


def weights(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over candidates. (B, G, K) -> (B, G, K)"""
    return torch.softmax(logits, dim=-1)


def compose(logits: torch.Tensor, comp: Composition) -> torch.Tensor:
    """The images the logits describe. (B, G, K) -> (B, C, H, W)"""
    if logits.shape[1:] != comp.candidates.shape[:2]:
        raise DataError(
            f"logits {tuple(logits.shape)} do not match {tuple(comp.candidates.shape[:2])} windows x candidates"
        )
    c, h, w = comp.image_shape
    win = tent(comp.size).to(logits.device)
    b, g, k = logits.shape
    # One (B, K) x (K, C*p*p) product per window: a batched matmul, cheap both ways.
    mixed = torch.bmm(weights(logits).transpose(0, 1), comp.candidates.reshape(g, k, -1))  # (G, B, C*p*p)
    mixed = mixed.transpose(0, 1) * win.flatten().repeat(c)  # (B, G, C*p*p)
    summed = F.fold(mixed.transpose(1, 2), (h, w), comp.size, stride=comp.stride)
    norm = _norm(comp, logits.device)
    return summed / norm


def _norm(comp: Composition, device: torch.device | str) -> torch.Tensor:
    c, h, w = comp.image_shape
    g = comp.grid[0] * comp.grid[1]
    win = tent(comp.size).to(device).flatten()
    cols = win.repeat(c).view(1, -1, 1).expand(1, c * comp.size * comp.size, g)
    return F.fold(cols, (h, w), comp.size, stride=comp.stride)


def pixel_weights(logits: torch.Tensor, comp: Composition) -> torch.Tensor:
    """How much each (window, candidate) contributes to each pixel. (B, G, K, H, W)

    For tests and figures: at every pixel these sum to 1.
    """
    _, h, w = comp.image_shape
    b, g, k = logits.shape
    win = tent(comp.size).to(logits.device)
    per = weights(logits)[..., None, None] * win  # (B, G, K, p, p)
    canvas = []
    for gi in range(g):
        r, c = divmod(gi, comp.grid[1])
        plane = torch.zeros(b, k, h, w, device=logits.device)
        top, left = r * comp.stride, c * comp.stride
        plane[..., top : top + comp.size, left : left + comp.size] = per[:, gi]
        canvas.append(plane)
    stacked = torch.stack(canvas, 1)
    return stacked / _norm(comp, logits.device)[0, :1]


def candidate_share(logits: torch.Tensor, comp: Composition, chosen: torch.Tensor) -> torch.Tensor:
    """Per pixel, the share of the composition's weight on the ``chosen`` candidates.

    The sum of :func:`pixel_weights` over the chosen candidates, without building it:
    composing an all-ones patch for every chosen candidate (zeros for the rest) gives
    that sum exactly, since the composition is linear in the patches.

    Shapes:
        logits: (B, G, K); chosen: (K,) bool -> (B, H, W) in [0, 1]
    """
    g, k = comp.candidates.shape[:2]
    if chosen.shape != (k,):
        raise DataError(f"expected one flag per candidate ({k},), got {tuple(chosen.shape)}")
    _, h, w = comp.image_shape
    ones = chosen.to(logits.device, torch.float32).view(1, k, 1, 1, 1).expand(g, k, 1, comp.size, comp.size)
    return compose(logits, Composition(ones, (1, h, w), comp.stride))[:, 0]


def weight_maps(logits: torch.Tensor, comp: Composition) -> torch.Tensor:
    """Candidate weights laid out on the grid. (B, G, K) -> (B, K, rows, cols)"""
    rows, cols = comp.grid
    return weights(logits).transpose(1, 2).reshape(len(logits), -1, rows, cols)


def weight_tv(logits: torch.Tensor, comp: Composition) -> torch.Tensor:
    """L1 total variation of the weight maps: smooth choices between neighbours. (B,)"""
    return total_variation(weight_maps(logits, comp))


def initial_logits(n_windows: int, n_candidates: int, *, own: float = 5.0) -> torch.Tensor:
    """Logits favouring candidate 0 (the start image's own patch) by ``own``. (G, K)"""
    logits = torch.zeros(n_windows, n_candidates)
    logits[:, 0] = own
    return logits


@dataclass(frozen=True)
class ComposedPatches:
    """A composition as a solver parameterisation (:mod:`collide.solvers.param`): θ are
    the logits, started at :func:`initial_logits`, decoded by :func:`compose`, with
    ``tv_weight`` x :func:`weight_tv` as the extra loss."""

    composition: Composition
    own_logit: float = 5.0
    tv_weight: float = 0.0

    def initial(self, n: int) -> torch.Tensor:
        g, k = self.composition.candidates.shape[:2]
        return initial_logits(g, k, own=self.own_logit).expand(n, -1, -1).clone()

    def on(self, device: str) -> ComposedPatches:
        return ComposedPatches(self.composition.to(device), self.own_logit, self.tv_weight)

    @property
    def decode(self):  # type: ignore[no-untyped-def]
        return lambda theta: compose(theta, self.composition)

    @property
    def regularizer(self):  # type: ignore[no-untyped-def]
        return lambda theta: self.tv_weight * weight_tv(theta, self.composition)
