"""Item 7: the exact solver's linearisation, forward against reverse mode.

:func:`collide.piecewise.linearise.affine_piece` needs the Jacobian of every value it captures (each
earlier ReLU's and max pool's input, then the layer's pre-activation) at the target.
Reverse mode pulls back one cotangent per captured value; forward mode pushes one tangent
per input coordinate (784 for MNIST). Both are vectorised with ``torch.func.vmap`` in
chunks, so the reference is reverse mode at its best, not a Python loop over rows.
``auto`` picks forward mode when the captured values outnumber the input's coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import collision_problem, median_time
from collide.piecewise.linearise import affine_piece

# (model, layer) pairs: the MLP at both ReLUs, LeNet-5 at its first fully connected ReLU
# (its conv ReLUs and pools give some 8,000 captured values against 784 inputs).
CASES = (("mlp", "relu1"), ("mlp", "relu2"), ("lenet5", "fc1"))


def run(*, repeats: int = 3) -> list[dict[str, Any]]:
    out = []
    for arch, layer in CASES:
        p = collision_problem(arch)
        for mode in ("forward", "reverse"):
            # Untimed: a process's first forward-mode pass imports torch's compiler helpers
            # (about 2 s), and the first of each mode warms its caches.
            affine_piece(p["model"], layer, p["target"], mode=mode)
        times, pieces = {}, {}
        for mode in ("forward", "reverse", "auto"):
            times[mode], pieces[mode] = median_time(lambda mode=mode, p=p, layer=layer: affine_piece(
                p["model"], layer, p["target"], mode=mode), repeats)
        f, r = pieces["forward"], pieces["reverse"]
        out.append({
            "model": arch, "layer": layer, "input_dim": int(f.jac.shape[1]),
            "layer_units": int(f.jac.shape[0]), "region_rows": int(f.region_jac.shape[0]),
            "forward_seconds": times["forward"], "reverse_seconds": times["reverse"],
            "auto_seconds": times["auto"],
            "reverse_over_forward": times["reverse"] / times["forward"],
            "max_abs_difference": float(max(np.abs(f.jac - r.jac).max(),
                                            np.abs(f.region_jac - r.region_jac).max(initial=0.0))),
        })
    return out
