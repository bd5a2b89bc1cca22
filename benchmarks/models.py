"""Any model: torchvision's classifiers at 64 px, random weights (nothing downloaded).

For each model: its activation call sites (``collide.layers``) by activation and by the
methods that address them (gradient and paper at every saturating or piecewise-linear
activation, exact where the activation is piecewise linear), the activations refused; the
time for one 5-vertex gradient polytope (collide's default solver settings) at the middle
addressable call site, from a bundled photo, its valid vertices and feature error; and,
where the exact method addresses that site, whether its LP fits there
(``ExactConfig.max_entries``), with the largest input it would take. A survey, not a
race: there is no reference to take a ratio against. Torch keeps its default thread
count here (what a user gets), noted in the result.

A model that takes only its native input size (``vit_b_16``: its positional embeddings
are sized for 224 px) is built for smaller ones through its constructor's ``image_size``:
the native size's solver step is timed, and the polytope is found at the largest side of
:data:`LADDER` whose projected worst case (``GradientConfig().max_steps`` steps) fits
:data:`BUDGET_S`.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

import collide
from collide.config import ExactConfig, GradientConfig
from collide.datasets.folders import load_image
from collide.errors import CollideError
from collide.models.external import Normalized, input_defaults
from collide.piecewise.budget import largest_side, lp_entries
from collide.sites import Site, function_of, probe
from collide.taps import preactivation

SIDE = 64
# One of each family torchvision ships (the larger siblings, ResNeXt, Wide ResNet, VGG-16,
# tap the same kinds of call sites at several times the cost), and the transformers.
MODELS = (
    "resnet18", "resnet50", "vgg11_bn", "alexnet", "squeezenet1_1", "densenet121", "googlenet",
    "shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0",
    "convnext_tiny", "inception_v3", "vit_b_16", "swin_t",
)
# The models issue 25 surveys: none of them had an addressable layer, or only some, before
# collide addressed saturating activations.
SATURATING = ("convnext_tiny", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf",
              "vit_b_16", "swin_t")
# Models that take only their native side, built smaller through the constructor's ``image_size``.
NATIVE_ONLY = {"vit_b_16": 224}
# The sides tried for them, largest first: the first whose projected worst case fits the budget.
LADDER = (224, 160, 128, 96, 64)
BUDGET_S = 600.0
VERTICES = 5
DEFAULT_STEPS = GradientConfig().max_steps
# Saturation tolerances tried in turn at the middle site, collide's default first: a
# model with random weights may have too few units near an asymptote for 5 vertices at
# the default (its pre-activations are small), and the row says which one was needed;
# with none, the polytope is found at the nearest site that has them, at the tightest of
# these tolerances that gives any site five.
# Past 0.1 the tolerance exceeds GELU's dip (-0.17) and nearly every unit would count.
SURVEY_TOLS = (GradientConfig().saturation_tol, 0.03, 0.1)


def cat_photo(side: int = SIDE) -> torch.Tensor:
    """scikit-image's cat at ``side`` px, as the image pipeline loads it."""
    from PIL import Image
    from skimage import data

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chelsea.png"
        Image.fromarray(data.chelsea()).save(path)
        return load_image(path, side)


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


def sites_summary(sites: list[Site]) -> dict[str, Any]:
    """What a model's activation calls are: counts by activation (``op``), by method, how
    many are modules, functions and calls of a reused module, and the activations no
    method addresses. Addressable: at least one method (``Site.methods``)."""
    usable = [s for s in sites if s.methods]
    return {
        "sites": len(sites), "addressable": len(usable),
        "kinds": dict(collections.Counter(s.op for s in sites)),
        "by_method": {m: sum(m in s.methods for s in sites) for m in ("gradient", "paper", "exact")},
        "modules": sum(s.kind == "module" for s in usable), "functional": sum(s.kind == "function" for s in usable),
        "reused": len({s.base for s in usable if s.calls > 1}),
        "refused": sorted({s.op for s in sites if not s.methods}),
    }


def middle_site(sites: list[Site]) -> Site | None:
    """The middle of the addressable call sites in call order (None: none is)."""
    usable = [s for s in sites if s.methods]
    return usable[len(usable) // 2] if usable else None


def step_seconds(model: torch.nn.Module, image: torch.Tensor, *, repeats: int = 2) -> float:
    """The fastest of ``repeats`` forward and backward passes of ``VERTICES`` copies of
    ``image``: one gradient solver step's model cost (after one warm-up pass)."""
    x = image[None].repeat(VERTICES, *([1] * image.ndim)).requires_grad_(True)
    model(x).sum().backward()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(x).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def survey_model(model: torch.nn.Module, image: torch.Tensor, *, name: str,
                 max_steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """One model's row: its sites, and a 5-vertex gradient polytope at the middle one
    (collide's default gradient settings, at most ``max_steps`` steps)."""
    out: dict[str, Any] = {"model": name, "side": int(image.shape[-1])}
    try:
        sites = probe(model, image[None])
    except CollideError as exc:
        return {**out, "error": str(exc)[:200]}
    out.update(sites_summary(sites))
    site = middle_site(sites)
    if site is None:
        return out
    out.update(layer=site.name, layer_op=site.op, layer_methods=list(site.methods), units=site.units)
    if "exact" in site.methods:
        out.update(exact_lp(model, site.name, image))
    counts = saturated_at(model, site, image)
    out["saturated"] = counts
    tol = next((t for t in SURVEY_TOLS if counts[repr(t)] >= VERTICES), None)
    if tol is None:  # the nearest site that has them, at the tightest tolerance that gives any
        near = sorted((s for s in sites if s.methods), key=lambda s: abs(sites.index(s) - sites.index(site)))
        cache: dict[str, dict[str, int]] = {}

        def count(s: Site, t: float) -> int:
            if s.name not in cache:
                cache[s.name] = saturated_at(model, s, image)
            return cache[s.name][repr(t)]

        found = next(((s, t) for t in SURVEY_TOLS for s in near if count(s, t) >= VERTICES), None)
        if found is None:
            return {**out, "why_no_polytope": f"no site has {VERTICES} saturated units at tolerance "
                                              f"{max(SURVEY_TOLS):g} or below"}
        site, tol = found
        out.update(polytope_layer=site.name, polytope_op=site.op, polytope_saturated=count(site, tol))
    start = time.perf_counter()
    config = GradientConfig(saturation_tol=tol, max_steps=max_steps,
                            min_steps=min(max_steps, GradientConfig().min_steps))
    poly = collide.find_polytope(model, site.name, image, n_vertices=VERTICES, method="gradient", config=config)
    out.update(seconds=time.perf_counter() - start, valid=poly.n_valid, steps=max(poly.solver["steps"]),
               saturation_tol=tol, max_steps=max_steps, max_rel_error=float(poly.rel_error.max()),
               why_invalid=sorted({r for r in poly.reasons if r}))
    return out


def saturated_at(model: torch.nn.Module, site: Site, image: torch.Tensor) -> dict[str, int]:
    """The target's saturated units at ``site`` under each of :data:`SURVEY_TOLS` (the
    same count at each for a piecewise-linear activation, whose flat pieces are exact)."""
    with torch.no_grad():
        pre = preactivation(model, image[None], site).double()
    return {repr(t): int(function_of(site).at(t).saturated(pre).sum()) for t in SURVEY_TOLS}


def build(name: str, side: int) -> torch.nn.Module:
    """torchvision's ``name`` with random weights (seed 0), normalised as its weights expect;
    a native-only model built for ``side``."""
    kwargs = {"image_size": side} if name in NATIVE_ONLY else {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, weights=None, **kwargs)
    norm = input_defaults(f"torchvision:{name}")
    return Normalized(net, norm["mean"], norm["std"]).eval()


def fitting_side(name: str, photo: Callable[[int], torch.Tensor], *, steps: int = DEFAULT_STEPS,
                 budget_s: float = BUDGET_S) -> dict[str, Any]:
    """For a native-only model: the native side's step time, and the largest side of
    :data:`LADDER` whose projected worst case (``steps`` steps) fits ``budget_s`` (the
    smallest if none)."""
    timed = {}
    for side in LADDER:
        timed[side] = step_seconds(build(name, side), photo(side))
        if timed[side] * steps <= budget_s:
            break
    fits = [s for s, t in timed.items() if t * steps <= budget_s]
    side = max(fits) if fits else min(timed)
    native = NATIVE_ONLY[name]
    return {"side": side, "native_side": native, "step_seconds": {str(s): t for s, t in timed.items()},
            "native_worst_case_seconds": timed[native] * DEFAULT_STEPS if native in timed else None}


def survey(name: str, photo: Callable[[int], torch.Tensor] = cat_photo, *, max_steps: int = DEFAULT_STEPS,
           budget_s: float = BUDGET_S) -> dict[str, Any]:
    fit = (fitting_side(name, photo, steps=max_steps, budget_s=budget_s) if name in NATIVE_ONLY
           else {"side": SIDE})
    image = photo(fit["side"])
    model = build(name, fit["side"])
    row = survey_model(model, image, name=f"torchvision:{name}", max_steps=max_steps)
    if "addressable" in row and "step_seconds" not in fit:
        fit["step_seconds"] = {str(fit["side"]): step_seconds(model, image)}
    return {**row, **fit}


def run(models: tuple[str, ...] = MODELS, *, max_steps: int = DEFAULT_STEPS, budget_s: float = BUDGET_S,
        each: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every model's row; ``each(row)`` after each (to keep what is done)."""
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # what a user's run gets; given back after
    try:
        for name in models:
            t = time.perf_counter()
            rows.append({**survey(name, max_steps=max_steps, budget_s=budget_s),
                         "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         "load_average": [round(x, 2) for x in os.getloadavg()]})
            if each is not None:
                each(rows[-1])
            print(f"[bench] models: {name} in {time.perf_counter() - t:.0f} s", flush=True)
        return {"side": SIDE, "torch_threads": torch.get_num_threads(), "rows": rows,
                "load_average": [round(x, 2) for x in os.getloadavg()]}
    finally:
        torch.set_num_threads(threads)


def update(names: tuple[str, ...], results: Path, *, max_steps: int = DEFAULT_STEPS,
           budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Survey ``names`` again and put their rows into ``results`` (``results.json``: each
    replaced where it was, new ones appended; every other row kept with the date it was
    measured), then rewrite ``results.md`` beside it, after each model: a few models
    without the whole survey, and what was measured kept if the run is cut short."""
    from benchmarks.report import markdown

    def keep(row: dict[str, Any]) -> None:
        data = json.loads(results.read_text())
        old = data.get("models", {"side": SIDE, "rows": [], "torch_threads": torch.get_num_threads()})
        rows = [r for r in old["rows"] if r["model"] != row["model"]]
        at = next((k for k, r in enumerate(old["rows"]) if r["model"] == row["model"]), len(rows))
        data["models"] = {**old, "torch_threads": torch.get_num_threads(), "rows": [*rows[:at], row, *rows[at:]]}
        results.write_text(json.dumps(data, indent=2, default=float) + "\n")
        (results.parent / "results.md").write_text(markdown(data))

    return run(names, max_steps=max_steps, budget_s=budget_s, each=keep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="survey some torchvision classifiers again, into results.json")
    parser.add_argument("models", nargs="*", default=list(SATURATING), help="torchvision names (default: "
                        "the saturating ones issue 25 surveys)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results.json"))
    parser.add_argument("--max-steps", type=int, default=DEFAULT_STEPS,
                        help="the gradient solver's step budget (default collide's; each row records it)")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds a native-only model's worst case may take at the side chosen for it")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(torchvision.models.list_models(module=torchvision.models)))
    if unknown:
        parser.error(f"torchvision has no classification models {unknown}")
    update(tuple(args.models), Path(args.results), max_steps=args.max_steps, budget_s=args.budget)


if __name__ == "__main__":
    main()
