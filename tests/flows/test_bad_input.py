"""Bad input is exit 2, names the key or path, writes nothing and is never retried."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import flows.experiment
from collide.errors import ConfigError, DataError
from flows.cli import main

# flows.experiment imports Prefect, which binds its log handlers to the sys.stderr of that
# moment: imported here, at collection, not inside a test whose capsys stream is closed after
# it (every later flow's log would then write to a closed file and fail the flow).


def _run(tiny_mnist, tmp_path, *extra: str) -> list[str]:
    return ["run", "mnist", "--no-prefect", "--data-root", str(tiny_mnist), "--results-root",
            str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ck"), *extra]


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "results").exists() and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("name, said", [
    ("x" * 300, "300 characters"), ("a\x00b", "NUL"), (".", "'.'"), ("..", "'..'"), (".hidden", "'.hidden'"),
    ("a/b", "'a/b'"), ("", "''"),
])
def test_a_bad_name_is_refused_naming_the_key_and_nothing_is_written(tiny_mnist, tmp_path, capsys, name, said):
    assert main(_run(tiny_mnist, tmp_path, "--set", f"name={name}")) == 2
    err = capsys.readouterr().err
    assert "name:" in err and said in err and "the run failed" not in err
    assert _nothing_written(tmp_path)


def test_a_nul_in_a_path_names_the_key(tiny_mnist, tmp_path, capsys):
    args = ["run", "mnist", "--no-prefect", "--data-root", str(tiny_mnist), "--results-root",
            str(tmp_path / "results"), "--set", f"checkpoint_dir={tmp_path}/ck\x00x"]
    assert main(args) == 2
    assert "checkpoint_dir: expected no NUL" in capsys.readouterr().err
    assert _nothing_written(tmp_path)


def test_a_deeply_nested_config_is_bad_input(tiny_mnist, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 200_000 + "1" + "}" * 200_000)
    assert main(_run(tiny_mnist, tmp_path, "--config", str(deep))) == 2
    err = capsys.readouterr().err
    assert f"config file {deep} is nested too deeply" in err and "RecursionError" not in err
    assert main(_run(tiny_mnist, tmp_path, "--set", "gradient=" + "[" * 200_000)) in (2,)
    assert _nothing_written(tmp_path)


def test_a_results_root_that_is_a_file_or_cannot_be_made_is_named(tiny_mnist, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.write_text("not a folder")
    for root, said in ((plain, f"results_root: {plain} is a file"),
                       (plain / "below", f"results_root: {plain / 'below'} cannot be created: {plain} is a file")):
        code = main(["run", "mnist", "--no-prefect", "--data-root", str(tiny_mnist), "--results-root", str(root),
                     "--checkpoint-dir", str(tmp_path / "ck")])
        err = capsys.readouterr().err
        assert code == 2 and said in err and "OSError" not in err
    assert plain.read_text() == "not a folder" and not (tmp_path / "ck").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_root_is_named(tiny_mnist, tmp_path, capsys):
    root = tmp_path / "results"
    root.mkdir()
    root.chmod(0o555)
    try:
        assert main(_run(tiny_mnist, tmp_path)) == 2
        assert f"results_root: {root} is not writable" in capsys.readouterr().err
    finally:
        root.chmod(0o755)


def test_the_prefect_path_checks_the_results_root_before_any_server(tiny_mnist, tmp_path, capsys, monkeypatch):
    def no_flow(*args, **kwargs):
        raise AssertionError("the flow (and Prefect's server) must not start on bad input")

    monkeypatch.setattr(flows.experiment, "experiment_flow", no_flow)
    plain = tmp_path / "plain"
    plain.write_text("")
    assert main(["run", "mnist", "--data-root", str(tiny_mnist), "--results-root", str(plain)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_plain_run_refuses_a_dask_cluster_it_would_not_use(tiny_mnist, tmp_path, capsys):
    """--no-prefect runs every job in the calling process: a cluster asked for is refused,
    not silently ignored, and nothing is written."""
    for flag in (["--dask-address", "tcp://127.0.0.1:8786"], ["--workers", "2"]):
        code = main(["run", "mnist", "--no-prefect", *flag, "--data-root", str(tiny_mnist),
                     "--results-root", str(tmp_path / "res")])
        assert code == 2 and f"{flag[0]} fans the jobs out over Dask" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_permanent_failures_are_never_retried_and_transient_ones_are():
    pytest.importorskip("prefect")
    from prefect.states import Failed

    from tasks._common import transient

    never = [ConfigError("bad"), DataError("bad"), OSError(errno.EROFS, "Read-only file system"),
             OSError(errno.ENAMETOOLONG, "File name too long"), OSError(errno.ENOTDIR, "Not a directory"),
             OSError(errno.ENOSPC, "No space left on device"), ValueError("embedded null byte")]
    for exc in never:
        assert not transient(None, None, Failed(data=exc)), exc
    for exc in (RuntimeError("CUDA out of memory"), ConnectionResetError(), OSError(errno.EIO, "I/O error")):
        assert transient(None, None, Failed(data=exc)), exc


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_says_what_to_set(tiny_mnist, tmp_path, capsys):
    assert main(_run(tiny_mnist, tmp_path, "--set", "device=cuda")) == 2
    err = capsys.readouterr().err
    assert "device: 'cuda' was asked for" in err and "device=auto" in err and "NVIDIA driver" not in err
    assert _nothing_written(tmp_path)


def test_a_run_json_round_trip_still_works(tmp_path):
    """The name rule accepts what collide itself writes (mnist-targets, doctored, run.json names)."""
    from collide.experiments.mnist import MnistExperiment

    for ok in ("mnist", "mnist-targets", "a.b_c-1", "x" * 100):
        assert MnistExperiment.from_dict({"name": ok}).name == ok
    with pytest.raises(ConfigError, match="name:"):
        MnistExperiment.from_dict({"name": "x" * 101})
    json.dumps(MnistExperiment().to_dict())


def test_labels_out_of_range_are_named(tmp_path, capsys):
    """A labels file with a valid header but labels of 200: the file and the bad labels
    are named, not 'only 0 test images of label 7 are classified correctly'."""
    import numpy as np

    from collide.datasets.mnist import load_mnist
    from tests.support import synthetic_mnist, write_idx

    root = synthetic_mnist(tmp_path / "mnist", n_train=200, n_test=200)
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(200, 200))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte holds 200 labels outside 0\.\.9 of 200 "
                                        r"\(values \[200\], first at index 0\)"):
        load_mnist(root, "test")
    code = main(["run", "mnist", "--no-prefect", "--data-root", str(root), "--results-root", str(tmp_path / "r"),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--set", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "labels outside 0..9" in err and "classified correctly" not in err


def test_nan_preactivations_are_called_nan():
    from collide.objective import saturated_units

    with pytest.raises(DataError, match="2 NaN or infinite values of 3"):
        saturated_units(torch.tensor([float("nan"), 1.0, float("inf")]), 1)
    assert saturated_units(torch.tensor([0.0, 1.0, -2.0]), 2).tolist() == [0, 2]
