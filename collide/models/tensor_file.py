"""Reading a torch weights file without ever running code from it.

``torch.load(weights_only=True)`` refuses a file holding anything but tensors and plain
containers, and its message then advises ``weights_only=False``: the one thing never
to do with a file someone else could have replaced. Here every failure to read is a
:class:`~collide.errors.CheckpointError` that says what the file should have been and
how to get a good one, and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from collide.errors import CheckpointError


def load_tensors(path: str | Path, *, expected: str, fix: str) -> Any:
    """The tensors in ``path``, loaded on the CPU with torch's safe unpickler only.

    Args:
        expected: what the file should be ("a collide checkpoint", "a VGG-16 state dict").
        fix: how to get a good file, for the message.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: {fix}") from None
    except Exception as exc:  # UnpicklingError, zip and EOF errors alike: the file is not tensors
        raise CheckpointError(
            f"{path} is not {expected}: it cannot be read as plain tensors ({type(exc).__name__}); "
            f"collide loads weights only that way. {fix}"
        ) from None
