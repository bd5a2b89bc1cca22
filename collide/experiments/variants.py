"""Checkpoints of MNIST classifiers trained on altered labels or with a penalty (paper §5).

A variant is described by a JSON-able dict (the flipped examples' seed and share, a
penalty and its strength); its checkpoint lives in ``checkpoint_dir`` under a name that
hashes the training config, the data's digest and the variant, so that two variants (or
a variant and the plain model) never share a file, and a rerun reuses it. Runs that share
the folder train a variant one at a time (:func:`collide._io.cache_lock`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from collide._io import cache_lock, json_digest
from collide.datasets.mnist import Split, data_digest, data_label, load_mnist
from collide.errors import CheckpointError
from collide.experiments.contract import Progress, no_progress
from collide.models.zoo import checkpoint_path, load_checkpoint, save_checkpoint

Fit = Callable[[Split, Split], tuple[nn.Module, dict[str, Any]]]


def flip_labels(labels: torch.Tensor, *, fraction: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``round(fraction * n)`` of the first ``n`` labels, drawn with ``seed``, each replaced
    by another class (uniform over the other nine).

    Returns:
        The new labels (a copy, all of them) and the flipped indices, ascending.

    Shapes:
        labels: (N,) int64 in 0..9; flipped: (round(fraction * n),)
    """
    n = min(n, len(labels))
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(n, generator=gen)[: round(fraction * n)].sort().values
    shift = torch.randint(1, 10, (len(flipped),), generator=gen)
    out = labels.clone()
    out[flipped] = (labels[flipped] + shift) % 10
    return out, flipped


def variant_checkpoint(config: Any, *, variant: dict[str, Any], fit: Fit,
                       progress: Progress = no_progress) -> dict[str, Any]:
    """The checkpoint of ``config.train`` on the data under ``config.data_root``, altered
    as ``variant`` says and trained by ``fit(train, test)``; reused when on disk.

    Returns:
        The checkpoint's path and sha256, its test accuracy, ``reused``, the data's digest
        and label (:func:`collide.experiments.mnist.train_model`'s keys).

    Raises:
        CheckpointError: the trained model misses ``config.train.min_accuracy`` (nothing saved).
    """
    digest = data_digest(config.data_root)
    label = data_label(config.data_root, digest, getattr(config, "dataset_label", ""))
    path = checkpoint_path(config.checkpoint_dir, config.train, json_digest({"data": digest, "variant": variant}))
    with cache_lock(path, what=f"the checkpoint {path}"):
        reused = path.exists()
        if reused:
            meta = load_checkpoint(path)[1]
        else:
            progress("train (variant)", 0, 1)
            model, meta = fit(load_mnist(config.data_root, "train"), load_mnist(config.data_root, "test"))
            if meta["test_accuracy"] < config.train.min_accuracy:
                raise CheckpointError(
                    f"{config.train.arch} trained with {variant} reached test accuracy {meta['test_accuracy']:.4f}, "
                    f"below the required {config.train.min_accuracy:.4f}: lower train.min_accuracy; no checkpoint "
                    "was saved")
            meta = save_checkpoint(model, {**meta, "data_digest": digest, "dataset": label, "variant": variant}, path)
            progress("train (variant)", 1, 1)
    if meta.get("variant") != variant:
        raise CheckpointError(f"checkpoint {path} was trained as {meta.get('variant')}, not {variant}: delete it "
                              "and rerun")
    return {"checkpoint": str(path), "sha256": meta["sha256"], "test_accuracy": meta["test_accuracy"],
            "reused": reused, "origin": "trained", "data_digest": digest, "dataset": label}
