"""The scan on a real Dask cluster: a scheduler and workers in other processes, started in
another folder than the run's, against the same scan run in plain Python.

Usage: ``python -m benchmarks.cluster`` from the repository root (MNIST in
``data/raw/mnist``); writes ``benchmarks/cluster.json``: each run's wall time, whether
its ranking, table and rows equal the plain run's, the cores each worker gave a job, and
the machine with its load average before and after (a figure taken while something else
ran says so).

What it starts, all of it stopped when it ends (failed or not), in a temporary folder:

- ``prefect server start`` on a free loopback port, its home in the folder: the
  submitter and every worker report to it (``PREFECT_API_URL``), as on a user's cluster;
- ``dask scheduler`` and N ``dask worker --nthreads 1`` processes, started in
  ``workers/``, where no ``data/`` exists: a job finds its files only by the absolute
  paths the submitter sent;
- ``collide run scan`` in ``submitter/``, naming its data and results relatively
  (``--data-root mnist``, a link to the repository's MNIST), once with ``--no-prefect``
  and then with ``--dask-address`` on 1, 2, 2 and 1 workers (in that order, so that a
  drift in the machine's load falls on both counts alike).

Each run writes a fresh results root, so each computes every row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine
from collide.results.store import ExperimentStore
from collide.workers import job_cores

HERE = Path(__file__).parent
REPO = HERE.parent
BIN = Path(sys.executable).parent  # the environment's `collide`, `dask` and `prefect`
NAME = "scan"
# Eight test examples, each screened in a job of its own (8 jobs): its gradient polytope and
# its exact set's dimension and radius, with no wall-clock limit anywhere.
SCAN = ["--set", "indices=[0,1,2,3,4,5,6,7]", "--set", "targets_per_batch=1"]
TIMING = ["solver_seconds", "region_seconds"]  # wall-clock columns: never equal between runs
ORDER = (1, 2, 2, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(ready: Any, what: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}) before it was ready: {log.read_text()[-2000:]}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(1)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")


class Processes:
    """Subprocesses started in their own process groups, each stopped (SIGTERM, then SIGKILL)
    on :meth:`stop`, newest first."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
        out = log.open("w")
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        out.close()
        self.running.append(process)
        return process

    def stop(self) -> None:
        while self.running:
            process = self.running.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def prefect_server(procs: Processes, folder: Path, env: dict[str, str]) -> str:
    """A Prefect server on a free loopback port; its API URL once it answers."""
    port = _free_port()
    log = folder / "prefect-server.log"
    process = procs.start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=folder, env=env, log=log)
    url = f"http://127.0.0.1:{port}/api"
    _wait(lambda: urllib.request.urlopen(f"{url}/health", timeout=5).status == 200, "the Prefect server",
          process, log, timeout=600)
    return url


@contextlib.contextmanager
def dask_cluster(n_workers: int, *, folder: Path, env: dict[str, str]) -> Iterator[tuple[str, list[int]]]:
    """``dask scheduler`` and ``n_workers`` ``dask worker --nthreads 1`` processes started in
    ``folder``; yields the scheduler's address and the cores each worker gives a job
    (:func:`collide.workers.job_cores`, run as a task there). Every process is stopped after."""
    from distributed import Client

    procs = Processes()
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    try:
        log = folder / "scheduler.log"
        scheduler = procs.start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"], cwd=folder, env=env, log=log)
        _wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close() is None, "the Dask scheduler",
              scheduler, log)
        for k in range(n_workers):
            procs.start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                         "--local-directory", str(folder / f"scratch-{k}")], cwd=folder, env=env,
                        log=folder / f"worker-{k}.log")
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=300)
            workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
            cores = [client.submit(job_cores, workers=[w], pure=False).result(timeout=120) for w in workers]
        yield address, cores
    finally:
        procs.stop()


def collide_run(args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> float:
    """Seconds ``collide run scan ...`` took in ``cwd``; fails with its log's tail when it fails."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([str(BIN / "collide"), "run", NAME, "--data-root", "mnist", *SCAN, *args],
                              cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"collide run {' '.join(args)} failed ({done.returncode}): {log.read_text()[-3000:]}")
    return seconds


def same_results(a: Path, b: Path) -> dict[str, bool]:
    """Whether two results roots hold the same ranking, table (less its timings) and row arrays."""
    ranking = pd.read_parquet(a / f"{NAME}-ranking.parquet").equals(pd.read_parquet(b / f"{NAME}-ranking.parquet"))
    sa, sb = ExperimentStore(a, NAME), ExperimentStore(b, NAME)
    # A scan's rows are gradient rows: no region_seconds.
    table = sa.read_table().drop(columns=TIMING, errors="ignore").equals(
        sb.read_table().drop(columns=TIMING, errors="ignore"))
    rows = sa.rows() == sb.rows()
    for row in sa.rows() if rows else []:
        (xa, _), (xb, _) = sa.read_row(row), sb.read_row(row)
        rows = rows and xa.keys() == xb.keys() and all(np.array_equal(xa[k], xb[k], equal_nan=True) for k in xa)
    return {"ranking": ranking, "table": table, "row_arrays": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "cluster.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, results)")
    args = parser.parse_args()
    mnist = (REPO / "data" / "raw" / "mnist").resolve()
    if not mnist.is_dir():
        raise SystemExit(f"MNIST not found in {mnist}: run `collide run mnist` once, or copy the IDX files there")
    tmp = Path(tempfile.mkdtemp(prefix="collide-cluster-"))
    submitter, workers = tmp / "submitter", tmp / "workers"
    submitter.mkdir()
    workers.mkdir()
    (submitter / "mnist").symlink_to(mnist)  # the submitter names it relatively; workers get the absolute path
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect")}
    env.pop("PREFECT_API_URL", None)
    procs = Processes()
    before = machine()
    runs: list[dict[str, Any]] = []
    try:
        env["PREFECT_API_URL"] = prefect_server(procs, tmp, env)
        load = [round(x, 2) for x in os.getloadavg()]
        seconds = collide_run(["--no-prefect", "--results-root", "local"], cwd=submitter, env=env,
                              log=tmp / "local.log")
        runs.append({"run": "plain Python (--no-prefect)", "workers": 0, "seconds": round(seconds, 1),
                     "load_average_before": load})
        for k, n in enumerate(ORDER):
            with dask_cluster(n, folder=workers, env=env) as (address, cores):
                load = [round(x, 2) for x in os.getloadavg()]
                root = f"dask-{n}-{k}"
                seconds = collide_run(["--dask-address", address, "--results-root", root], cwd=submitter,
                                      env=env, log=tmp / f"{root}.log")
            runs.append({"run": f"Prefect on {n} Dask worker(s)", "workers": n, "seconds": round(seconds, 1),
                         "job_cores_per_worker": cores, "load_average_before": load,
                         "equal_to_plain": same_results(submitter / "local", submitter / root)})
        leftovers = sorted(p.name for p in workers.iterdir() if not p.name.startswith(("scratch-", "scheduler",
                                                                                      "worker-")))
    finally:
        procs.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    times = {n: statistics.median(r["seconds"] for r in runs if r["workers"] == n) for n in set(ORDER)}
    after = [round(x, 2) for x in os.getloadavg()]
    result = {
        "machine": {**before, "load_average_after": after},
        "what": "collide run scan: 8 MNIST test examples, each screened in a job of its own (8 jobs): its "
                "gradient polytope and its exact set's dimension and radius; each Dask worker --nthreads 1, in "
                "another folder",
        "settings": SCAN,
        "runs": runs,
        "median_seconds": {f"{n}_workers": round(s, 1) for n, s in sorted(times.items())},
        "speedup_2_over_1": round(times[1] / times[2], 2),
        "all_equal_to_plain": all(all(r["equal_to_plain"].values()) for r in runs if r["workers"]),
        "files_written_in_the_workers_folder": leftovers,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "speedup_2_over_1", "all_equal_to_plain")}))


if __name__ == "__main__":
    main()
