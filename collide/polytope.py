"""Sampling a polytope from its vertices, and the paper's Table 2/4/6 measures."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from collide.errors import DataError
from collide.inputs import require_finite
from collide.sites import eval_mode


def sample_weights(n: int, n_vertices: int, *, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Convex-combination weights, one row per sample, on the simplex.

    ``stick``: the authors' stick-breaking; vertex k < V-1 takes a uniform share of
    what is left, the last takes the rest (expected weights ½, ¼, ⅛, ...).
    ``dirichlet``: uniform on the simplex (Dirichlet(1, ..., 1)).

    Shapes:
        returns (n, V) float64
    """
    if n < 1 or n_vertices < 1:
        raise DataError(f"expected n >= 1 and n_vertices >= 1, got {n} and {n_vertices}")
    u = torch.rand(n, n_vertices, generator=generator, dtype=torch.float64)
    if sampler == "stick":
        w = torch.empty_like(u)
        rest = torch.ones(n, dtype=torch.float64)
        for k in range(n_vertices - 1):
            w[:, k] = u[:, k] * rest
            rest = rest - w[:, k]
        w[:, -1] = rest
        return w
    if sampler == "dirichlet":
        e = -torch.log1p(-u)  # Exp(1) draws; normalised they are Dirichlet(1, ..., 1)
        return e / e.sum(1, keepdim=True)
    raise DataError(f"unknown sampler {sampler!r}: expected 'stick' or 'dirichlet'")


def combine(weights: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Points Σₖ wₖ·vₖ. Shapes: weights (S, V), vertices (V, *input) -> (S, *input)."""
    if weights.shape[1] != len(vertices):
        raise DataError(f"{weights.shape[1]} weights per sample but {len(vertices)} vertices")
    flat = weights.to(torch.float64) @ vertices.flatten(1).to(torch.float64)
    return flat.to(vertices.dtype).view(len(weights), *vertices.shape[1:])


def avg_pairwise_distance(points: torch.Tensor) -> float:
    """Mean L2 distance over all unordered pairs. (N, *input) -> float; 0 for N < 2."""
    if len(points) < 2:
        return 0.0
    return float(torch.pdist(points.flatten(1).double()).mean())


# Above this many images the exact mean over all pairs (N²·D/2 multiply-adds) gives way to
# sampled pairs; the exact mean over MNIST's 10,000 test images (5·10⁷ pairs) stays cheap.
MAX_EXACT_IMAGES = 20_000
# Elements of one float64 block of squared distances (64 MiB): bounds the exact path's memory.
_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class DatasetDistance:
    """The mean L2 distance between distinct images of a dataset, and how it was measured.

    ``exact``: the mean over all ``n_pairs`` = N(N−1)/2 unordered pairs, ``stderr`` 0;
    otherwise the mean over ``n_pairs`` seeded random pairs, with its standard error.
    """

    mean: float
    stderr: float
    n_pairs: int
    exact: bool


def _all_pairs_mean(images: torch.Tensor) -> float:
    """Exact mean L2 distance over all unordered pairs of distinct rows, in float64 blocks.

    ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b from float64 norms and dot products, clamped at 0: with
    pixels ≲ 1 and D ≲ 10⁶ the cancellation leaves an absolute error ~1e-16·‖a‖² in the
    square, far below any distance between two different images. Memory: the float64 copy
    of the images and a few temporaries of at most ``_BLOCK_ELEMENTS`` float64 values each.
    """
    x = images.flatten(1).double()
    n = len(x)
    sq = (x * x).sum(1)
    rows = max(1, _BLOCK_ELEMENTS // n)
    total = torch.zeros((), dtype=torch.float64)
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        # only the columns j >= i0: the square part's upper triangle and everything right of it
        d2 = sq[i0:i1, None] + sq[None, i0:] - 2.0 * (x[i0:i1] @ x[i0:].T)
        d = d2.clamp_(min=0.0).sqrt_()
        total += d[:, i1 - i0:].sum() + d[:, : i1 - i0].triu(diagonal=1).sum()
    return float(total / (n * (n - 1) / 2))


def dataset_distance(images: torch.Tensor, *, n_pairs: int, seed: int,
                     max_exact_images: int = MAX_EXACT_IMAGES) -> DatasetDistance:
    """Mean L2 distance between distinct images: exact over all pairs, or sampled past a size.

    With at most ``max_exact_images`` images the mean is exact over every unordered pair of
    distinct images (``n_pairs`` and ``seed`` are then unused): 2,000 random pairs gave
    MNIST's 10.23 where all pairs give 10.18. Past it, ``n_pairs`` seeded random pairs of
    distinct images, and the standard error of their mean.

    Shapes:
        images: (N, *input), N >= 2
    References:
        The paper's Tables 2, 4 and 6, "average distance between images of the dataset".
    """
    n = len(images)
    if n < 2:
        raise DataError(f"need at least two images to measure distances, got {n}")
    if n <= max_exact_images:
        return DatasetDistance(mean=_all_pairs_mean(images), stderr=0.0, n_pairs=n * (n - 1) // 2, exact=True)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(n, (n_pairs,), generator=gen)
    b = (a + torch.randint(1, n, (n_pairs,), generator=gen)) % n
    d = (images[a].double() - images[b].double()).flatten(1).norm(dim=1)
    stderr = float(d.std() / n_pairs**0.5) if n_pairs > 1 else float("nan")
    return DatasetDistance(mean=float(d.mean()), stderr=stderr, n_pairs=n_pairs, exact=False)


def dataset_avg_distance(images: torch.Tensor, *, n_pairs: int, seed: int,
                         max_exact_images: int = MAX_EXACT_IMAGES) -> float:
    """The mean of :func:`dataset_distance`: exact over all pairs up to ``max_exact_images``
    images, else over ``n_pairs`` seeded random pairs (see there for its standard error)."""
    return dataset_distance(images, n_pairs=n_pairs, seed=seed, max_exact_images=max_exact_images).mean


@dataclass(frozen=True)
class Evaluation:
    """How a model classifies samples of a polytope.

    Shapes:
        sample_pred, sample_prob: (S,), the top-1 class and its probability
    """

    sample_pred: torch.Tensor
    sample_prob: torch.Tensor
    target_class: int
    target_top_prob: float
    success_rate: float
    samples_top_prob: float


@torch.no_grad()
def evaluate(
    model: nn.Module, samples: torch.Tensor, target: torch.Tensor, *, batch_size: int = 500, device: str = "cpu"
) -> Evaluation:
    """Classify ``samples``; success is the share given the target's top-1 class.

    The model is run in eval mode on ``device`` and left as it was: its modes are
    restored afterwards, and a model on another device is copied rather than moved.

    Shapes:
        samples: (S, *input); target: (*input)
    """
    require_finite(samples, "the polytope's samples",
                   fix="a sample is a convex combination of the vertices: drop the vertices that are not finite")
    want = torch.device(device)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    if any(t.device != want for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).to(want)  # .to() would move the caller's own model
    with eval_mode(model):
        t_prob = torch.softmax(model(target.unsqueeze(0).to(device)), -1)[0]
        t_class = int(t_prob.argmax())
        preds, probs = [], []
        for start in range(0, len(samples), batch_size):
            p = torch.softmax(model(samples[start : start + batch_size].to(device)), -1)
            top = p.max(-1)
            preds.append(top.indices.cpu())
            probs.append(top.values.cpu())
    pred, prob = torch.cat(preds), torch.cat(probs)
    return Evaluation(
        sample_pred=pred,
        sample_prob=prob,
        target_class=t_class,
        target_top_prob=float(t_prob.max()),
        success_rate=float((pred == t_class).double().mean()),
        samples_top_prob=float(prob.double().mean()),
    )
