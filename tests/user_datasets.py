"""Datasets of the kinds auditors write, importable as ``tests.user_datasets:FACTORY`` by
the scan's ``dataset`` key. A factory takes no arguments, so the MNIST folder they read
comes from ``COLLIDE_TEST_DIGITS`` (set by the test)."""

from __future__ import annotations

import itertools
import os

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from collide.datasets.mnist import load_mnist

ROOT = "COLLIDE_TEST_DIGITS"
# The test images a scan of four_digits reads: the first two 3s and the first two 7s.
PICKED = {3: 2, 7: 2}


def picked_indices(labels: torch.Tensor) -> list[int]:
    return [i for label, k in PICKED.items() for i in torch.nonzero(labels == label).flatten()[:k].tolist()]


def four_digits() -> Dataset:
    """Four MNIST test images with their labels, as a Dataset of (image, label)."""
    test = load_mnist(os.environ[ROOT], "test")
    idx = picked_indices(test.labels)
    return TensorDataset(test.images[idx], test.labels[idx])


def four_digits_loader() -> DataLoader:
    return DataLoader(four_digits(), batch_size=3)


_calls = itertools.count()


def drifting_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Other images every call: a factory with unseeded augmentation."""
    images, labels = four_digits().tensors
    return (images * (0.5 + 0.1 * (next(_calls) % 5))).clamp(0, 1), labels


def unlabelled() -> Dataset:
    return [torch.zeros(1, 28, 28)] * 3  # type: ignore[return-value]


def empty() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)


def normalised() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's normalisation applied: its minimum (-0.424 here) is what the refusal names. Seeded:
    unseeded, one draw in twenty had its smallest pixel above 0.0013 and the minimum read -0.41xx."""
    pixels = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return (pixels - 0.1307) / 0.3081, torch.zeros(3, dtype=torch.long)


def eleventh_class() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits in the model's shape with a label past the 10 it has."""
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 10, 3])


def rgb() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(3, 3, 28, 28), torch.zeros(3, dtype=torch.long)


def with_nan() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(3, 1, 28, 28)
    images[1, 0, 5, 5] = float("nan")
    return images, torch.zeros(3, dtype=torch.long)


def ragged() -> Dataset:
    return [(torch.rand(1, 28, 28), 0), (torch.rand(1, 32, 32), 1)]  # type: ignore[return-value]


def needs_root(root: str) -> Dataset:
    return four_digits()
