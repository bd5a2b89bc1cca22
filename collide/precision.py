"""Full float32 precision for results that are checked against a tolerance.

On Ampere and later GPUs cuDNN runs float32 convolutions in TF32 by default (10-bit
mantissa: about 1e-3 relative error), close to the 1e-2 collision criterion; matmuls
do too when a program asked for ``"high"`` precision. :func:`full_precision` switches
TF32 off for a block and gives the caller's settings back afterwards: the library never
changes global state for good.

PyTorch has two interfaces to these switches: the legacy one
(``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``,
``torch.set_float32_matmul_precision``) and, from 2.9, ``fp32_precision`` per backend
and operation. Its legacy getters raise when the two disagree, so both are saved and set
when they can be read, and only the new one when the caller's state is already mixed.
Nothing here needs CUDA: on a CPU the switches are plain flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# fp32_precision holders, each parent before its children (a parent's setter resets them).
_NEW_API = (
    "", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn",
)
# The operations whose float32 inputs TF32 (or bf16, on oneDNN) would round.
_SWITCHED = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def _holder(path: str) -> Any:
    holder: Any = torch.backends
    for part in filter(None, path.split(".")):
        holder = getattr(holder, part, None)
        if holder is None:
            return None
    return holder if hasattr(holder, "fp32_precision") else None


def _legacy() -> tuple[bool, bool, str] | None:
    try:
        return (
            bool(torch.backends.cuda.matmul.allow_tf32),
            bool(torch.backends.cudnn.allow_tf32),
            torch.get_float32_matmul_precision(),
        )
    except RuntimeError:  # the caller set the new interface to something the legacy one cannot say
        return None


def _set_legacy(matmul: bool, cudnn: bool, precision: str) -> None:
    # allow_tf32 rewrites the matmul precision ("high" when on), so the precision goes second.
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn


def settings() -> dict[str, Any]:
    """The current float32 precision switches, for logs and tests.

    Returns:
        ``legacy``: ``(matmul allow_tf32, cudnn allow_tf32, float32 matmul precision)``,
        or None where PyTorch refuses to read them (legacy and new settings disagree);
        ``fp32_precision``: each backend's new-style setting, where this PyTorch has one.
    """
    return {
        "legacy": _legacy(),
        "fp32_precision": {path or "generic": h.fp32_precision for path in _NEW_API if (h := _holder(path))},
    }


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Switch TF32 (and any reduced float32 precision) off for the block.

    Inside, float32 matmuls and cuDNN convolutions and RNNs compute in full float32
    precision. Every switch is restored to the caller's value in ``finally``, after an
    exception too; nesting is fine. The switches are process-wide: another thread running
    at the same time sees them as well.

    Example:
        >>> with full_precision():
        ...     features = model(x)
    """
    legacy = _legacy()
    saved = {path: h.fp32_precision for path in _NEW_API if (h := _holder(path))}
    try:
        if legacy is not None:
            _set_legacy(False, False, "highest")
        for path in _SWITCHED:
            if (h := _holder(path)) is not None:
                h.fp32_precision = "ieee"
        yield
    finally:
        if legacy is not None:
            _set_legacy(*legacy)
        for path, value in saved.items():
            if (h := _holder(path)) is not None:
                h.fp32_precision = value
