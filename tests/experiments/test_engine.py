"""The one engine, for every experiment: a finished run reruns as a no-op, a killed run
resumes to what an uninterrupted one writes, and the scan's summary is its table's."""

import copy
import dataclasses
import json
import logging
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
from collide.errors import ConfigError, DataError
from collide.experiments import engine, imagenet, scan
from collide.experiments import mnist as mnist_module
from collide.experiments.imagenet import ImagenetExperiment
from collide.experiments.scan import ScanExperiment, class_summary
from collide.experiments.scanned import read_scans
from collide.models.zoo import load_checkpoint
from collide.results.report import ranking_markdown
from collide.results.store import ExperimentStore
from collide.results.verify import verify
from tests.support import LIGHT_GEOMETRY, PROJECT, snapshot
from tests.tolerances import EQUIVALENT, LP_OBJECTIVE, RECHECK

pytestmark = pytest.mark.slow
TIMING = ["solver_seconds", "region_seconds"]
# The scan's second stage is read for its widths, never for the samples of its sets: few draws.
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
    # At VGG-16's last convolutional ReLU, not fc6: resuming does not depend on the layer,
    # and fc6's 102 M weights took a third of each run (48 s against 31 s, 2026-12-07).
    # fc6 runs end to end in test_vision_pipelines.py and test_flows.py.
    return ImagenetExperiment(
        image_root=str(photos), image_size=32, weights="random", device="cpu", results_root=str(root),
        layer="net.features.29",
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
    proc.stderr.close()
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
    """The first test image of every class, screened 4 to a job: rows of 4, 4 and 2."""
    root = tmp_path_factory.mktemp("scan")
    config = ScanExperiment(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "ck"), results_root=str(root / "res"),
        device="cpu", allow_download=False, train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=200, n_dataset_pairs=100), targets_per_class=1,
        gradient=GradientConfig(max_steps=400), targets_per_batch=4,
    )
    return config, engine.run(scan, config=config)


def _firsts(labels: torch.Tensor) -> list[int]:
    return sorted(int(torch.nonzero(labels == c).flatten()[0]) for c in range(10))  # right or wrong


def test_each_job_screens_its_examples_and_keeps_its_most_blind_polytope(scanned, tiny_mnist):
    config, out = scanned
    table, ranked = pd.read_parquet(out["table"]), pd.read_parquet(out["ranking"])
    firsts = _firsts(load_mnist(str(tiny_mnist), "test").labels)
    assert len(table) == 3 and set(table["method"]) == {"gradient"} and config.rows == (RowSpec("gradient", "target"),)
    assert sorted(ranked["index"]) == firsts
    for k, row in enumerate(table.sort_values("row").itertuples()):
        chunk = ranked[ranked["row"] == row.row]
        assert sorted(chunk["index"]) == firsts[4 * k:4 * k + 4]
        # The row's polytope is its chunk's most blind example's, by the radius.
        assert row.target_index == chunk.sort_values("radius", ascending=False)["index"].iloc[0]
        assert row.valid_vertices >= 2 and 0 <= row.success_rate <= 1


def test_the_ranking_holds_each_examples_prediction_and_sizes_most_blind_first(scanned, tiny_mnist):
    config, out = scanned
    ranked = pd.read_parquet(out["ranking"])
    test = load_mnist(str(tiny_mnist), "test")
    assert Path(out["ranking"]).name == "scan-ranking.parquet" and Path(out["gallery"]).is_file()
    assert len(ranked) == 10 and list(ranked["rank"]) == list(range(1, 11)) and set(ranked["rank_by"]) == {"radius"}
    assert ranked["size"].is_monotonic_decreasing and (ranked["size"] == ranked["radius"]).all()
    model, _ = load_checkpoint(ExperimentStore.of(config).read_attrs(0)["checkpoint"])
    where = torch.tensor(ranked["index"].tolist())
    # Oracle: the images through the model in float64.
    with torch.no_grad():
        prob = torch.softmax(copy.deepcopy(model).double()(test.images[where].double()), -1)
    assert list(ranked["label"]) == test.labels[where].tolist()
    assert list(ranked["prediction"]) == prob.argmax(1).tolist()
    assert np.allclose(ranked["confidence"], prob.max(1).values.numpy(), atol=1e-5)
    assert list(ranked["correct"]) == (prob.argmax(1) == test.labels[where]).tolist()
    for r in ranked.head(3).itertuples():  # the sizes are the set's, measured alone
        size = collision_size(model, config.layer, test.images[r.index], config=config.geometry)
        assert abs(r.radius - size.radius) <= LP_OBJECTIVE * (1 + size.radius) and r.dim == size.dim
    assert (ranked["valid_vertices"] >= 2).all() and ranked["spread"].gt(0).all() and (ranked["reason"] == "").all()
    by_spread = scan.ranking(read_scans(ExperimentStore.of(config)), rank_by="spread")
    assert by_spread["spread"].is_monotonic_decreasing and set(by_spread["rank_by"]) == {"spread"}


def test_status_names_the_scans_own_files(scanned, capsys):
    from flows.cli import main

    config, out = scanned
    assert main(["status", config.name, "--results-root", config.results_root]) == 0
    said = capsys.readouterr().out
    files = said.split("files under ")[1].split(": ", 1)[1].strip().split(", ")
    # Oracle: what the run says it wrote, and nothing else (no ledger, no run record).
    written = {Path(out[k]).name for k in ("table", "ranking", "gallery")}
    assert written <= set(files) and all(Path(config.results_root, f).is_file() for f in files)
    assert not [f for f in files if f.endswith((".outputs.json", ".run.json"))]


def test_the_referee_checks_every_examples_ball_and_catches_a_doctored_radius(scanned, capsys):
    from flows.cli import main

    config, _ = scanned
    store = ExperimentStore.of(config)
    checked = verify(store)
    assert [p for r in checked for p in r["problems"]] == []
    assert sum(r["checked_scan_balls"] for r in checked) == 10
    # every example's set is full-dimensional: its ball certifies that
    assert sum(r["certified_scan_dims"] for r in checked) == 10
    # The command line says so too (it printed the vertices alone: a new user's trial).
    assert main(["verify", config.name, "--results-root", config.results_root]) == 0
    said = capsys.readouterr().out
    assert "and the scan's" in said and "examples' balls" in said, said
    arrays, attrs = store.read_row(1)
    k = int(np.argmax(arrays["scan_radius"]))
    doctored = {**arrays, "scan_radius": arrays["scan_radius"] * np.where(np.arange(len(arrays["scan_radius"])) == k,
                                                                         1.5, 1.0)}
    ExperimentStore(config.results_root, "doctored").write_row(1, doctored, attrs)
    (report,) = verify(ExperimentStore(config.results_root, "doctored"))
    example = int(arrays["scan_example"][k])
    assert [p for p in report["problems"] if "collision set" in p] == [p for p in report["problems"] if p.startswith(
        f"example {example}: the stored inscribed ball (radius")] != []


def test_the_referee_recomputes_every_examples_vertices_and_spread_and_catches_doctored_ones(scanned):
    config, _ = scanned
    store = ExperimentStore.of(config)
    checked = verify(store)
    assert sum(r["checked_scan_vertices"] for r in checked) == 10
    arrays, attrs = store.read_row(1)
    # Oracle for what the store claims: the valid vertices counted and their mean pairwise
    # distance, in plain numpy from the stored vertices.
    for k in range(len(arrays["scan_example"])):
        good = arrays["scan_vertices"][k][arrays["scan_vertex_valid"][k]].reshape(-1, 784).astype(np.float64)
        assert len(good) == arrays["scan_valid_vertices"][k]
        if len(good) >= 2:
            d = np.sqrt(((good[:, None] - good[None]) ** 2).sum(-1))
            assert abs(d[np.triu_indices(len(good), 1)].mean() - arrays["scan_spread"][k]) <= RECHECK
    k = int(np.nanargmax(arrays["scan_spread"]))
    example = int(arrays["scan_example"][k])
    spread = arrays["scan_spread"].copy()
    spread[k] *= 1.01
    vertices = arrays["scan_vertices"].copy()
    j = int(np.flatnonzero(arrays["scan_vertex_valid"][k])[0])
    vertices[k, j] = arrays["scan_image"][k] + 0.5  # a "valid" vertex that does not collide
    for name, doctored, expected in (("spread", {**arrays, "scan_spread": spread}, "scan_spread"),
                                     ("vertex", {**arrays, "scan_vertices": vertices}, "do not collide")):
        ExperimentStore(config.results_root, f"doctored-{name}").write_row(1, doctored, attrs)
        (report,) = verify(ExperimentStore(config.results_root, f"doctored-{name}"))
        found = [p for p in report["problems"] if p.startswith("example ")]  # not the missing table file's
        assert found and all(p.startswith(f"example {example}: ") for p in found)
        assert any(expected in p for p in found)  # a moved vertex moves the spread too


def test_the_second_stage_certifies_the_most_and_least_blind_and_a_rerun_keeps_it(scanned, tiny_mnist, caplog):
    config, out = scanned
    ranked = pd.read_parquet(out["ranking"])
    staged = dataclasses.replace(config, certify=1, certify_geometry=dataclasses.replace(
        SCAN_GEOMETRY, n_directions=3, max_directions=3))
    assert staged.digest() == config.digest()  # no row is solved again for it
    with caplog.at_level(logging.INFO, logger="collide.experiments.scan"):
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
    # Minutes of it show in the log (a new user's trial: it ran silent), and so does a set that did not mix.
    said = [rec.getMessage() for rec in caplog.records if rec.name == "collide.experiments.scan"]
    assert [m.split(",")[0] for m in said if m.startswith("certifying")] == [
        f"certifying example {i} (rank {k})" for i, k in zip(certified["index"], certified["rank"], strict=True)]
    withheld = certified[~certified["converged"].astype(bool)]
    warned = [m for m in said if "certified examples have no sample statistics" in m]
    assert len(warned) == bool(len(withheld))
    assert all(f"example {i}: {why}" in warned[0] for i, why in zip(withheld["index"], withheld["reason"], strict=True))
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
    listed = dataclasses.replace(config, split="train", indices=(5, 0, 3), exact_sizes="never",
                                 results_root=str(tmp_path / "res"))
    out = engine.run(scan, config=listed)
    ranked = pd.read_parquet(out["ranking"])
    train = load_mnist(str(tiny_mnist), "train")
    assert sorted(ranked["index"]) == [0, 3, 5] and set(ranked["rank_by"]) == {"spread"}
    assert list(ranked.sort_values("index")["label"]) == train.labels[[0, 3, 5]].tolist()
    assert ranked["radius"].isna().all() and ranked["reason"].str.contains("exact=never").all()
    with pytest.raises(DataError, match="past the train split's"):
        engine.run(scan, config=dataclasses.replace(listed, indices=(10**6,)))


def test_exact_sizes_always_where_the_set_cannot_be_measured_is_refused_before_any_job(scanned, tmp_path):
    config, _ = scanned
    tight = dataclasses.replace(config, exact_sizes="always", results_root=str(tmp_path / "res"),
                                geometry=dataclasses.replace(config.geometry, max_entries=10))
    with pytest.raises(ConfigError, match="exact_sizes=always, but .*max_entries.*set exact_sizes=auto"):
        engine.run(scan, config=tight)
    assert not ExperimentStore.of(tight).path.exists()  # refused in prepare: no job wrote a row


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
    own = dataclasses.replace(config, image_root=str(folder), targets_per_class=0, exact_sizes="never",
                              results_root=str(tmp_path / "res"))
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
                              exact_sizes="never", results_root=str(tmp_path / "res"))
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


def test_the_scan_summary_is_its_rankings_per_class_aggregate(scanned):
    config, out = scanned
    ranked = pd.read_parquet(out["ranking"])
    summary = pd.read_parquet(out["summary"])
    assert Path(out["summary_figure"]).is_file() and Path(out["summary"]).name == "scan-summary.parquet"
    pd.testing.assert_frame_equal(summary, class_summary(ranked))
    assert list(summary["class"]) == list(range(10))
    for row in summary.itertuples():  # each class's one example, by hand
        [ex] = ranked[ranked["label"] == row[1]].itertuples()
        assert (row.examples, row.correct_share, row.polytopes, row.exact_sets) == (1, float(ex.correct), 1, 1)
        assert (row.radius_mean, row.radius_min, row.dim_mean) == (ex.radius, ex.radius, ex.dim)
        assert row.spread_mean == ex.spread


def test_a_finished_scan_reruns_as_a_no_op(scanned):
    config, _ = scanned
    before = snapshot(config.results_root)
    again = engine.run(scan, config=config)
    assert again["summary_reused"] and again["reused"] and again["reused_rows"] == 3
    assert snapshot(config.results_root) == before


def test_a_scan_in_other_jobs_ranks_the_same_sizes(scanned, tmp_path):
    config, out = scanned
    regrouped = dataclasses.replace(config, targets_per_batch=10, results_root=str(tmp_path / "res"))
    again = engine.run(scan, config=regrouped)
    assert len(again["rows"]) == 1
    a, b = (pd.read_parquet(o["ranking"]).set_index("index").sort_index() for o in (out, again))
    # The exact sizes are each example's own LP; the spread is a batched gradient run's,
    # where only a batched product's rounding may differ.
    assert np.allclose(a["radius"], b["radius"], rtol=LP_OBJECTIVE, atol=0) and (a["dim"] == b["dim"]).all()
    assert np.allclose(a["spread"], b["spread"], atol=EQUIVALENT * 28)  # 28 = √784: per pixel
    assert (a["valid_vertices"] == b["valid_vertices"]).all()


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
