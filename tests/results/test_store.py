import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from collide.errors import ConfigError, DataError
from collide.results import store
from collide.results.store import TABLE_COLUMNS, ExperimentStore, write_table


def _metrics(row: int) -> dict:
    m = {c: 0.5 for c in TABLE_COLUMNS}
    m.update(experiment="e", row=row, method="exact", model="m", layer="relu1", n_vertices=5)
    m["extra"] = np.float32(1.5)  # numpy scalars must reach JSON as plain floats
    return m


def test_row_roundtrip_and_merge(tmp_path):
    v = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    e = ExperimentStore(tmp_path, "e")
    e.write_row(0, {"vertices": v}, {"layer": "relu1", "n": np.int64(3)})
    e.write_row(0, {"sample_pred": np.arange(4)}, {"metrics": _metrics(0)}, keep_existing=True)
    arrays, attrs = e.read_row(0)
    assert np.array_equal(arrays["vertices"], v)
    assert np.array_equal(arrays["sample_pred"], np.arange(4))
    assert attrs["layer"] == "relu1" and attrs["n"] == 3
    assert attrs["metrics"]["extra"] == 1.5
    assert e.rows() == [0]
    assert zarr.open_group(tmp_path / "e.zarr", mode="r")["row-0/vertices"].shape == (5, 1, 4, 4)


def test_a_failed_write_leaves_the_old_row_and_no_scratch(tmp_path, monkeypatch):
    old = np.ones((2, 2), np.float32)
    ExperimentStore(tmp_path, "e").write_row(0, {"vertices": old}, {"version": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zarr.Group, "create_array", boom)
    with pytest.raises(OSError, match="disk full"):
        ExperimentStore(tmp_path, "e").write_row(0, {"vertices": old * 2}, {"version": 2})
    monkeypatch.undo()
    arrays, attrs = ExperimentStore(tmp_path, "e").read_row(0)
    assert np.array_equal(arrays["vertices"], old) and attrs["version"] == 1
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_table_from_store_orders_columns_and_rows(tmp_path):
    for row in (1, 0):
        ExperimentStore(tmp_path, "e").write_row(row, {"x": np.zeros(1)}, {"metrics": _metrics(row)})
    frame = ExperimentStore(tmp_path, "e").table()
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == [0, 1]
    path = write_table(frame, tmp_path / "e.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


def test_missing_rows_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="run the experiment first"):
        ExperimentStore(tmp_path, "nothing").table()
    with pytest.raises(DataError, match="no row 3"):
        ExperimentStore(tmp_path, "nothing").read_row(3)
    ExperimentStore(tmp_path, "e").write_row(0, {"x": np.zeros(1)}, {})
    with pytest.raises(DataError, match="never evaluated"):
        ExperimentStore(tmp_path, "e").table()


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), store.atomic_file(tmp_path / "t.parquet") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_a_row_record_is_the_storage_contract(tmp_path):
    """Every required field or a TypeError where the record is built; written, it is a row
    group with the contract's arrays and attrs."""
    import dataclasses

    import collide
    from collide.experiments.mnist import MnistExperiment
    from collide.results.records import RowRecord

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    poly = collide.find_polytope(model, "1", torch.rand(6), n_vertices=2, method="exact")
    config = MnistExperiment(name="rec")
    record = RowRecord.of(poly, config=config, row=3, init="target", loss="lp", model="m",
                          model_source={"kind": "x"}, dataset_avg_distance=1.5, extra_attrs={"seed": 0})
    required = [f.name for f in dataclasses.fields(RowRecord) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    fields = {f: getattr(record, f) for f in required}
    with pytest.raises(TypeError, match="layer"):
        RowRecord(**{k: v for k, v in fields.items() if k != "layer"})
    record.write(tmp_path)
    arrays, attrs = store.ExperimentStore(tmp_path, "rec").read_row(3)
    assert set(arrays) == {"vertices", "target", "init"} and arrays["vertices"].shape == (2, 6)
    assert attrs["criterion"] == poly.criterion.to_dict() and attrs["units"] == poly.units.tolist()
    assert attrs["config_digest"] == config.digest() and attrs["seed"] == 0 and attrs["method"] == "exact"


def test_leftovers_of_a_killed_writer_are_found_by_exact_name(tmp_path):
    """Half-built rows, set-aside rows and output temporaries of ``e`` go; those of an
    experiment called ``e-targets`` (a prefix match) and real outputs stay."""
    scratch = tmp_path / ".tmp"
    mine = [scratch / "e-row-0-abcd_123", scratch / "e-row-4-attrs-qmyzpkyl", scratch / f"e-old-{'a' * 32}",
            tmp_path / ".e-vertices-0123abcd.png",
            tmp_path / ".e-89abcdef.parquet", tmp_path / ".e.outputs-00000000.json"]
    theirs = [scratch / "e-targets-row-0-abcd_123", tmp_path / ".e-targets-0123abcd.parquet",
              tmp_path / "e.parquet", tmp_path / ".e-vertices-notatemp.png"]
    for path in mine + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if path.parent == scratch else path.write_bytes(b"")
    assert ExperimentStore(tmp_path, "e").leftovers() == sorted(mine)
    ExperimentStore(tmp_path, "e").remove_leftovers()
    assert not any(p.exists() for p in mine) and all(p.exists() for p in theirs)


def test_every_scratch_folder_a_writer_makes_is_a_leftover_of_its_experiment_only(tmp_path, monkeypatch):
    """The names write_row and update_attrs give their scratch are the names leftovers()
    looks for (they once were spelled apart, and a stage key's scratch outlived reruns)."""
    mine, theirs = store._Scratch(tmp_path, "e"), store._Scratch(tmp_path, "e-targets")
    made = [mine.make(0), mine.make(12, attrs=True), mine.trash()]
    made[-1].mkdir()
    other = [theirs.make(0), theirs.make(12, attrs=True)]
    assert mine.found() == sorted(made) and ExperimentStore(tmp_path, "e").leftovers() == sorted(made)
    assert theirs.found() == sorted(other)
    # Tidied away by another run between a look and the listing: nothing found, no error.
    shutil.rmtree(tmp_path / ".tmp")
    monkeypatch.setattr(store.Path, "is_dir", lambda self: True)  # as a look just before it would have said
    assert store._Scratch(tmp_path, "e").found() == []


def test_the_scratch_folder_goes_once_empty_and_never_with_another_writers_scratch(tmp_path, monkeypatch):
    """A new user's trial: an empty data/results/.tmp stayed after every run."""
    e, other = ExperimentStore(tmp_path, "e"), ExperimentStore(tmp_path, "f")
    e.write_row(0, {"a": np.zeros(2)}, {})
    theirs = store._Scratch(tmp_path, "f").make(3)  # another experiment's write, under way
    e.tidy_scratch()
    assert theirs.is_dir()
    shutil.rmtree(theirs)
    other.remove_leftovers()
    assert not (tmp_path / ".tmp").exists()
    # Tidied away between its two steps by another run, a writer makes the folder again.
    mkdtemp, calls = tempfile.mkdtemp, []

    def raced(**kw):
        calls.append(kw)
        if len(calls) == 1:
            (tmp_path / ".tmp").rmdir()
        return mkdtemp(**kw)

    monkeypatch.setattr(store.tempfile, "mkdtemp", raced)
    e.write_row(1, {"a": np.ones(2)}, {})
    assert len(calls) == 2 and e.read_row(1)[0]["a"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with store.atomic_file(tmp_path / "t.parquet") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o666 & ~umask


def test_rows_written_at_once_into_a_new_store_all_land(tmp_path):
    """Jobs of one run start together: each may be the first to create the store's group."""
    from concurrent.futures import ThreadPoolExecutor

    def write(row):
        return ExperimentStore(tmp_path, "e").write_row(row, {"x": np.full(3, row)}, {"metrics": _metrics(row)})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(16)))
    assert ExperimentStore(tmp_path, "e").rows() == list(range(16))
    assert [int(ExperimentStore(tmp_path, "e").read_row(r)[0]["x"][0]) for r in range(16)] == list(range(16))


def test_a_row_whose_attrs_were_edited_is_damaged(tmp_path):
    import json

    path = ExperimentStore(tmp_path, "e").write_row(0, {"x": np.zeros(2)}, {"metrics": _metrics(0)})
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["metrics"]["success_rate"] = 1.0
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="row 0 of e is damaged: its attrs .* changed"):
        ExperimentStore(tmp_path, "e").read_row(0)


@pytest.mark.parametrize("name", ["", "../e", "a/b", ".hidden", "e" * 101, "a b"])
def test_a_store_refuses_a_name_that_is_no_plain_file_name(tmp_path, name):
    """The name is checked once, where the store is made: no path of it can leave the root."""
    with pytest.raises(ConfigError, match="plain experiment name"):
        ExperimentStore(tmp_path, name)


@pytest.mark.parametrize("suffix", ["/../x.png", "x.png", "-a/b.png", "-..png"])
def test_a_store_refuses_a_declared_output_that_is_no_plain_suffix(tmp_path, suffix):
    with pytest.raises(ConfigError, match="plain suffixes"):
        ExperimentStore(tmp_path, "e", (suffix,))


def test_the_layout_and_the_run_records_outputs_are_those_earlier_versions_wrote(tmp_path):
    """Existing stores still read: the file names are byte for byte the old ones, and the run
    record names the same outputs (own and declared) that the free functions recorded."""
    import json

    from collide.experiments import baselines, spread

    store = ExperimentStore(tmp_path, "b", baselines.OUTPUTS)
    assert (store.path, store.table_path, store.figure_path, store.ledger_path, store.run_record_path) == (
        tmp_path / "b.zarr", tmp_path / "b.parquet", tmp_path / "b-vertices.png", tmp_path / "b.outputs.json",
        tmp_path / "b.run.json")
    config = baselines.BaselinesExperiment(results_root=str(tmp_path), name="b")
    record = json.loads(store.write_run_record(kind="baselines", rows=3, config=config).read_text())
    assert record["outputs"] == ["b-baselines.png", "b-vertices.png", "b.outputs.json", "b.parquet", "b.run.json"]
    assert set(record) == {"kind", "experiment", "name", "rows", "config_digest", "config", "outputs"}
    # A store that knows no module (`collide tables`) finds the same outputs from the record.
    assert ExperimentStore(tmp_path, "b").outputs() == store.outputs()
    assert [p.name for p in ExperimentStore(tmp_path, "s", spread.OUTPUTS).outputs()][4:] == [
        "s-summary.parquet", "s-summary.png", "s-paper.parquet"]


def test_a_stage_key_rewrites_the_attrs_only(tmp_path):
    e = ExperimentStore(tmp_path, "e")
    path = e.write_row(0, {"vertices": np.arange(12.0).reshape(3, 4), "y": np.ones(5)}, {"metrics": _metrics(0)})

    def array_files():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.rglob("*")
                if p.is_file() and p != path / "zarr.json"}

    before = array_files()
    e.update_attrs(0, {"keys": {"solve": "abc"}})
    assert array_files() == before  # not one array file written again
    assert e.row_damage(0) is None  # the manifest still vouches for the row
    arrays, attrs = e.read_row(0)
    assert attrs["keys"] == {"solve": "abc"} and attrs["metrics"] == _metrics(0)
    assert np.array_equal(arrays["vertices"], np.arange(12.0).reshape(3, 4))
    assert not list((tmp_path / ".tmp").iterdir())  # no scratch left


def test_carried_arrays_are_linked_not_written_again(tmp_path):
    e = ExperimentStore(tmp_path, "e")
    path = e.write_row(0, {"vertices": np.arange(6.0), "old": np.zeros(3)}, {"metrics": _metrics(0)})
    chunk = next(p for p in (path / "vertices").rglob("*") if p.is_file() and p.name != "zarr.json")
    before = chunk.stat().st_ino
    e.write_row(0, {"sample_pred": np.ones(4)}, {"extra": 1}, keep_existing=True, drop=("old",))
    after = next(p for p in (path / "vertices").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert after.stat().st_ino == before  # the same file, not a re-encoded copy
    arrays, attrs = e.read_row(0)  # the manifest vouches for carried and new files alike
    assert sorted(arrays) == ["sample_pred", "vertices"] and attrs["extra"] == 1
    assert np.array_equal(arrays["vertices"], np.arange(6.0)) and e.row_damage(0) is None
