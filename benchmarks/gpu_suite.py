"""The GPU path in one run (``make bench-gpu``): four figures of a CUDA card, in <= 5 minutes.

1. ``vgg_fc6``: gradient-solver steps per second at VGG-16 fc6 (224 px, five vertices in
   one batch), set against the card's measured float32 matmul rate (share of peak);
2. ``patches``: the same with the pixels replaced by a patch composition at 224 px (the
   authors' 25 x 25 windows of 56 px at stride 7);
3. ``mnist_batch``: 10,000 MNIST targets' polytopes (the whole test set, five vertices
   each) as one gradient batch on the shipped MLP at relu1, checked in float64;
4. ``agreement``: one problem solved on the CPU and on the device with TF32 off, and how
   far their vertices are apart, and whether the same vertices pass the criterion.

Weights of VGG-16 are random (seeded; torchvision builds it with ``weights=None``): speed
does not depend on them, and nothing is downloaded. Patches are random too (no index is
built): the composition's cost depends on their number and size only. The MNIST items
use the shipped checkpoints. Every solve goes through :func:`collide.find_polytopes`,
which runs float32 without TF32, so the matmul rate is measured that way as well.

A global deadline (``--budget``) is checked before each item: an item that would not fit
in what is left is skipped and recorded as skipped, never cut short. ``--tiny`` runs the
same code on small sizes and a small VGG-shaped net, in seconds on a CPU, so that the
script cannot rot between the days a GPU is lent (tests/benchmarks/test_gpu_suite.py).

Usage: ``python -m benchmarks.gpu_suite [--device cuda] [--tiny] [--out benchmarks/gpu.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import DATA_ROOT, MODELS, checkpoint, machine
from benchmarks.gpu import matmul_rate, synchronize
from collide._io import atomic_write_bytes
from collide.api import check_polytope, find_polytope, find_polytopes
from collide.config import GradientConfig
from collide.datasets.mnist import load_mnist
from collide.errors import ConfigError
from collide.models.vgg import NormalisedVGG, vgg16_from_source
from collide.models.zoo import SHIPPED_DIR, load_checkpoint, shipped_checkpoints
from collide.patches.compose import ComposedPatches, Composition, compose, initial_logits
from collide.precision import full_precision, settings
from collide.sites import resolve
from collide.solvers import GradientSolver
from collide.solvers.gradient import frozen_copy
from collide.taps import preactivation

HERE = Path(__file__).parent
OUT = HERE / "gpu.json"
ITEMS = ("vgg_fc6", "patches", "mnist_batch", "agreement")
N_VERTICES = 5
# The whole run on an H200-class card; each item is skipped, not cut, when what is left
# is less than its reserve (Sizes.reserve), so the file is always written in time.
BUDGET_SECONDS = 285.0


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How large each item is.

    Attributes:
        image_size: side of the VGG input (pixels).
        solver_steps: gradient steps timed at fc6, pixels and patches alike.
        patch_size, patch_stride: the composition's windows.
        candidates: patches per window (the start's own and ``candidates - 1`` others).
        matmul_n: side of the square matrices of the matmul rate.
        mnist_targets: targets of the MNIST batch (its first test images).
        mnist_steps: the MNIST batch's ``max_steps`` (None: GradientConfig's default).
        agreement_targets: LeNet-5 targets solved on both devices.
        agreement_steps: their ``max_steps`` (None: the default).
        reserve: seconds each item needs at least on the target card; it is skipped when
            less than that is left of the budget.
    """

    image_size: int
    solver_steps: int
    patch_size: int
    patch_stride: int
    candidates: int
    matmul_n: int
    mnist_targets: int
    mnist_steps: int | None
    agreement_targets: int
    agreement_steps: int | None
    reserve: dict[str, float]

    def __post_init__(self) -> None:
        if (self.image_size - self.patch_size) % self.patch_stride:
            raise ConfigError(f"windows of {self.patch_size} px at stride {self.patch_stride} do not tile "
                             f"{self.image_size} px")
        if set(self.reserve) != set(ITEMS):
            raise ConfigError(f"expected a reserve for each of {ITEMS}, got {sorted(self.reserve)}")


# The paper's setting. Reserves are guesses for an H200 with room to spare (first CUDA
# use, VGG-16's 528 MB of weights copied to the card and to float64 for the checks).
FULL = Sizes(image_size=224, solver_steps=100, patch_size=56, patch_stride=7, candidates=11, matmul_n=8192,
             mnist_targets=10_000, mnist_steps=None, agreement_targets=4, agreement_steps=None,
             reserve={"vgg_fc6": 30.0, "patches": 30.0, "mnist_batch": 60.0, "agreement": 60.0})
# Seconds on two CPU cores: a VGG-shaped net at 32 px, 64 targets, short solves.
TINY = Sizes(image_size=32, solver_steps=3, patch_size=8, patch_stride=4, candidates=3, matmul_n=256,
             mnist_targets=64, mnist_steps=10, agreement_targets=1, agreement_steps=10,
             reserve=dict.fromkeys(ITEMS, 0.0))


class _TinyVGG(nn.Module):
    """VGG's shape at 32 px and a few channels: convolutions, max pooling, then fc6 and
    fc7 with ReLUs, so that ``NormalisedVGG`` names the same layer ``fc6``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Dropout(),
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg(*, tiny: bool, seed: int = 0) -> NormalisedVGG:
    """VGG-16 with random seeded weights (built by torchvision, ``weights=None``), or the
    tiny stand-in; the global generator is left as it was."""
    if not tiny:
        return vgg16_from_source({"weights": "random", "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NormalisedVGG(_TinyVGG()).eval()


def shipped(arch: str) -> Path:
    """The shipped checkpoint the benchmarks' ``arch`` is trained as, without MNIST on
    disk (``benchmarks.common.checkpoint`` also checks the data, and trains when needed)."""
    want = asdict(MODELS[arch][0])
    for meta in shipped_checkpoints():
        if meta["config"] == want:
            return SHIPPED_DIR / meta["file"]
    raise FileNotFoundError(f"no shipped checkpoint of {arch} with {want} in {SHIPPED_DIR}")


def mnist_problem(arch: str, n: int, *, tiny: bool, seed: int = 0) -> tuple[nn.Module, str, torch.Tensor, str]:
    """The classifier, its collision layer and ``n`` targets: the first MNIST test images,
    or with ``tiny`` seeded uniform images (no data on disk needed).

    Shapes:
        targets: (n, 1, 28, 28) in [0, 1]
    """
    path = shipped(arch) if tiny else checkpoint(arch)
    model, _ = load_checkpoint(path)
    if tiny:
        targets = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        return model, MODELS[arch][1], targets, f"{n} uniform random images (seed {seed})"
    images = load_mnist(DATA_ROOT / "raw" / "mnist", "test", limit=n).images
    return model, MODELS[arch][1], images, f"the first {n} MNIST test images"


def fixed_steps(steps: int) -> GradientConfig:
    # min_steps = max_steps: no vertex stops early, so every solve takes exactly `steps`.
    return GradientConfig(min_steps=steps, max_steps=steps)


def solver_config(max_steps: int | None) -> GradientConfig:
    """The default solver, or one cut at ``max_steps`` (checked from step 50 or earlier)."""
    if max_steps is None:
        return GradientConfig()
    return GradientConfig(min_steps=min(GradientConfig.min_steps, max_steps), max_steps=max_steps)


def step_flop(model: nn.Module, layer: str, x: torch.Tensor, device: str,
              decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """FLOP of one solver step on the batch ``x``: the forward pass to ``layer`` and the
    backward pass to the input (the weights take no gradient), as torch counts them."""
    net = frozen_copy(model, device)
    u = x.to(device).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        pre = preactivation(net, u if decode is None else decode(u), layer)
        pre.sum().backward()
    return float(counter.get_total_flops())


class Suite:
    """The run's state: sizes, device, deadline, and the models two items share."""

    def __init__(self, sizes: Sizes, *, device: str, tiny: bool, budget: float) -> None:
        self.sizes, self.device, self.tiny = sizes, device, tiny
        self.start = time.perf_counter()
        self.deadline = self.start + budget
        self._vgg: NormalisedVGG | None = None
        self._peak: float | None = None

    def model(self) -> NormalisedVGG:
        if self._vgg is None:
            self._vgg = vgg(tiny=self.tiny)
        return self._vgg

    def peak(self) -> float:
        """The device's float32 matmul rate with TF32 off, FLOP/s (measured once)."""
        if self._peak is None:
            with full_precision():
                self._peak = matmul_rate(self.sizes.matmul_n, device=self.device)
        return self._peak

    def image(self, n: int, seed: int) -> torch.Tensor:
        s = self.sizes.image_size
        return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed))

    def warm_up(self, **kwargs: Any) -> None:
        """One short solve first: CUDA's lazy start-up and the allocator stay out of the timing."""
        find_polytope(self.model(), "fc6", self.image(1, 0)[0], n_vertices=N_VERTICES, device=self.device,
                      config=fixed_steps(1), **kwargs)

    def timed_solve(self, **kwargs: Any) -> dict[str, Any]:
        steps = self.sizes.solver_steps
        poly = find_polytope(self.model(), "fc6", self.image(1, 0)[0], n_vertices=N_VERTICES, device=self.device,
                             config=fixed_steps(steps), **kwargs)
        seconds = float(poly.solver["seconds"])  # the solver's loop alone, synchronised
        return {"solver_steps": steps, "solver_seconds": seconds, "steps_per_second": steps / seconds}

    def vgg_fc6(self) -> dict[str, Any]:
        """Solver steps per second at fc6 on pixels, against the matmul rate."""
        s = self.sizes
        self.warm_up()
        out = self.timed_solve()
        with full_precision():
            flop = step_flop(self.model(), "fc6", self.image(N_VERTICES, 1), self.device)
        achieved = flop * out["steps_per_second"]
        return {"image_size": s.image_size, "n_vertices": N_VERTICES, **out, "step_gflop": flop / 1e9,
                "achieved_tflops": achieved / 1e12, "matmul_tflops": self.peak() / 1e12,
                "share_of_matmul_rate": achieved / self.peak()}

    def composition(self) -> Composition:
        """Random patches as every window's candidates (the first stands for the start's own)."""
        s = self.sizes
        grid = (s.image_size - s.patch_size) // s.patch_stride + 1
        gen = torch.Generator().manual_seed(2)
        candidates = torch.rand(grid * grid, s.candidates, 3, s.patch_size, s.patch_size, generator=gen)
        return Composition(candidates, (3, s.image_size, s.image_size), s.patch_stride)

    def patches(self) -> dict[str, Any]:
        """The patch composition at full size: composing alone, and solver steps through it."""
        s = self.sizes
        comp = self.composition()
        param = ComposedPatches(comp, tv_weight=1e-3)
        self.warm_up(param=param)
        on = comp.to(self.device)
        logits = initial_logits(len(comp.candidates), s.candidates).expand(N_VERTICES, -1, -1).to(self.device)
        logits = logits.clone().requires_grad_(True)
        synchronize(self.device)
        t0 = time.perf_counter()
        with full_precision():
            for _ in range(s.solver_steps):
                compose(logits, on).sum().backward()
        synchronize(self.device)
        compose_seconds = (time.perf_counter() - t0) / s.solver_steps
        out = self.timed_solve(param=param)
        with full_precision():
            flop = step_flop(self.model(), "fc6", logits.detach(), self.device, decode=param.on(self.device).decode)
        achieved = flop * out["steps_per_second"]
        return {"image_size": s.image_size, "grid": list(comp.grid), "patch_size": s.patch_size,
                "stride": s.patch_stride, "candidates": s.candidates, "n_vertices": N_VERTICES,
                "compose_forward_backward_seconds": compose_seconds, **out, "step_gflop": flop / 1e9,
                "achieved_tflops": achieved / 1e12, "share_of_matmul_rate": achieved / self.peak()}

    def mnist_batch(self) -> dict[str, Any]:
        """Every target's polytope in one gradient batch, then each checked in float64.

        :func:`collide.find_polytopes` is these two steps; they are taken apart here so that
        the checks, one target at a time, stop where the item's share of the budget ends
        (``checked_targets`` says how far they got) instead of overrunning it.
        """
        s = self.sizes
        model, layer, targets, what = mnist_problem("mlp", s.mnist_targets, tiny=self.tiny)
        config = solver_config(s.mnist_steps)
        solver = GradientSolver(config)
        site = resolve(model, layer, targets[:1])
        t0 = time.perf_counter()
        solved = solver(model, site, list(targets), [None] * len(targets), n_vertices=N_VERTICES, device=self.device)
        solve_and_setup = time.perf_counter() - t0
        records = [found.record for _, found in solved]
        solve = float(records[0].get("batch_seconds", records[0]["seconds"]))
        stop_at = self.deadline - sum(s.reserve[name] for name in ITEMS[ITEMS.index("mnist_batch") + 1:])
        criterion = solver.criterion.at(site)
        valid = []
        t0 = time.perf_counter()
        for pr, found in solved:
            if time.perf_counter() > stop_at:
                break
            poly = check_polytope(model, site, found.vertices, pr.target, found.init, pr.units, method=solver.method,
                                  criterion=criterion, solver=found.record, device=self.device)
            valid.append(poly.valid)
        check = time.perf_counter() - t0
        steps = torch.tensor([st for r in records for st in r["steps"]], dtype=torch.float64)
        return {"model": "mlp", "layer": site.name, "targets": len(solved), "targets_are": what,
                "n_vertices": N_VERTICES, "max_steps": config.max_steps, "solver_seconds": solve,
                "setup_seconds": solve_and_setup - solve, "targets_per_second": len(solved) / solve,
                "mean_steps": float(steps.mean()),
                "converged_share": _share([r["outcomes"] for r in records], "converged"),
                "checked_targets": len(valid), "check_seconds": check,
                "check_seconds_per_target": check / max(len(valid), 1),
                "valid_share_of_checked": float(torch.cat(valid).float().mean()) if valid else None}

    def agreement(self) -> dict[str, Any]:
        """LeNet-5's polytopes solved on the CPU and on the device, TF32 off for both."""
        s = self.sizes
        model, layer, targets, what = mnist_problem("lenet5", s.agreement_targets, tiny=self.tiny)
        config = solver_config(s.agreement_steps)
        with tf32_off() as during:
            runs = {dev: find_polytopes(model, layer, targets, n_vertices=N_VERTICES, device=dev, config=config)
                    for dev in ("cpu", self.device)}
        cpu, dev = runs["cpu"], runs[self.device]
        pairs = list(zip(cpu, dev, strict=True))
        per_vertex = [(a.vertices - b.vertices).abs().flatten(1).amax(1).tolist() for a, b in pairs]
        valid_cpu = [p.valid.tolist() for p in cpu]
        valid_dev = [p.valid.tolist() for p in dev]
        rel = [(a.rel_error - b.rel_error).abs().tolist() for a, b in pairs]
        return {"model": "lenet5", "layer": layer, "targets": len(cpu), "targets_are": what,
                "n_vertices": N_VERTICES, "max_steps": config.max_steps, "devices": ["cpu", self.device],
                "tf32_during": during, "identical": all(torch.equal(a.vertices, b.vertices) for a, b in pairs),
                "max_vertex_abs_diff": max(max(v) for v in per_vertex), "vertex_abs_diff": per_vertex,
                "max_rel_error_diff": max(max(r) for r in rel),
                "valid_cpu": valid_cpu, "valid_device": valid_dev, "same_valid": valid_cpu == valid_dev}

    def run(self) -> dict[str, Any]:
        items: dict[str, Any] = {}
        for name in ITEMS:
            left = self.deadline - time.perf_counter()
            if left < self.sizes.reserve[name] or left <= 0:
                items[name] = {"skipped": f"{max(left, 0):.0f} s of the budget left, the item needs about "
                                          f"{self.sizes.reserve[name]:.0f} s", "seconds": 0.0}
                continue
            t0 = time.perf_counter()
            items[name] = getattr(self, name)()
            synchronize(self.device)
            items[name]["seconds"] = time.perf_counter() - t0
        return items


def _share(outcomes: list[list[str]], which: str) -> float:
    flat = [o for per in outcomes for o in per]
    return sum(o == which for o in flat) / len(flat)


@contextlib.contextmanager
def tf32_off() -> Iterator[dict[str, Any]]:
    """TF32 off for cuBLAS and cuDNN for the block, the caller's switches back after, and
    the two legacy switches as they were inside, for the record.

    Saving and restoring ``allow_tf32`` alone does not give the caller's state back: on
    PyTorch >= 2.9 setting it rewrites the per-backend ``fp32_precision`` (``none``
    becomes ``ieee``), so :func:`collide.precision.full_precision` saves both interfaces.
    """
    with full_precision():
        yield {"matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
               "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


def device_record(device: str) -> dict[str, Any]:
    """The device the figures are of, and the versions that produced them."""
    out: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "precision": settings()}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 1024**3, 1), cudnn=torch.backends.cudnn.version())
    else:
        out["name"] = "cpu"
    return out


def finite_numbers(value: Any) -> bool:
    """Every number in a JSON-like value is finite (NaN or infinity would mean a broken timer)."""
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--tiny", action="store_true", help="small sizes and a small VGG-shaped net: seconds on a CPU")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the results file (default {OUT})")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS,
                        help="seconds for the whole run; items that would not fit are skipped")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}, "
                     f"built for CUDA {torch.version.cuda}); run it where a GPU is, or pass --device cpu "
                     "(with --tiny for the quick check)")
    sizes = TINY if args.tiny else FULL
    suite = Suite(sizes, device=args.device, tiny=args.tiny, budget=args.budget)
    items = suite.run()
    result = {
        "machine": machine(),
        "device": device_record(args.device),
        "tiny": args.tiny,
        "sizes": asdict(sizes),
        "budget_seconds": args.budget,
        "seconds": time.perf_counter() - suite.start,
        "skipped": [name for name, item in items.items() if "skipped" in item],
        "items": items,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    for name, item in items.items():
        print(f"{name}: " + (item["skipped"] if "skipped" in item else f"{item['seconds']:.1f} s"))
    print(f"wrote {args.out} in {result['seconds']:.1f} s")
    return result


if __name__ == "__main__":
    main()
