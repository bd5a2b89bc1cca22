"""The paper scheme's learning rate, re-tuned on the shipped checkpoints.

``python -m benchmarks.paper_lr`` runs :func:`benchmarks.solver.lr_grid` on each model's
Table 2 problem (five vertices from the other digit, 6,000 steps, one thread) and writes
``benchmarks/paper_lr.json``: every rate's largest feature error, spread and time, the
best rate, and the machine. :data:`collide.config.PAPER_TUNED_LR` holds the best ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MODELS, collision_problem, machine
from benchmarks.solver import lr_grid
from collide.solvers.paper import PAPER_TUNED_LR

OUT = Path(__file__).parent / "paper_lr.json"


def grid(arch: str) -> dict[str, Any]:
    p = collision_problem(arch)
    rows = lr_grid(p)
    best = min(rows, key=lambda r: r["max_rel_error"])
    return {"model": arch, "layer": p["layer"], "grid": rows, "best_lr": best["lr"],
            "tuned_lr": PAPER_TUNED_LR[arch]}


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {"machine": machine(), "models": [grid(arch) for arch in MODELS]}
    finally:
        torch.set_num_threads(threads)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    for m in results["models"]:
        print(f"{m['model']} at {m['layer']}: best lr {m['best_lr']:g} (PAPER_TUNED_LR {m['tuned_lr']:g})")
        for r in m["grid"]:
            print(f"  lr {r['lr']:<8g} max feature error {r['max_rel_error']:.4f}  "
                  f"spread {r['vertex_avg_distance']:.2f}  {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
