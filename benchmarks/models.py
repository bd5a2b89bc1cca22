"""Any model: torchvision's classifiers at 64 px, random weights (nothing downloaded).

For each model: its ReLU call sites (``collide.layers``), the activations refused and
why, the time for one 5-vertex gradient polytope (collide's default solver settings) at
the middle call site, from a bundled photo, and whether the exact LP fits there
(``ExactConfig.max_entries``), with the largest input it would take. A survey, not a
race: there is no reference to take a ratio against. Torch keeps its default thread
count here (what a user gets), noted in the result.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import collide
from collide.config import ExactConfig
from collide.datasets.folders import load_image
from collide.errors import CollideError
from collide.models.external import Normalized, input_defaults
from collide.piecewise.budget import largest_side, lp_entries
from collide.sites import probe

SIDE = 64
# One of each family torchvision ships (the larger siblings, ResNeXt, Wide ResNet, VGG-16,
# tap the same kinds of call sites at several times the cost).
MODELS = (
    "resnet18", "resnet50", "vgg11_bn", "alexnet", "squeezenet1_1", "densenet121", "googlenet",
    "shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0",
    "convnext_tiny", "inception_v3",
)


def _photo() -> torch.Tensor:
    """scikit-image's cat at SIDE px, as the image pipeline loads it."""
    from PIL import Image
    from skimage import data

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chelsea.png"
        Image.fromarray(data.chelsea()).save(path)
        return load_image(path, SIDE)


def exact_lp(model: torch.nn.Module, layer: str, image: torch.Tensor) -> dict[str, Any]:
    """The exact LP's size at ``layer`` and the largest side it fits at (measured), or why
    the exact solver refuses the layer."""
    limit = ExactConfig().max_entries
    try:
        _, entries = lp_entries(model, layer, image)
        return {"lp_entries": entries, "exact_feasible": entries <= limit,
                "exact_max_side": largest_side(model, layer, image, max_entries=limit)}
    except CollideError as exc:
        return {"exact_feasible": False, "exact_refused": str(exc)[:160]}


def survey(name: str, image: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {"model": f"torchvision:{name}", "side": SIDE}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, weights=None)
    norm = input_defaults(f"torchvision:{name}")
    model = Normalized(net, norm["mean"], norm["std"]).eval()
    try:
        sites = probe(model, image[None])
    except CollideError as exc:
        return {**out, "error": str(exc)[:200]}
    usable = [s for s in sites if s.addressable]
    out.update(sites=len(sites), relu_calls=len(usable), modules=sum(s.kind == "module" for s in usable),
               functional=sum(s.kind == "function" for s in usable),
               reused=len({s.base for s in usable if s.calls > 1}),
               refused=sorted({s.op for s in sites if not s.addressable}))
    if not usable:
        return out
    site = usable[len(usable) // 2]
    out.update(layer=site.name, units=site.units)
    out.update(exact_lp(model, site.name, image))
    start = time.perf_counter()
    poly = collide.find_polytope(model, site.name, image, n_vertices=5, method="gradient")
    out.update(seconds=time.perf_counter() - start, valid=poly.n_valid, steps=max(poly.solver["steps"]),
               max_rel_error=float(poly.rel_error.max()), why_invalid=sorted({r for r in poly.reasons if r}))
    return out


def run(models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    image = _photo()
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # what a user's run gets; given back after
    try:
        for name in models:
            t = time.perf_counter()
            rows.append(survey(name, image))
            print(f"[bench] models: {name} in {time.perf_counter() - t:.0f} s", flush=True)
        return {"side": SIDE, "torch_threads": torch.get_num_threads(), "rows": rows}
    finally:
        torch.set_num_threads(threads)
