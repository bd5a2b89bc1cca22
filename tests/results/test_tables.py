"""Tables, figures and the report rebuilt from the Zarr stores alone, and `collide status`."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collide.errors import DataError
from collide.experiments import engine, mnist
from collide.experiments.mnist import MnistExperiment
from collide.results import health, tables
from collide.results.resume import mark_done
from collide.results.store import ExperimentStore
from flows.cli import main


@pytest.fixture(scope="module")
def finished(two_row_run):
    """The session's gradient-and-exact run; tests here copy it before they change anything."""
    return two_row_run


def _stores_only(config: MnistExperiment, dest: Path, *names: str) -> Path:
    """A results root holding nothing but copies of the run's Zarr store, under ``names``."""
    for name in names or (config.name,):
        shutil.copytree(Path(config.results_root) / f"{config.name}.zarr", dest / f"{name}.zarr")
    return dest


def test_regenerated_tables_and_figures_equal_what_the_run_wrote(finished, tmp_path, capsys, monkeypatch):
    config, out = finished
    root = _stores_only(config, tmp_path / "res", "mnist", "mnist-copy")
    assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 0
    run_table = pd.read_parquet(out["table"])
    for name in ("mnist", "mnist-copy"):
        pd.testing.assert_frame_equal(pd.read_parquet(ExperimentStore(root, name).table_path), run_table)
    assert (root / "mnist-vertices.png").read_bytes() == Path(out["figure"]).read_bytes()
    assert (root / "mnist-copy-vertices.png").stat().st_size > 10_000  # its title names the copy
    report = (root / "report.html").read_text()
    assert report.count("<img") == 2 and report.count("data:image/png;base64,") == 2
    assert report.count("<h2>") == 3 and "<h2>Columns</h2>" in report and "mnist-copy" in report
    assert "report:" in capsys.readouterr().out
    assert ExperimentStore(root, "mnist").ledger()["table"] == "mnist.parquet"  # by name: however root was given
    read, rows = [], ExperimentStore.rows
    monkeypatch.setattr(ExperimentStore, "rows", lambda self: read.append(self.name) or rows(self))
    assert main(["status", "mnist-copy", "--results-root", str(root)]) == 0  # one store of the two, by name
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")] == [
        "mnist-copy"]
    assert set(read) == {"mnist-copy"}  # the other store is not even read


def test_tables_without_any_store_is_bad_input(tmp_path, capsys):
    assert main(["tables", "--no-prefect", "--results-root", str(tmp_path / "none")]) == 2
    assert "none does not exist: pass --results-root" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    assert main(["tables", "--no-prefect", "--results-root", str(tmp_path / "empty")]) == 2
    assert "run an experiment first" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_store_cut_short_is_flagged_incomplete(finished, tmp_path, capsys):
    """Row 1 solved but never evaluated (a kill): the table holds row 0 and says, in the
    ledger, the figure, the report and `collide status`, that 1 of 2 planned rows is in."""
    config, _ = finished
    root = _stores_only(config, tmp_path / "res")
    arrays, attrs = ExperimentStore(root, "mnist").read_row(1)
    ExperimentStore(root, "mnist").write_row(1, arrays, {k: v for k, v in attrs.items() if k != "metrics"})
    ExperimentStore(root, "mnist").write_run_record(kind="mnist", rows=2, config=config)
    out = tables.regenerate(root)["experiments"]["mnist"]
    assert out["rows"] == 1 and out["expected_rows"] == 2
    assert "1/2 planned rows evaluated: INCOMPLETE" in out["incomplete"]
    assert f"collide run mnist --config {root / 'mnist.run.json'}" in out["incomplete"]
    assert "INCOMPLETE" in (root / "report.html").read_text()
    [s] = health.status(root)
    assert s["incomplete"] and not s["damaged_rows"]
    assert main(["status", "--results-root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "1/2 rows evaluated" in printed and "NOT to be read as complete" in printed and "up to date" not in printed


def test_a_deleted_chunk_is_damage_never_zeros_and_a_rerun_repairs_it(finished, tmp_path, capsys):
    config, out = finished
    root = tmp_path / "res"
    shutil.copytree(config.results_root, root)
    chunk = next((root / "mnist.zarr" / "row-0" / "vertices" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    before = ExperimentStore(config.results_root, "mnist").read_row(0)[0]["vertices"]
    chunk.unlink()
    with pytest.raises(DataError, match=r"row 0 of mnist is damaged: vertices/c/\S+ is missing; rerun `collide run"):
        ExperimentStore(root, "mnist").read_row(0)
    [s] = health.status(root)
    assert list(s["damaged_rows"]) == ["0"] and not s["table_fresh"]
    assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 2
    assert "row 0 of mnist is damaged" in capsys.readouterr().err
    killed = [root / ".tmp" / "mnist-row-0-abcdefgh", root / ".mnist-vertices-0123abcd.png"]  # a kill's leftovers
    killed[0].mkdir(parents=True)
    killed[1].write_bytes(b"")
    rerun = engine.run(mnist, config=dataclasses.replace(config, results_root=str(root)))
    assert not any(p.exists() for p in killed)
    assert [r["repaired"] is not None for r in rerun["rows"]] == [True, False]
    assert not rerun["rows"][1]["solved"] and not rerun["rows"][1]["evaluated"]
    assert np.array_equal(ExperimentStore(root, "mnist").read_row(0)[0]["vertices"], before)  # recomputed bit for bit
    assert health.status(root)[0]["table_fresh"]


def test_a_truncated_chunk_is_named(finished, tmp_path):
    config, _ = finished
    root = _stores_only(config, tmp_path / "res")
    chunk = max((p for p in (root / "mnist.zarr" / "row-1").rglob("*") if p.is_file() and "/c/" in p.as_posix()),
                key=lambda p: p.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(DataError, match="row 1 of mnist is damaged: .* bytes, .* were written"):
        tables.regenerate(root)


def test_status_says_which_tables_are_fresh(finished, tmp_path, capsys):
    config, _ = finished
    root = tmp_path / "res"
    shutil.copytree(config.results_root, root)
    [fresh] = health.status(root)
    assert fresh["rows"] == fresh["evaluated"] == 2 and fresh["table_fresh"]
    assert fresh["configs"] == [config.digest()]
    assert MnistExperiment.from_dict(fresh["config"][config.digest()]) == config
    mark_done(ExperimentStore(root, "mnist"), 0, "evaluate", "changed")  # a row changed after the table was written
    assert main(["status", "--results-root", str(root), "--json"]) == 0
    [stale] = json.loads(capsys.readouterr().out)
    assert not stale["table_fresh"]
    assert main(["status", "--results-root", str(root)]) == 0
    assert "STALE" in capsys.readouterr().out
    assert tables.write_outputs(ExperimentStore(root, "mnist"))["reused"] is False
    assert health.status(root)[0]["table_fresh"]
    (tmp_path / "empty").mkdir()
    assert main(["status", "--results-root", str(tmp_path / "empty")]) == 0
    assert "no results" in capsys.readouterr().out
    assert main(["status", "--results-root", str(tmp_path / "none")]) == 2  # a mistyped folder: bad input
    assert "none does not exist" in capsys.readouterr().err


def test_table_records_are_plain_json():
    frame = pd.DataFrame({"a": np.array([1, 2], dtype=np.int64), "b": [np.float32(0.5), np.nan],
                          "c": [True, False]})
    recs = tables.records(frame)
    assert json.loads(json.dumps(recs)) == [{"a": 1, "b": 0.5, "c": True}, {"a": 2, "b": None, "c": False}]
