"""The Prefect flow equals the plain-Python pipeline, and the CLI fails cleanly."""

import dataclasses
import subprocess
import sys

import pandas as pd
import pytest

from collide.results.store import ExperimentStore
from tests.support import LIGHT_GEOMETRY, TEST_GRADIENT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield


def test_flow_writes_what_the_plain_pipeline_writes(harness, mnist_run, tmp_path):
    from flows.experiment import experiment_flow

    plain_cfg, plain = mnist_run  # the session's plain run; the flow reuses its checkpoint
    flow_cfg = dataclasses.replace(plain_cfg, results_root=str(tmp_path / "flow"))
    out = experiment_flow(experiment="mnist", config=flow_cfg.to_dict())
    flow_table = pd.read_parquet(out["table"])
    plain_table = pd.read_parquet(plain["table"])
    timing = ["solver_seconds", "region_seconds"]
    pd.testing.assert_frame_equal(flow_table.drop(columns=timing, errors="ignore"),
                                  plain_table.drop(columns=timing, errors="ignore"))
    for row in range(len(flow_cfg.rows)):
        a, _ = ExperimentStore.of(flow_cfg).read_row(row)
        b, _ = ExperimentStore.of(plain_cfg).read_row(row)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all() or (pd.isna(a[key]) & pd.isna(b[key])).all(), (row, key)


# The exact rows' collision sets measured as cheaply as the in-process runs measure them.
LIGHT_GEOMETRY_FIELDS = ("n_samples", "chains", "burn_in", "thin", "n_directions", "max_draws")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_and_bad_inputs(tmp_path):
    top = _cli("--help")
    assert top.returncode == 0 and "run" in top.stdout
    run_help = _cli("run", "--help")
    assert run_help.returncode == 0 and "--no-prefect" in run_help.stdout
    bad_layer = _cli("run", "mnist", "--set", "layer=fc9", "--results-root", str(tmp_path / "r"))
    assert bad_layer.returncode == 2
    assert "no layer named 'fc9'" in bad_layer.stderr and "relu1" in bad_layer.stderr
    bad_value = _cli("run", "mnist", "--set", "n_vertices=0")
    assert bad_value.returncode == 2 and "n_vertices" in bad_value.stderr
    bad_set = _cli("run", "mnist", "--set", "novalue")
    assert bad_set.returncode == 2 and "key=value" in bad_set.stderr
    missing = _cli("run", "mnist", "--config", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "r").exists()
    unknown = _cli("run", "imagenet9")
    assert unknown.returncode == 2


def test_cli_plain_run_offline(tiny_config, tmp_path):
    res = _cli(
        "run", "mnist", "--no-prefect",
        "--data-root", tiny_config.data_root, "--results-root", str(tmp_path / "res"),
        "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu",
        "--set", "allow_download=false", "--set", "train.epochs=1", "--set", "train.min_accuracy=0",
        "--set", "sample.n_samples=100", "--set", "paper.steps=300",
        "--set", f"gradient.max_steps={TEST_GRADIENT.max_steps}",
        *(a for k in LIGHT_GEOMETRY_FIELDS for a in ("--set", f"geometry.{k}={getattr(LIGHT_GEOMETRY, k)}")),
    )
    assert res.returncode == 0, res.stderr
    assert "table:" in res.stdout
    assert len(pd.read_parquet(tmp_path / "res" / "mnist.parquet")) == 6
    # each row's summary and the reuse count, as the flow logs them
    assert "row 0 (gradient, init=target): " in res.stdout and res.stdout.count(": computed\n") == 6
    assert "0 of 6 rows were already finished and reused" in res.stdout
    assert f"`collide tables --results-root {tmp_path / 'res'}` writes report.html" in res.stdout


def test_patches_and_imagenet_flows_run(harness, tiny_mnist, tmp_path):
    from collide.config import KnnConfig, PatchConfig, SampleConfig, TrainConfig
    from collide.datasets.folders import bundled_corpus
    from collide.experiments.patches import PatchExperiment
    from flows.experiment import experiment_flow

    patch_cfg = PatchExperiment(
        data_root=str(tiny_mnist), checkpoint_dir=str(tmp_path / "ck"), cache_root=str(tmp_path / "cache"),
        results_root=str(tmp_path / "res"), device="cpu", allow_download=False,
        train=TrainConfig(arch="lenet5", epochs=1, min_accuracy=0.0), patch=PatchConfig(share=0.05),
        knn=KnnConfig(k=3), sample=SampleConfig(n_samples=50, n_dataset_pairs=20),
    )
    raw = patch_cfg.to_dict()
    raw["gradient"].update(max_steps=30, min_steps=0)
    out = experiment_flow(experiment="patches", config=raw)
    assert len(pd.read_parquet(out["table"])) == 2
    photos = bundled_corpus(tmp_path / "photos", size=36)
    out = experiment_flow(experiment="imagenet", config={
        "image_root": str(photos), "image_size": 32, "weights": "random", "device": "cpu",
        "results_root": str(tmp_path / "res"), "gradient": {"max_steps": 5, "min_steps": 0},
        "sample": {"n_samples": 20, "n_dataset_pairs": 10}, "n_dataset_images": 4,
    })
    assert out["random_weights"] and len(pd.read_parquet(out["table"])) == 1


def test_a_transient_task_failure_is_retried_to_success_and_a_permanent_one_never(harness):
    """A task that fails once for a passing reason (a lost connection) is
    retried and succeeds; one that fails for a reason a retry cannot cure (a read-only
    disk) fails at once, its body run once."""
    import errno

    from prefect import flow, task

    from tasks._common import TASK_OPTIONS

    options = {**TASK_OPTIONS, "retry_delay_seconds": 0}
    calls = {"flaky": 0, "read_only": 0}

    @task(**options)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionResetError("the worker's connection was reset")
        return "done"

    @task(**options)
    def read_only() -> None:
        calls["read_only"] += 1
        raise OSError(errno.EROFS, "Read-only file system")

    @flow
    def both():
        return flaky(), read_only(return_state=True)

    result, state = both()
    assert result == "done" and calls["flaky"] == 2
    assert state.is_failed() and calls["read_only"] == 1
