"""The one engine, for every experiment: a finished run reruns as a no-op, a killed run
resumes to what an uninterrupted one writes, and the scan's summary is its table's."""

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collide.api import collision_size
from collide.config import GradientConfig, RowSpec, SampleConfig, TrainConfig
from collide.datasets.folders import bundled_corpus
from collide.datasets.mnist import load_mnist
from collide.errors import DataError
from collide.experiments import engine, imagenet, scan
from collide.experiments import mnist as mnist_module
from collide.experiments.imagenet import ImagenetExperiment
from collide.experiments.scan import ScanExperiment, class_summary
from collide.models.zoo import load_checkpoint
from collide.results.report import ranking_markdown
from collide.results.store import ExperimentStore
from collide.results.verify import verify
from tests.support import LIGHT_GEOMETRY, PROJECT, snapshot
from tests.tolerances import EQUIVALENT, LP_OBJECTIVE

pytestmark = pytest.mark.slow
TIMING = ["solver_seconds", "region_seconds"]
# The scan's tests read its exact rows' dimensions and vertices, never the samples of
# their sets: few draws (20 exact rows, each measuring its set, in the scan and its batched twin).
SCAN_GEOMETRY = dataclasses.replace(LIGHT_GEOMETRY, max_draws=5)


def _same_rows(a_root: str, b_root: str, name: str) -> None:
    a_store, b_store = ExperimentStore(a_root, name), ExperimentStore(b_root, name)
    assert a_store.rows() == b_store.rows()
    for row in a_store.rows():
        a, _ = a_store.read_row(row)
        b, _ = b_store.read_row(row)
        assert a.keys() == b.keys(), row
        for key in a:
            assert np.array_equal(a[key], b[key], equal_nan=True), (row, key)
    pd.testing.assert_frame_equal(a_store.read_table().drop(columns=TIMING, errors="ignore"),
                                  b_store.read_table().drop(columns=TIMING, errors="ignore"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two classes of the bundled photos: two targets, four rows, each its own job."""
    root = bundled_corpus(tmp_path_factory.mktemp("photos"), size=40)
    for extra in sorted(p for p in root.iterdir() if p.is_dir())[2:]:
        shutil.rmtree(extra)
    return root


def _imagenet(photos: Path, root: Path) -> ImagenetExperiment:
    return ImagenetExperiment(
        image_root=str(photos), image_size=32, weights="random", device="cpu", results_root=str(root),
        rows=("target", "other"), targets_per_class=1, gradient=GradientConfig(max_steps=15, min_steps=0),
        sample=SampleConfig(n_samples=100, n_dataset_pairs=50), n_dataset_images=10,
    )


def _cli_run(config: ImagenetExperiment, path: Path) -> list[str]:
    """`collide run imagenet --no-prefect` of ``config``, in a process of its own."""
    path.write_text(json.dumps(config.to_dict()))
    return [sys.executable, "-m", "flows.cli", "run", "imagenet", "--no-prefect", "--config", str(path)]


@pytest.fixture(scope="module")
def whole(photos, tmp_path_factory):
    """An uninterrupted run: what every interrupted one must end as. It runs in a process of
    its own, as the interrupted runs do: a float64 product in this long-lived test process
    can round differently in its last bit (1.8e-15 against 1.35e-15 after other modules ran
    here). Reading it back here reuses every row (test_a_finished_imagenet_run_reruns_as_a_no_op)."""
    root = tmp_path_factory.mktemp("whole")
    config = _imagenet(photos, root)
    done = subprocess.run(_cli_run(config, root / "config.json"), cwd=PROJECT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return config, engine.run(imagenet, config=config)


def test_a_killed_imagenet_run_resumes_to_the_uninterrupted_result(whole, photos, tmp_path):
    """SIGKILL `collide run imagenet --no-prefect` once some rows are done, rerun it: the rows
    finished before the kill are not touched, and the store and table end as an
    uninterrupted run's."""
    whole, out = whole
    n_rows = len(out["rows"])
    assert n_rows == 4 and len({r["target_path"] for r in out["rows"]}) == n_rows // 2
    killed = _imagenet(photos, tmp_path / "killed")
    command = _cli_run(killed, tmp_path / "config.json")
    proc = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = Path(killed.results_root) / "imagenet.zarr"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [r for r in ExperimentStore(killed.results_root, "imagenet").rows()
                if "evaluate" in json.loads((store / f"row-{r}" / "zarr.json").read_text())["attributes"].get(
                    "keys", {})]
        if done:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {k: v for k, v in snapshot(store).items() if k.split("/")[0] in {f"row-{r}" for r in done}}
    assert len(ExperimentStore(killed.results_root, "imagenet").rows()) < n_rows, "the kill came after the last row"
    again = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = snapshot(store)
    assert all(after[k] == v for k, v in finished.items()), "a row finished before the kill was rewritten"
    _same_rows(whole.results_root, killed.results_root, "imagenet")


def test_a_finished_imagenet_run_reruns_as_a_no_op(whole):
    config, _ = whole
    before = snapshot(config.results_root)
    again = engine.run(imagenet, config=config)
    assert again["reused"] and again["reused_rows"] == len(again["rows"])
    assert snapshot(config.results_root) == before


@pytest.fixture(scope="module")
def scanned(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    config = ScanExperiment(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "ck"), results_root=str(root / "res"),
        device="cpu", allow_download=False, train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=200, n_dataset_pairs=100), targets_per_class=1,
        gradient=GradientConfig(max_steps=400), targets_per_batch=1,
        geometry=dataclasses.replace(SCAN_GEOMETRY, sizes_only=True),  # the screen, as the scan's default
    )
    return config, engine.run(scan, config=config)


def test_the_scan_covers_every_class_with_both_methods(scanned, tiny_mnist):
    config, out = scanned
    table = pd.read_parquet(out["table"])
    assert len(table) == 20 and set(table["method"]) == {"gradient", "exact"}
    labels = load_mnist(str(tiny_mnist), "test").labels
    firsts = sorted(int(torch.nonzero(labels == c).flatten()[0]) for c in range(10))  # right or wrong
    assert sorted(table["target_index"].unique()) == firsts
    assert config.rows == (RowSpec("gradient", "target"), RowSpec("exact", "target"))


def test_the_ranking_joins_each_examples_rows_most_blind_first(scanned, tiny_mnist):
    config, out = scanned
    table, ranked = pd.read_parquet(out["table"]), pd.read_parquet(out["ranking"])
    labels = load_mnist(str(tiny_mnist), "test").labels
    assert Path(out["ranking"]).name == "scan-ranking.parquet" and Path(out["gallery"]).is_file()
    assert len(ranked) == 10 and list(ranked["rank"]) == list(range(1, 11)) and set(ranked["rank_by"]) == {"radius"}
    assert ranked["size"].is_monotonic_decreasing
    for r in ranked.itertuples():
        grad = table[(table["target_index"] == r.index) & (table["method"] == "gradient")].iloc[0]
        exact = table[(table["target_index"] == r.index) & (table["method"] == "exact")].iloc[0]
        assert r.label == int(labels[r.index]) and r.prediction == grad["target_class"]
        assert r.correct == (r.label == r.prediction) and r.confidence == grad["target_top_prob"]
        assert np.isclose(r.spread, grad["vertex_avg_distance"], equal_nan=True) and r.valid_vertices == grad[
            "valid_vertices"]
        assert (r.dim, r.radius) == (exact["region_dim"], exact["region_radius"])
        # A screen measures no widths: no mean width, except a point's 0.
        assert np.isnan(r.mean_width) == np.isnan(exact["region_mean_width"]) == (r.dim > 0)
    by_spread = scan.ranking(table, labels.numpy(), rank_by="spread")
    assert by_spread["spread"].dropna().is_monotonic_decreasing and set(by_spread["rank_by"]) == {"spread"}


def test_a_screened_row_holds_its_sizes_only_and_the_referee_agrees(scanned):
    config, out = scanned
    store = ExperimentStore.of(config)
    table = pd.read_parquet(out["table"])
    exact = table[table["method"] == "exact"]
    # The screen's radius and dimension are the full measurement's (one LP either way);
    # it has no widths and no sample statistics, each saying why.
    row = int(exact[exact["region_dim"] > 0]["row"].iloc[0])
    arrays, attrs = store.read_row(row)
    assert arrays["region_directions"].shape[0] == 0 and arrays["region_extremes"].shape[0] == 0
    assert "sizes only" in attrs["geometry"]["sampler"]["reason"]
    assert exact.loc[exact["region_dim"] > 0, "region_mean_distance_to_target"].isna().all()
    # The referee recomputes every stored claim from the store alone, and finds none wrong.
    assert [p for r in verify(store) for p in r["problems"]] == []


def test_the_second_stage_certifies_the_most_and_least_blind_and_a_rerun_keeps_it(scanned, tiny_mnist):
    config, out = scanned
    ranked = pd.read_parquet(out["ranking"])
    staged = dataclasses.replace(config, certify=1, certify_geometry=dataclasses.replace(
        SCAN_GEOMETRY, n_directions=3, max_directions=3))
    assert staged.digest() == config.digest()  # no row is solved again for it
    first = engine.run(scan, config=staged)
    assert first["reused_rows"] == len(first["rows"])
    certified = pd.read_parquet(first["certified"])
    sized = ranked.dropna(subset=["size"])
    assert list(certified["index"]) == [sized["index"].iloc[0], sized["index"].iloc[-1]]
    test = load_mnist(str(tiny_mnist), "test")
    model, _ = load_checkpoint(ExperimentStore.of(config).read_attrs(0)["checkpoint"])
    for r in certified.itertuples():
        # The same set as the screen's: the same ball LP (to its tolerance), now with
        # widths along 3 directions, each between two points of the set.
        size = collision_size(model, config.layer, test.images[r.index], config=staged.certify_geometry)
        assert abs(r.radius - r.screen_radius) <= LP_OBJECTIVE * (1 + r.radius) and r.dim == size.dim
        assert r.width_directions == 3 and r.mean_width > 0 and np.isfinite(r.mean_width_se)
        assert r.converged or (np.isnan(r.mean_distance_to_target) and r.reason)
    _, markdown = ranking_markdown(ExperimentStore.of(config))  # the artifact and the report show it
    assert "Certified: the second stage" in markdown and f"| {certified['index'].iloc[0]} |" in markdown
    stamp = Path(first["certified"]).stat().st_mtime_ns
    again = engine.run(scan, config=staged)
    assert again["reused_rows"] == len(again["rows"]) and Path(again["certified"]).stat().st_mtime_ns == stamp
    engine.run(scan, config=config)  # certify 0 again: the earlier second stage goes
    assert not Path(first["certified"]).exists()


def test_the_ranking_is_published_in_the_report_and_as_artifact_markdown(scanned, tmp_path):
    from collide.results.report import write_report

    config, out = scanned
    store = ExperimentStore.of(config)
    frame, markdown = ranking_markdown(store)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(out["ranking"]))
    assert "10 examples ranked by radius" in markdown and "data:image/png;base64," in markdown
    page = write_report(tmp_path, [store]).read_text()
    assert "Ranked: the most and least blind of 10 examples" in page and "gallery" in page


def test_a_scan_of_listed_training_examples(scanned, tiny_mnist, tmp_path):
    config, _ = scanned
    listed = dataclasses.replace(config, split="train", indices=(5, 0, 3), rows=(RowSpec("gradient", "target"),),
                                 results_root=str(tmp_path / "res"))
    out = engine.run(scan, config=listed)
    ranked = pd.read_parquet(out["ranking"])
    train = load_mnist(str(tiny_mnist), "train")
    assert sorted(ranked["index"]) == [0, 3, 5] and set(ranked["rank_by"]) == {"spread"}
    assert list(ranked.sort_values("index")["label"]) == train.labels[[0, 3, 5]].tolist()
    with pytest.raises(DataError, match="past the train split's"):
        engine.run(scan, config=dataclasses.replace(listed, indices=(10**6,)))


def test_a_scan_of_an_image_folder_labelled_by_its_class_folders(scanned, tiny_mnist, tmp_path):
    from PIL import Image

    config, _ = scanned
    test = load_mnist(str(tiny_mnist), "test")
    folder = tmp_path / "digits"
    for label in (3, 7):  # the first two test images of each: as an auditor's own files
        (folder / str(label)).mkdir(parents=True)
        for k, i in enumerate(torch.nonzero(test.labels == label).flatten()[:2].tolist()):
            pixels = (test.images[i, 0] * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(folder / str(label) / f"{k}.png")
    own = dataclasses.replace(config, image_root=str(folder), targets_per_class=0,
                              rows=(RowSpec("gradient", "target"),), results_root=str(tmp_path / "res"))
    out = engine.run(scan, config=own)
    ranked = pd.read_parquet(out["ranking"]).sort_values("index")
    assert list(ranked["index"]) == [0, 1, 2, 3] and list(ranked["label"]) == [3, 3, 7, 7]
    # Oracle: the PNGs read by PIL alone, through the model in float64.
    files = sorted(folder.glob("*/*.png"))
    pixels = torch.tensor(np.stack([np.asarray(Image.open(f), dtype=np.float64) / 255 for f in files]))[:, None]
    model, _ = load_checkpoint(ExperimentStore.of(own).read_attrs(0)["checkpoint"])
    with torch.no_grad():
        prob = torch.softmax(copy.deepcopy(model).double()(pixels), -1)
    assert list(ranked["prediction"]) == prob.argmax(1).tolist()
    assert np.allclose(ranked["confidence"], prob.max(1).values.numpy(), atol=1e-5)
    (folder / "cat").mkdir()
    shutil.copy(files[0], folder / "cat" / "0.png")
    with pytest.raises(DataError, match="not named by an integer label"):
        engine.run(scan, config=own)


def test_a_scan_of_a_dataset_the_users_code_builds(scanned, tiny_mnist, tmp_path, monkeypatch):
    from tests import user_datasets

    config, _ = scanned
    monkeypatch.setenv(user_datasets.ROOT, str(tiny_mnist))
    own = dataclasses.replace(config, dataset="tests.user_datasets:four_digits", targets_per_class=0,
                              rows=(RowSpec("gradient", "target"),), results_root=str(tmp_path / "res"))
    assert own.digest() != dataclasses.replace(own, dataset="tests.user_datasets:four_digits_loader").digest()
    out = engine.run(scan, config=own)
    ranked = pd.read_parquet(out["ranking"]).sort_values("index")
    test = load_mnist(str(tiny_mnist), "test")
    picked = user_datasets.picked_indices(test.labels)
    assert list(ranked["index"]) == [0, 1, 2, 3] and list(ranked["label"]) == test.labels[picked].tolist()
    # Oracle: the same MNIST images through the model in float64.
    model, _ = load_checkpoint(ExperimentStore.of(own).read_attrs(0)["checkpoint"])
    with torch.no_grad():
        prob = torch.softmax(copy.deepcopy(model).double()(test.images[picked].double()), -1)
    assert list(ranked["prediction"]) == prob.argmax(1).tolist()
    assert np.allclose(ranked["confidence"], prob.max(1).values.numpy(), atol=1e-5)
    drifting = dataclasses.replace(own, dataset="tests.user_datasets:drifting_digits",
                                   results_root=str(tmp_path / "drift"))
    with pytest.raises(DataError, match="returned other examples than when the run was planned"):
        engine.run(scan, config=drifting)
    assert not Path(drifting.results_root).exists()  # refused before the plan wrote anything
    eleven = dataclasses.replace(own, dataset="tests.user_datasets:eleventh_class",
                                 results_root=str(tmp_path / "eleven"))
    with pytest.raises(DataError, match=r"example 1 has label 10, but the MNIST classifier's classes are 0 to 9"):
        engine.run(scan, config=eleven)
    assert not Path(eleven.results_root).exists()


def test_the_scan_summary_is_its_tables_per_class_aggregate(scanned):
    config, out = scanned
    table = pd.read_parquet(out["table"])
    summary = pd.read_parquet(out["summary"])
    assert Path(out["summary_figure"]).is_file() and Path(out["summary"]).name == "scan-summary.parquet"
    assert len(summary) == 20
    pd.testing.assert_frame_equal(summary, class_summary(table))
    for (cls, method), part in table.groupby(["target_class", "method"]):
        row = summary[(summary["class"] == cls) & (summary["method"] == method)].iloc[0]
        polytopes = part["valid_vertices"] >= 2
        assert row["targets"] == len(part) and row["polytopes"] == polytopes.sum()
        assert np.isclose(row["success_rate_mean"], part["success_rate"].mean(), equal_nan=True)
        assert np.isclose(row["vertex_avg_distance_mean"], part["vertex_avg_distance"].mean(), equal_nan=True)
        bound = part["dim_upper_bound"].where(part["dim_upper_bound"] >= 0)
        assert np.isclose(row["dim_upper_bound_mean"], bound.mean(), equal_nan=True)
    exact = summary[summary["method"] == "exact"]
    assert (exact["dim_upper_bound_mean"] > 0).all() and (exact["dim_upper_bound_mean"] <= 784).all()


def test_a_finished_scan_reruns_as_a_no_op(scanned):
    config, _ = scanned
    before = snapshot(config.results_root)
    again = engine.run(scan, config=config)
    assert again["summary_reused"] and again["reused"] and again["reused_rows"] == 20
    assert snapshot(config.results_root) == before


def test_a_batched_scan_writes_the_unbatched_scans_polytopes(scanned, tmp_path):
    config, _ = scanned
    batched = dataclasses.replace(config, targets_per_batch=4, targets_per_job=3, results_root=str(tmp_path / "res"))
    assert batched.digest() == dataclasses.replace(config, targets_per_batch=4).digest()  # grouping only
    context = mnist_module.prepare(config=batched)
    jobs = mnist_module.plan(context, config=batched)
    # 10 gradient rows in batches of 4, 4 and 2; the exact rows in jobs of 3, 3, 3 and 1
    # (the fixture's in one job of 10).
    assert sorted(len(j.rows) for j in jobs) == [1, 2, 3, 3, 3, 4, 4]
    out = engine.run(scan, config=batched)
    assert len(out["rows"]) == 20
    for row in range(20):
        a, a_attrs = ExperimentStore.of(config).read_row(row)
        b, b_attrs = ExperimentStore.of(batched).read_row(row)
        assert a_attrs["method"] == b_attrs["method"] and a_attrs["target_index"] == b_attrs["target_index"]
        if a_attrs["method"] == "exact":  # not batched: the very same LPs
            assert np.array_equal(a["vertices"], b["vertices"], equal_nan=True)
        else:  # each vertex its own path; only a batched product's rounding may differ
            assert np.allclose(a["vertices"], b["vertices"], atol=EQUIVALENT, equal_nan=True)
            assert b_attrs["solver"]["batch_targets"] in (2, 4)
        assert a_attrs["units"] == b_attrs["units"]
    before = snapshot(batched.results_root)
    assert engine.run(scan, config=batched)["reused_rows"] == 20
    assert snapshot(batched.results_root) == before


def test_a_second_run_of_one_experiment_is_refused_naming_the_first(tiny_config, tmp_path):
    """While one run holds the experiment, another fails at once with exit 2 (bad input:
    the experiment is busy), names the holder, and writes nothing; after, the lock is free."""
    from collide.errors import BusyError
    from flows.cli import main

    holder = f"pid {os.getpid()} on"
    with engine.lock(tiny_config):
        with pytest.raises(BusyError, match=holder):
            engine.run(mnist_module, config=tiny_config)
        args = ["run", "mnist", "--no-prefect", "--data-root", tiny_config.data_root,
                "--results-root", tiny_config.results_root, "--checkpoint-dir", tiny_config.checkpoint_dir,
                "--set", "allow_download=false"]
        assert main(args) == 2
        assert not Path(tiny_config.results_root).exists() and not Path(tiny_config.checkpoint_dir).exists()
    with engine.lock(tiny_config):  # released, by the block and by the refused runs alike
        pass
    other = subprocess.run([sys.executable, "-c", (
        "import sys; from collide.experiments import engine; from collide.experiments.mnist import MnistExperiment;"
        f"c = MnistExperiment(results_root={tiny_config.results_root!r});"
        "import contextlib\nwith engine.lock(c): print('held')")], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and "held" in other.stdout  # no stale lock left for another process


def test_tables_refuse_while_a_run_holds_the_experiment(scanned):
    from collide.errors import BusyError
    from collide.results.tables import regenerate

    config, _ = scanned
    with engine.lock(config), pytest.raises(BusyError, match="experiment 'scan'"):
        regenerate(config.results_root)
    assert "scan" in regenerate(config.results_root)["experiments"]
