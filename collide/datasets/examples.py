"""Examples as collide reads them from what a user holds: a tensor batch with optional
labels, a ``torch.utils.data.Dataset`` of images or (image, label) pairs, or a
``DataLoader`` over one; and a dataset of the user's own code
(``package.module:factory``) read whole, checked, for an experiment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from collide.errors import DataError
from collide.inputs import require_finite, require_in_box
from collide.usercode import call_factory

Reader = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]


def example_reader(data: Any, labels: Any) -> tuple[int, Reader]:
    """The number of examples and a reader of examples [start, stop) with their labels
    (None where the data have none). A DataLoader is read through once, here."""
    if isinstance(data, torch.Tensor):
        y = None if labels is None else torch.as_tensor(labels).long().flatten()
        if y is not None and len(y) != len(data):
            raise DataError(f"{len(data)} examples but {len(y)} labels: pass one label per example")
        return len(data), lambda a, b: (data[a:b], None if y is None else y[a:b])
    if isinstance(data, DataLoader):
        xs, ys = [], []
        for batch in data:
            x, y = (batch[0], batch[1]) if isinstance(batch, list | tuple) and len(batch) >= 2 else (batch, None)
            xs.append(torch.as_tensor(x))
            ys.append(None if y is None else torch.as_tensor(y).long().flatten())
        if not xs:
            raise DataError("the DataLoader yielded no batch: the dataset is empty")
        x_all = torch.cat(xs)
        y_all = None if any(y is None for y in ys) else torch.cat(ys)  # type: ignore[arg-type]
        return example_reader(x_all, y_all if labels is None else labels)
    if isinstance(data, Dataset) or hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)  # type: ignore[arg-type]

        def read(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            got = [data[i] for i in range(a, b)]
            pairs = [g if isinstance(g, list | tuple) and len(g) >= 2 else (g, None) for g in got]
            try:
                x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            except RuntimeError as exc:  # torch says which sizes differ
                raise DataError(f"examples {a} to {b - 1} are not all of one shape ({exc}): resize them to the "
                                "model's input") from None
            if labels is not None:
                return x, torch.as_tensor(labels).long().flatten()[a:b]
            ys = [p[1] for p in pairs]
            return x, None if any(y is None for y in ys) else torch.as_tensor(ys).long()

        return n, read
    raise DataError(f"expected the data as a tensor (N, *input), a torch Dataset or a DataLoader, got "
                    f"{type(data).__name__}")


def load_factory_dataset(spec: str, *, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every example of the dataset ``package.module:factory`` builds (a Dataset, a
    DataLoader or an ``(images, labels)`` pair of tensors), as float32 images of ``shape``
    in [0, 1] and int64 labels.

    Raises:
        ConfigError: the factory cannot be imported or called.
        DataError: the dataset is empty, unlabelled, or its images are not finite pixels of
            ``shape`` in [0, 1].
    """
    data = call_factory(spec, what="dataset")
    labels = None
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data, labels = data
    try:
        n, read = example_reader(data, labels)
    except DataError as exc:
        raise DataError(f"dataset {spec!r}: {exc}") from None
    if n == 0:
        raise DataError(f"dataset {spec!r} is empty: the scan needs at least one example")
    images, got = read(0, n)
    if got is None:
        raise DataError(f"dataset {spec!r} has no labels: its examples must be (image, label) pairs (the scan picks "
                        "each example's start from another class and reports which are right)")
    images = images.to(torch.float32)
    if tuple(images.shape[1:]) != tuple(shape):
        raise DataError(f"dataset {spec!r}: images of shape {tuple(images.shape[1:])}, the model takes {tuple(shape)}: "
                        "return them as the model's input (channels, height, width)")
    what = f"dataset {spec!r}'s images"
    require_finite(images, what, fix="drop or repair the examples that hold them")
    require_in_box(images, what, 0.0, 1.0, fix="collide takes pixels in [0, 1]: drop the normalisation (ToTensor() "
                   "alone scales 8-bit images to [0, 1])")
    return images.contiguous(), got.long()
