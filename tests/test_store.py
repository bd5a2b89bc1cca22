import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from collide.errors import DataError
from collide.results import store
from collide.results.store import TABLE_COLUMNS, list_rows, read_row, table_from_store, write_row, write_table


def _metrics(row: int) -> dict:
    m = {c: 0.5 for c in TABLE_COLUMNS}
    m.update(experiment="e", row=row, method="exact", model="m", layer="relu1", n_vertices=5)
    m["extra"] = np.float32(1.5)  # numpy scalars must reach JSON as plain floats
    return m


def test_row_roundtrip_and_merge(tmp_path):
    v = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    write_row(tmp_path, "e", 0, {"vertices": v}, {"layer": "relu1", "n": np.int64(3)})
    write_row(tmp_path, "e", 0, {"sample_pred": np.arange(4)}, {"metrics": _metrics(0)}, keep_existing=True)
    arrays, attrs = read_row(tmp_path, "e", 0)
    assert np.array_equal(arrays["vertices"], v)
    assert np.array_equal(arrays["sample_pred"], np.arange(4))
    assert attrs["layer"] == "relu1" and attrs["n"] == 3
    assert attrs["metrics"]["extra"] == 1.5
    assert list_rows(tmp_path, "e") == [0]
    assert zarr.open_group(tmp_path / "e.zarr", mode="r")["row-0/vertices"].shape == (5, 1, 4, 4)


def test_a_failed_write_leaves_the_old_row_and_no_scratch(tmp_path, monkeypatch):
    old = np.ones((2, 2), np.float32)
    write_row(tmp_path, "e", 0, {"vertices": old}, {"version": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zarr.Group, "create_array", boom)
    with pytest.raises(OSError, match="disk full"):
        write_row(tmp_path, "e", 0, {"vertices": old * 2}, {"version": 2})
    monkeypatch.undo()
    arrays, attrs = read_row(tmp_path, "e", 0)
    assert np.array_equal(arrays["vertices"], old) and attrs["version"] == 1
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_table_from_store_orders_columns_and_rows(tmp_path):
    for row in (1, 0):
        write_row(tmp_path, "e", row, {"x": np.zeros(1)}, {"metrics": _metrics(row)})
    frame = table_from_store(tmp_path, "e")
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == [0, 1]
    path = write_table(frame, tmp_path / "e.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


def test_missing_rows_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="run the experiment first"):
        table_from_store(tmp_path, "nothing")
    with pytest.raises(DataError, match="no row 3"):
        read_row(tmp_path, "nothing", 3)
    write_row(tmp_path, "e", 0, {"x": np.zeros(1)}, {})
    with pytest.raises(DataError, match="never evaluated"):
        table_from_store(tmp_path, "e")


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
    arrays, attrs = store.read_row(tmp_path, "rec", 3)
    assert set(arrays) == {"vertices", "target", "init"} and arrays["vertices"].shape == (2, 6)
    assert attrs["criterion"] == poly.criterion.to_dict() and attrs["units"] == poly.units.tolist()
    assert attrs["config_digest"] == config.digest() and attrs["seed"] == 0 and attrs["method"] == "exact"
