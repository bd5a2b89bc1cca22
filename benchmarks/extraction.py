"""Item 4: patch extraction, Dask into Zarr against single-process numpy.

Each run happens in a fresh child process so its peak resident memory is its own:
the child loads the source images first (both paths hold them), notes its resident
memory, extracts, and reports how far the high-water mark (VmHWM) rose above that.
The numpy path must hold the whole corpus in memory; the Dask path writes it chunk
by chunk into Zarr, so its peak should hardly grow with the corpus.

The machine may be shared: each child notes the load average before and after, and
the Dask/numpy throughput ratio is taken within a round of the four runs.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collide.config import PatchConfig
from collide.patches.extract import TASK_BYTES

CONFIG = PatchConfig()  # 8x8 patches at stride 4, 200 images per chunk
SIZES = (6_000, 60_000)  # images: two corpora ten times apart
REPEATS = 3


def _child(method: str, n_images: int, workdir: str) -> dict[str, Any]:
    from benchmarks.common import mnist_train_file, proc_status_mib
    from collide.experiments.patch_sources import _idx, _load_mnist
    from collide.patches.extract import build_store, extract

    # The pipeline's own loader (a picklable partial over the IDX file, read once and
    # cached). The file is read before the baseline, so neither path is charged for it.
    path = str(mnist_train_file())
    _idx(path)
    # A tiny warm-up run first: lazy imports, codec contexts and the thread pool are
    # one-time costs of the process, not of the corpus.
    build_store(Path(workdir) / "warmup.zarr", range(8), functools.partial(_load_mnist, path),
                image_shape=(1, 28, 28), config=CONFIG, scheduler="threads")
    extract(_load_mnist(path, list(range(8))), CONFIG.size, CONFIG.stride)
    before = proc_status_mib("VmRSS")
    start = time.perf_counter()
    if method == "numpy":
        patches, _ = extract(_load_mnist(path, list(range(n_images))), CONFIG.size, CONFIG.stride)
        n = len(patches)
    else:
        n = build_store(Path(workdir) / "patches.zarr", range(n_images), functools.partial(_load_mnist, path),
                        image_shape=(1, 28, 28), config=CONFIG, scheduler="threads")["n_patches"]
    seconds = time.perf_counter() - start
    return {"method": method, "n_images": n_images, "n_patches": n, "seconds": seconds,
            "patches_per_second": n / seconds, "peak_mib": proc_status_mib("VmHWM") - before}


def measure(method: str, n_images: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="collide-bench-") as tmp:
        out = subprocess.run([sys.executable, "-m", "benchmarks.extraction", method, str(n_images), tmp],
                             check=True, capture_output=True, text=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": [load, os.getloadavg()[0]]}


def run(repeats: int = REPEATS) -> dict[str, Any]:
    # numpy and Dask alternate, so a change in the machine's load hits both alike; the
    # ratio is taken per round, and the median round is reported.
    rounds = [[measure(m, n) for n in SIZES for m in ("numpy", "dask")] for _ in range(repeats)]
    ratios = [{n: _by(r, "dask", n)["patches_per_second"] / _by(r, "numpy", n)["patches_per_second"] for n in SIZES}
              for r in rounds]
    median = sorted(range(repeats), key=lambda i: ratios[i][SIZES[-1]])[repeats // 2]
    rows = rounds[median]
    growth = {}
    for method in ("numpy", "dask"):
        small, large = (r for r in rows if r["method"] == method)
        growth[method] = large["peak_mib"] / small["peak_mib"]
    return {"patch": {"size": CONFIG.size, "stride": CONFIG.stride, "images_per_chunk": CONFIG.images_per_chunk},
            "task_bytes": TASK_BYTES, "runs": rows, "peak_growth": growth, "corpus_growth": SIZES[1] / SIZES[0],
            "dask_over_numpy": {str(n): ratios[median][n] for n in SIZES},
            "dask_over_numpy_rounds": [r[SIZES[-1]] for r in ratios]}


def _by(rows: list[dict[str, Any]], method: str, n_images: int) -> dict[str, Any]:
    return next(r for r in rows if r["method"] == method and r["n_images"] == n_images)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
