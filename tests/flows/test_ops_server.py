"""Operations end to end against a real `collide serve` (Prefect server, UI, runner).

One server for the module: the deployments and their schedules through the API, a run
through a deployment and its artifacts, the fan-out over a local Dask cluster against
the targets one by one, a run killed with SIGKILL and rerun, and a rerun that reuses
everything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from collide.config import RowSpec, SampleConfig, TrainConfig
from collide.experiments import engine, mnist
from collide.experiments.mnist import MnistExperiment
from collide.results.resume import row_keys
from collide.results.store import ExperimentStore
from flows.serve import PROJECT
from tests.support import TEST_GRADIENT, snapshot

pytestmark = pytest.mark.slow
TIMING = ["solver_seconds", "region_seconds"]
# The fan-out, kill and remote-cluster runs compare one path's rows with another's, bit for
# bit: a quarter of TEST_GRADIENT's steps, with a larger step and a faster-growing penalty
# so that the vertices still meet their criterion and every row is sampled (20 of 20 rows
# for each of three data and training seeds, against 0 of 20 at 100 steps of
# TEST_GRADIENT's schedule; 12 s against 29 s for the 20 jobs in one process). The fan-out
# test checks that every row was sampled: rows without samples would compare less.
ORCHESTRATION = {"gradient": {**dataclasses.asdict(TEST_GRADIENT), "max_steps": 100, "lr": 0.03, "lr_end": 0.003,
                              "growth": 1.06}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(tiny_mnist: Path, root: Path, name: str, **changes) -> MnistExperiment:
    """A tiny experiment writing to ``root/name``; the checkpoint is shared, so that runs
    differ in where they write only (which no digest or key includes)."""
    base = MnistExperiment(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "checkpoints"), results_root=str(root / name),
        device="cpu", allow_download=False, train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=300, n_dataset_pairs=200), gradient=TEST_GRADIENT,
        rows=(RowSpec("gradient", "target"), RowSpec("gradient", "other")),
    )
    return MnistExperiment.from_dict({**base.to_dict(), **changes})


def _stop_serve(proc: subprocess.Popen) -> None:
    """SIGTERM to `collide serve` alone (as a service manager would): it pauses its
    deployments and stops the server itself; then whatever is left of its group goes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def server(tiny_mnist, tmp_path_factory):
    """`collide serve` on a free loopback port, deploying prefect.yaml with tiny configs."""
    root = tmp_path_factory.mktemp("ops")
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        d["parameters"]["config"] = _config(tiny_mnist, root, d["name"]).to_dict() | {
            "name": d["parameters"]["config"]["name"]}
    deployments = root / "prefect.yaml"
    deployments.write_text(yaml.safe_dump(spec))
    spec = yaml.safe_load(deployments.read_text())  # as the server will see it: lists, not tuples
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "home"), "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    env.pop("PREFECT_API_URL", None)
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--file", str(deployments),
         "--home", str(root / "home")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()
            try:
                if len(httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()) == len(spec["deployments"]):
                    break
            except (httpx.HTTPError, ValueError, TypeError):
                pass
            time.sleep(1)
        else:
            pytest.fail("collide serve did not register the deployments: " + (root / "serve.log").read_text())
        yield {"api": api, "root": root, "spec": spec, "port": port,
               "env": {**env, "PREFECT_API_URL": api}}
    finally:
        _stop_serve(proc)
        log.close()


def _post(api: str, path: str, body: dict) -> list | dict:
    for attempt in range(6):  # SQLite busy gives 503; Prefect's own client retries it too
        response = httpx.post(f"{api}/{path}", json=body, timeout=30)
        if response.status_code not in (429, 503):
            break
        time.sleep(1 + attempt)
    response.raise_for_status()
    return response.json()


def _wait_final(api: str, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout} s")


def test_deployments_carry_the_schedules_and_parameters_of_prefect_yaml(server):
    deployments = {d["name"]: d for d in _post(server["api"], "deployments/filter", {})}
    for want in server["spec"]["deployments"]:
        got = deployments[want["name"]]
        assert got["entrypoint"] == want["entrypoint"]
        assert got["parameters"] == want["parameters"]
        crons = [s["schedule"]["cron"] for s in got["schedules"] if s["active"]]
        assert crons == [s["cron"] for s in want["schedules"]]
        # the server's scheduler service turns the cron into runs at the times it names
        deadline = time.time() + 90
        while not (runs := _post(server["api"], "flow_runs/filter", {
                "flow_runs": {"deployment_id": {"any_": [got["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}},
                "limit": 3})) and time.time() < deadline:
            time.sleep(2)
        assert runs, want["name"]
        minute, hour = (int(f) for f in crons[0].split()[:2])
        for run in runs:
            start = pd.Timestamp(run["expected_start_time"]).tz_convert("UTC")
            assert (start.minute, start.hour) == (minute, hour) and start > pd.Timestamp.now(tz="UTC")


def test_a_deployment_run_completes_and_publishes_its_table_figure_and_progress(server):
    api = server["api"]
    deployment = next(d for d in _post(api, "deployments/filter", {}) if d["name"] == "mnist-nightly")
    # A folder of this run's own: the deployment's cron may fire while the test runs (at
    # 03:00 UTC a scheduled run solved the rows first, and this one reused them all).
    config = {**deployment["parameters"]["config"], "results_root": str(server["root"] / "deployment-run")}
    created = _post(api, f"deployments/{deployment['id']}/create_flow_run", {"parameters": {"config": config}})
    run = _wait_final(api, created["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["config"]["results_root"] == config["results_root"]
    results = Path(config["results_root"])
    table = pd.read_parquet(results / "mnist.parquet")
    artifacts = _post(api, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    by_type: dict[str, list] = {}
    for a in artifacts:
        by_type.setdefault(a["type"], []).append(a)
    data = by_type["table"][0]["data"]
    records = json.loads(data) if isinstance(data, str) else data
    assert by_type["table"][0]["key"] == "mnist-table"
    assert [r["row"] for r in records] == table["row"].tolist()
    assert np.allclose([r["success_rate"] for r in records], table["success_rate"])
    markdown = by_type["markdown"][0]["data"]
    assert "data:image/png;base64," in markdown and "| row |" in markdown
    progress = [float(a["data"]) for a in by_type["progress"]]
    assert progress and max(progress) == 100.0  # vertex optimisation reported to the end
    wanted = ("fanning out 2 polytope jobs", "vertices (gradient):", "5/5 vertices valid; success rate 1;",
              "rows were already finished")
    deadline = time.time() + 60  # the server stores logs a little after the run ends
    while True:
        logs = _post(api, "logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
        words = " ".join(entry["message"] for entry in logs)
        if all(w in words for w in wanted) or time.time() > deadline:
            break
        time.sleep(2)
    assert all(w in words for w in wanted), words


def _cli_run(server, config: MnistExperiment, *extra: str, **popen) -> subprocess.Popen:
    path = Path(config.checkpoint_dir).parent / f"config-{time.monotonic_ns()}.json"
    path.write_text(config.to_json())
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "mnist", "--config", str(path), "--workers", "2", *extra],
        env=server["env"], cwd=PROJECT, start_new_session=True, text=True, **popen,
    )


def _assert_same_rows(a: MnistExperiment, b: MnistExperiment) -> None:
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(a.results_root) / f"{a.name}.parquet").drop(columns=TIMING, errors="ignore"),
        pd.read_parquet(Path(b.results_root) / f"{b.name}.parquet").drop(columns=TIMING, errors="ignore"))
    assert ExperimentStore.of(a).rows() == ExperimentStore.of(b).rows()
    for row in ExperimentStore.of(a).rows():
        x, _ = ExperimentStore.of(a).read_row(row)
        y, _ = ExperimentStore.of(b).read_row(row)
        assert x.keys() == y.keys()
        for key in x:
            assert np.array_equal(x[key], y[key], equal_nan=True), (row, key)


@pytest.fixture(scope="module")
def fanned_out(server, tiny_mnist):
    """Ten targets (one per class), two rows each: twenty polytope jobs over a local 2-worker Dask cluster."""
    config = _config(tiny_mnist, server["root"], "fanout", targets_per_class=1, **ORCHESTRATION)
    start = time.perf_counter()
    proc = _cli_run(server, config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    return config, time.perf_counter() - start


def test_fan_out_over_dask_gives_the_rows_of_the_targets_one_by_one(fanned_out, tmp_path):
    config, _ = fanned_out
    assert len(ExperimentStore.of(config).rows()) == 20
    assert pd.read_parquet(Path(config.results_root) / "mnist.parquet")["success_rate"].notna().all()
    one_by_one = MnistExperiment.from_dict({**config.to_dict(), "results_root": str(tmp_path / "serial")})
    out = engine.run(mnist, config=one_by_one)
    assert len(out["rows"]) == 20 and len({r["target_index"] for r in out["rows"]}) == 10
    _assert_same_rows(config, one_by_one)


def test_rerun_with_everything_finished_reuses_it_and_changes_nothing(server, fanned_out):
    config, _ = fanned_out
    before = snapshot(config.results_root)
    proc = _cli_run(server, config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert "20 of 20 rows were already finished and reused" in out
    assert "20 of 20 polytope jobs already finished" in out
    assert "Creating a new Dask cluster" not in out  # read back in the flow: no workers started for nothing
    assert snapshot(config.results_root) == before  # not one byte, not one mtime


def test_a_run_killed_mid_stage_reruns_to_the_uninterrupted_result(server, tiny_mnist, fanned_out):
    uninterrupted, _ = fanned_out
    config = _config(tiny_mnist, server["root"], "killed", targets_per_class=1, **ORCHESTRATION)
    log = Path(config.checkpoint_dir).parent / "killed.log"
    with log.open("w") as out:
        proc = _cli_run(server, config, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        finished: list[int] = []
        while time.time() < deadline and proc.poll() is None:
            finished = [r for r in ExperimentStore.of(config).rows()
                        if "evaluate" in row_keys(ExperimentStore.of(config), r)]
            if len(finished) >= 4:
                os.killpg(proc.pid, signal.SIGKILL)  # the flow and its Dask workers, no cleanup
                break
            time.sleep(0.05)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    # cut off mid-way: some rows are missing, and whatever is there is whole
    present = ExperimentStore.of(config).rows()
    assert len(present) < 20
    assert not (Path(config.results_root) / "mnist.parquet").exists()
    for row in present:
        arrays, attrs = ExperimentStore.of(config).read_row(row)
        assert {"vertices", "target", "init"} <= arrays.keys()
        assert arrays["vertices"].shape == (5, 1, 28, 28)
        if "evaluate" in attrs.get("keys", {}):
            assert "metrics" in attrs and arrays["sample_pred"].shape == (300,)
    kept = {r: (ExperimentStore.of(config).path / f"row-{r}" / "zarr.json").stat().st_mtime_ns
            for r in finished}
    rerun = _cli_run(server, config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, text
    # the jobs finished before the kill are read back in the flow, the rest fanned out
    read_back = re.search(r"(\d+) of 20 polytope jobs already finished", text)
    assert read_back and len(kept) <= int(read_back[1]) < 20, text
    assert f"fanning out {20 - int(read_back[1])} polytope jobs" in text
    for row, stamp in kept.items():  # finished before the kill: reused, not rewritten
        assert (ExperimentStore.of(config).path / f"row-{row}" / "zarr.json").stat().st_mtime_ns == stamp
    _assert_same_rows(config, uninterrupted)
    assert not list((Path(config.results_root) / ".tmp").glob("mnist-row-*"))  # the kill's scratch, cleared


def test_tables_flow_rebuilds_from_the_store_alone_and_publishes(server, fanned_out, tmp_path):
    config, _ = fanned_out
    root = tmp_path / "rebuilt"
    shutil.copytree(ExperimentStore.of(config).path, ExperimentStore(root, config.name).path)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "tables", "--results-root", str(root)],
                          env=server["env"], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(root / "mnist.parquet"),
                                  pd.read_parquet(Path(config.results_root) / "mnist.parquet"))
    assert (root / "report.html").is_file()
    [run] = _post(server["api"], "flow_runs/filter", {
        "flows": {"name": {"any_": ["tables"]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 1})
    assert run["state_type"] == "COMPLETED"
    keys = {a["key"] for a in _post(server["api"], "artifacts/filter",
                                    {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})}
    assert {"mnist-table", "mnist-report"} <= keys


def test_a_transient_failure_is_retried_and_a_bad_input_is_not(server, tmp_path):
    script = tmp_path / "flaky.py"
    script.write_text(f"""
import sys
from pathlib import Path
from prefect import flow, task
from collide.errors import DataError
from tasks._common import TASK_OPTIONS

COUNT = Path({str(tmp_path / "count")!r})

@task(**{{**TASK_OPTIONS, "retry_delay_seconds": 0}})
def flaky(kind: str) -> int:
    n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1
    COUNT.write_text(str(n))
    if kind == "transient" and n == 1:
        raise OSError("the disk hiccuped")
    if kind == "bad":
        raise DataError("no such layer")
    return n

@flow
def main(kind: str) -> int:
    return flaky(kind)

if __name__ == "__main__":
    print("RESULT", main(sys.argv[1]))
""")
    ok = subprocess.run([sys.executable, str(script), "transient"], env=server["env"], cwd=PROJECT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "RESULT 2" in ok.stdout, ok.stderr
    (tmp_path / "count").unlink()
    bad = subprocess.run([sys.executable, str(script), "bad"], env=server["env"], cwd=PROJECT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and (tmp_path / "count").read_text() == "1"  # refused once, not retried


def test_an_existing_dask_scheduler_runs_the_same_jobs(server, tiny_mnist, tmp_path):
    from distributed import LocalCluster

    # One target, two jobs: enough to show where they ran (the fan-out above covers twenty).
    config = _config(tiny_mnist, server["root"], "remote", **ORCHESTRATION)
    # a cluster of its own, set up as docs/operations.md asks: workers know the Prefect API
    scratch = str(tmp_path / "dask")  # not Dask's default, which every user of the machine shares
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", local_directory=scratch,
                      scheduler_kwargs={"local_directory": scratch}, dashboard_address=None,
                      env={"PREFECT_API_URL": server["api"]}) as cluster:
        proc = _cli_run(server, config, "--dask-address", cluster.scheduler_address,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out
        assert "Connecting to an existing Dask cluster" in out
    in_process = MnistExperiment.from_dict({**config.to_dict(), "results_root": str(tmp_path / "in-process")})
    assert len(engine.run(mnist, config=in_process)["rows"]) == 2
    _assert_same_rows(config, in_process)
    # the jobs ran as task runs of this flow run, reported to this server
    [run] = _post(server["api"], "flow_runs/filter", {  # the latest finished one, not a scheduled one
        "flows": {"name": {"any_": ["experiment"]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "EXPECTED_START_TIME_DESC", "limit": 1})
    jobs = _post(server["api"], "task_runs/filter", {
        "flow_runs": {"id": {"any_": [run["id"]]}}, "task_runs": {"name": {"like_": "target-"}}})
    assert len(jobs) == 2 and {j["state_type"] for j in jobs} == {"COMPLETED"}
