"""A results store is data, never code: what collide reads back from a store
never chooses code to import, locks never follow links, a stray folder stops nothing, and
tables that disagree with their store are caught both ways."""

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from collide import _io
from collide.errors import BusyError, ConfigError, ModelRefused
from collide.experiments import engine, mnist
from collide.results import health
from collide.results.evaluation import evaluate_row
from collide.results.resume import mark_done
from collide.results.store import DECLARED, ExperimentStore
from flows.cli import main
from tests.support import small_mnist_config

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def factory():
    Path({marker!r}).write_text("called")
    from collide.models.zoo import mlp
    return mlp()
"""


@pytest.fixture(scope="module")
def finished(two_row_run):
    """The session's gradient-and-exact run; tests here copy it before they change anything."""
    return two_row_run


def _copy(config, dest: Path) -> Path:
    shutil.copytree(config.results_root, dest)
    return dest


def _plant(folder: Path, module: str) -> Path:
    marker = folder / f"{module}.marker"
    (folder / f"{module}.py").write_text(EVIL.format(marker=str(marker)))
    return marker


@pytest.fixture
def forget_modules():
    yield
    for name in ("evilmod", "evilcwd"):
        sys.modules.pop(name, None)


def test_verify_never_imports_a_model_the_store_names(finished, tmp_path, monkeypatch, capsys, forget_modules):
    """A row rewritten to name `evilmod:factory` (its manifest recomputed, as anyone can):
    `verify` refuses with exit 2 naming --model, and the module, importable from the
    working folder and sys.path alike, is never imported. Named on the command line, it is.
    Verifying every store, it is named as not verified and the other stores are still
    verified (a new user's trial: the first such store stopped them all)."""
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    shutil.copytree(root / "mnist.zarr", root / "zz-honest.zarr")  # verified after the refused one
    assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 0  # the copy's own table
    marker = _plant(tmp_path, "evilmod")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: only collide's refusal stands in the way
    evil = {"kind": "external", "model": "evilmod:factory", "weights": "random", "random": True, "sha256": "",
            "seed": 0, "mean": [], "std": [], "input_size": 28}
    ExperimentStore(root, "mnist").write_row(0, {}, {"model_source": evil}, keep_existing=True)  # a valid manifest
    assert main(["verify", "mnist", "--results-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--model evilmod:factory" in err and "never imports code named in a store" in err
    assert main(["verify", "--results-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "mnist: not verified: the store names the external model 'evilmod:factory'" in out
    assert "zz-honest row 0: " in out and "zz-honest row 1: " in out and "MISMATCH" not in out
    assert out.rstrip().endswith("mnist was not verified (a model of your own code, named in the store): verify "
                                 "each with --model, as said above")
    assert not marker.exists() and "evilmod" not in sys.modules
    # Re-evaluating the row (a rerun whose evaluation key was lost) refuses it the same way.
    with pytest.raises(ModelRefused, match="--model evilmod:factory"):
        evaluate_row(ExperimentStore(root, "mnist"), 0, sample=config.sample)
    assert not marker.exists()
    # `collide tables` reads metrics only: no model, no import.
    assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 0
    assert not marker.exists()
    # The user may name it: then, and only then, it is imported (the module was importable all along).
    main(["verify", "--results-root", str(root), "--model", "evilmod:factory"])
    assert marker.read_text() == "called"


def test_a_users_module_is_not_found_in_the_working_folder_implicitly(tmp_path, monkeypatch, forget_modules):
    from collide.models.external import build, resolve_model

    marker = _plant(tmp_path, "evilcwd")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(tmp_path))])
    with pytest.raises(ConfigError, match="PYTHONPATH"):
        build(resolve_model("evilcwd:factory", "random", input_size=28))
    assert not marker.exists() and str(tmp_path) not in sys.path and "" not in sys.path


def test_the_lock_never_follows_a_link_and_lives_in_a_folder_of_the_users_own(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    folder = _io.lock_dir()
    info = folder.lstat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700
    victim = tmp_path / "victim.txt"
    victim.write_text("precious bytes")
    lock = _io.lock_path(root, "mnist")
    lock.symlink_to(victim)
    try:
        with pytest.raises(BusyError, match="symbolic link"):
            with engine.lock(dataclasses.replace(config, results_root=str(root))):
                pass
        assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 2
        assert "symbolic link" in capsys.readouterr().err
        assert victim.read_text() == "precious bytes"
    finally:
        lock.unlink()
    # Taken and released: the lock file goes with the run; stale ones of dead runs are swept.
    stale = folder / "0123456789abcdef-dead.lock"
    stale.write_text("pid 1 on nowhere since long ago\n")
    old = time.time() - 2 * _io.STALE_LOCK_SECONDS
    os.utime(stale, (old, old))
    with engine.lock(dataclasses.replace(config, results_root=str(root))):
        assert lock.is_file() and not lock.is_symlink()
        assert _io.lock_holder(root, "mnist").startswith(f"pid {os.getpid()} on")
    assert not lock.exists() and not stale.exists()
    assert _io.lock_holder(root, "mnist") is None


def test_a_lock_folder_open_to_others_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "collide-locks").mkdir(mode=0o777)
    os.chmod(tmp_path / "collide-locks", 0o777)
    with pytest.raises(BusyError, match="not a folder of this user's alone"):
        _io.lock_dir()
    os.chmod(tmp_path / "collide-locks", 0o700)
    assert _io.lock_dir() == tmp_path / "collide-locks"


def test_a_stray_folder_is_named_and_skipped_and_stops_nothing(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    shutil.copytree(root / "mnist.zarr", root / "other.zarr")
    shutil.copy(root / "mnist.parquet", root / "other.parquet")
    for stray in ("row-abc", "row-5.bak", "row-01"):
        shutil.copytree(root / "mnist.zarr" / "row-0", root / "mnist.zarr" / stray)
    assert ExperimentStore(root, "mnist").rows() == [0, 1] and ExperimentStore(root, "other").rows() == [0, 1]
    assert main(["status", "--results-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "mnist: 2/2 rows evaluated" in out and "other: 2/2 rows evaluated" in out
    assert str(root / "mnist.zarr" / "row-abc") in out and "not a row" in out and "row-5.bak" in out
    assert main(["verify", "--results-root", str(root)]) == 0  # the strays are named, never taken for rows
    out = capsys.readouterr().out
    assert "mnist entries: skipped: " in out and "row-abc" in out and "invalid literal" not in out
    assert out.count(": ok") == 4  # both rows of both experiments verified
    assert main(["tables", "--no-prefect", "--results-root", str(root)]) == 0
    assert pd.read_parquet(ExperimentStore(root, "other").table_path)["row"].tolist() == [0, 1]
    run = dataclasses.replace(config, results_root=str(root))
    assert engine.run(mnist, config=run)["reused_rows"] == 2
    assert (root / "mnist.zarr" / "row-abc").is_dir()  # not the run's to delete: named, left alone


def test_a_table_row_without_its_store_row_is_a_mismatch(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    shutil.rmtree(root / "mnist.zarr" / "row-1")
    assert main(["verify", "--results-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "mnist.parquet lists row 1, but mnist.zarr has no row-1" in out
    assert "every row agrees" not in out


def test_an_edited_table_is_stale_and_a_run_rewrites_it(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    honest = pd.read_parquet(ExperimentStore(root, "mnist").table_path)
    edited = honest.copy()
    edited.loc[0, "success_rate"] = 0.123
    edited.to_parquet(ExperimentStore(root, "mnist").table_path, index=False)
    assert health.status(root)[0]["table_fresh"] is False
    assert main(["status", "--results-root", str(root)]) == 0
    assert "STALE" in capsys.readouterr().out
    assert main(["run", "mnist", "--no-prefect", "--config", str(root / "mnist.run.json")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(ExperimentStore(root, "mnist").table_path), honest)
    assert health.status(root)[0]["table_fresh"] is True


def test_a_damaged_store_root_is_noticed_and_a_run_rewrites_it(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    (root / "mnist.zarr" / "zarr.json").write_text("")
    [report] = health.status(root)
    assert report["store_damage"] and not report["table_fresh"]
    assert any("store's own metadata is damaged" in w for w in report["warnings"])
    assert main(["verify", "--results-root", str(root)]) == 1
    assert "mnist store: MISMATCH" in capsys.readouterr().out
    engine.run(mnist, config=dataclasses.replace(config, results_root=str(root)))
    assert ExperimentStore(root, "mnist").damage() is None and health.status(root)[0]["table_fresh"]
    assert ExperimentStore(root, "mnist").read_attrs(0)["metrics"]["row"] == 0


def test_status_and_verify_say_a_run_is_in_progress(finished, tmp_path, capsys):
    config, _ = finished
    root = _copy(config, tmp_path / "res")
    run = dataclasses.replace(config, results_root=str(root))
    (root / "mnist.parquet").unlink()
    shutil.rmtree(root / "mnist.zarr" / "row-1")
    mark_done(ExperimentStore(root, "mnist"), 0, "evaluate", "changed")
    with engine.lock(run):
        assert main(["status", "--results-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert f"a run is in progress (pid {os.getpid()} on" in out and "cut short" not in out
        assert main(["verify", "--results-root", str(root)]) == 1
        out = capsys.readouterr().out
        assert f"a run is in progress (pid {os.getpid()} on" in out and "no table file" not in out
        # Not verified is not a disagreement: the summary says which (a new user's trial).
        assert "disagree with their table" not in out
        assert "no row disagrees with its table, but mnist was not verified (a run is writing it)" in out


def test_a_killed_runs_temporaries_are_found_from_the_declared_outputs(tmp_path):
    """`baselines` and `frontier` write figures of their own: a kill mid-write leaves
    `.<name>-baselines-xxxxxxxx.png`, found from what the experiment declares, not a list."""
    from collide.experiments import baselines, frontier
    from collide.experiments.registry import EXPERIMENTS

    for module in EXPERIMENTS.values():  # every file a summary writes is declared
        if hasattr(module, "summarize"):
            assert module.OUTPUTS, module.NAME
    for module, config_class in ((baselines, baselines.BaselinesExperiment), (frontier, frontier.FrontierExperiment)):
        root = tmp_path / module.NAME
        root.mkdir()
        config = config_class(results_root=str(root), name="b")
        store = engine.experiment_store(module, config=config)
        figure = store.output(module.OUTPUTS[0]).name
        killed = [root / f".{Path(figure).stem}-0123abcd.png", root / ".b-vertices-89abcdef.png"]
        others = [root / f".{Path(figure).stem}-nothex!.png", root / ".bb-vertices-0123abcd.png", root / "keep.png"]
        for path in killed + others:
            path.write_bytes(b"half a png")
        assert store.leftovers() == sorted(killed)
        with engine.lock(config, module):
            pass
        assert not any(p.exists() for p in killed) and all(p.exists() for p in others)
        # `collide tables` knows no experiment module: the run record names the outputs.
        store.write_run_record(kind=module.NAME, rows=1, config=config)
        killed[0].write_bytes(b"half a png")
        assert ExperimentStore(root, "b").leftovers() == [killed[0]]


def test_the_ledger_names_only_this_experiments_outputs_and_a_link_is_not_read(tmp_path):
    """What the ledger records of the declared outputs is data: only this experiment's own
    declared file names under its root are checked, a link is reported and removed (never
    followed), nothing else is removed, and an output the run did not write (the scan's
    certified table without ``certify``) is not asked for."""
    root = tmp_path / "res"
    root.mkdir()
    store = ExperimentStore(root, "b", ("-summary.parquet", "-summary.png", "-certified.parquet"))
    outside = tmp_path / "theirs.parquet"
    outside.write_bytes(b"-summary.parquet")
    store.output("-summary.parquet").symlink_to(outside)  # there before the run: read through, never kept
    store.output("-summary.png").write_bytes(b"-summary.png")
    store.remove_damaged_declared()
    assert not store.output("-summary.parquet").exists() and outside.read_bytes() == b"-summary.parquet"
    store.output("-summary.parquet").write_bytes(b"-summary.parquet")
    store.record_declared()
    assert set(store.ledger()[DECLARED]) == {"b-summary.parquet", "b-summary.png"}
    assert store.declared_damage() == {}
    store.output("-summary.png").unlink()
    store.output("-summary.png").symlink_to(outside)  # a link put in place of a recorded file
    with pytest.raises(OSError):
        _io.file_sha256(store.output("-summary.png"), follow=False)
    mine = root / "b-notes.txt"  # named like an output, but not one the experiment declares
    mine.write_text("a user's own")
    table = store.table_path  # the store's own output: the ledger's own sha256 fields judge it
    table.write_bytes(b"a table")
    ledger = store.ledger()
    others = {name: "0" * 64 for name in ("../theirs.parquet", "bb-summary.png", "b/../theirs.parquet",
                                          "b-notes.txt", table.name)}
    store.write_ledger({**ledger, DECLARED: {**ledger[DECLARED], **others}})
    assert store.declared_damage() == {"b-summary.png": "changed since it was written"}
    store.remove_damaged_declared()
    assert outside.read_bytes() == b"-summary.parquet" and not store.output("-summary.png").is_symlink()
    assert mine.read_text() == "a user's own" and table.read_bytes() == b"a table"
    assert store.declared_damage() == {"b-summary.png": "missing"}
    for bad in (b'["b-summary.png"]', b"\xff\xfe not text"):  # not a mapping, not text: nothing recorded
        store.ledger_path.write_bytes(bad)
        assert store.ledger() == {} and store.declared_damage() == {}
    store.ledger_path.write_text('{"declared_sha256": ["b-summary.png"]}')
    assert store.declared_damage() == {}


KILLED_MID_FIGURE = """
import os, signal, sys
from matplotlib.figure import Figure
from collide.experiments.registry import EXPERIMENTS
from collide.results import figures
from collide.results.store import ExperimentStore

module = EXPERIMENTS[sys.argv[2]]

def half_then_killed(self, path, **kwargs):
    with open(path, "wb") as fh:
        fh.write(b"\\x89PNG half")
    os.kill(os.getpid(), signal.SIGKILL)

Figure.savefig = half_then_killed
figures.save_figure(Figure(), ExperimentStore(sys.argv[1], "b").output(module.OUTPUTS[0]))
"""


@pytest.mark.parametrize("kind", ["baselines", "frontier"])
def test_a_run_killed_while_writing_its_own_figure_leaves_a_temporary_that_is_found_and_removed(tmp_path, kind):
    """A process killed (SIGKILL) inside the figure write of ``baselines`` or ``frontier``
    leaves ``.b-<kind>-xxxxxxxx.png``; the store reports it from the run record alone
    (what ``collide tables`` sees) and the next run's lock removes it, the figure's
    old file untouched."""
    import signal
    import subprocess

    from collide.experiments.registry import EXPERIMENTS

    module = EXPERIMENTS[kind]
    config = module.Config(results_root=str(tmp_path), name="b")
    store = engine.experiment_store(module, config=config)
    store.write_run_record(kind=kind, rows=1, config=config)
    figure = store.output(module.OUTPUTS[0])
    figure.write_bytes(b"the old figure")
    done = subprocess.run([sys.executable, "-c", KILLED_MID_FIGURE, str(tmp_path), kind], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    [temporary] = [p for p in tmp_path.iterdir() if p.name.startswith(f".b-{kind}-")]
    assert temporary.read_bytes().endswith(b"half") and figure.read_bytes() == b"the old figure"
    assert ExperimentStore(tmp_path, "b").leftovers() == [temporary]
    with engine.lock(config, module):
        assert not temporary.exists()
    assert figure.read_bytes() == b"the old figure"
    assert ExperimentStore(tmp_path, "b").leftovers() == []


def test_runs_sharing_a_patch_store_take_turns(tmp_path):
    """Two runs (other names) sharing one patch store and index: the second waits for the
    first to finish building, rather than removing the store under it as damaged."""
    import threading

    order = []
    held = threading.Event()

    def first():
        with _io.cache_lock(tmp_path / "p.zarr", what="the patch store"):
            held.set()
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    with _io.cache_lock(tmp_path / "p.zarr", what="the patch store"):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    import inspect

    from collide.experiments import patches
    assert "cache_lock(_store_path(config)" in inspect.getsource(patches.prepare)


def test_runs_sharing_a_checkpoint_folder_train_once(tiny_mnist, tmp_path):
    """Two runs (other experiments) that need the same checkpoint at once: one trains, the
    other waits and reuses it. Before, both trained and the second replaced the file that
    the first had solved its rows with (its evaluation then refused them: exit 2)."""
    import threading

    from collide.config import TrainConfig

    config = small_mnist_config(tiny_mnist, tmp_path, train=TrainConfig(epochs=1, min_accuracy=0.0))
    got = []
    threads = [threading.Thread(target=lambda: got.append(mnist.train_model(config=config))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(g["reused"] for g in got) == [False, True]
    assert got[0]["sha256"] == got[1]["sha256"]
