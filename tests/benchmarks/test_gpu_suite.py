"""The GPU suite (benchmarks/gpu_suite.py) on the CPU with --tiny, so that it cannot rot
between the days a GPU is lent: the file it writes, and that its figures are sane."""

import json
import math

import pytest
import torch

from benchmarks import gpu_suite
from collide.precision import settings
from tests.tolerances import SAME_DEVICE_SOLVE

RATES = {
    "vgg_fc6": ("steps_per_second", "step_gflop", "achieved_tflops", "matmul_tflops", "share_of_matmul_rate"),
    "patches": ("steps_per_second", "step_gflop", "achieved_tflops", "share_of_matmul_rate",
                "compose_forward_backward_seconds"),
    "mnist_batch": ("targets_per_second", "solver_seconds", "mean_steps", "check_seconds_per_target"),
}
AGREEMENT_FIELDS = ("devices", "tf32_during", "identical", "max_vertex_abs_diff", "vertex_abs_diff",
                    "max_rel_error_diff", "valid_cpu", "valid_device", "same_valid")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    before = settings()
    result = gpu_suite.main(["--device", "cpu", "--tiny", "--out", str(out)])
    return out, result, before


def test_the_file_holds_every_item_with_its_own_seconds(tiny_run):
    out, result, _ = tiny_run
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["tiny"] is True and result["skipped"] == []
    assert result["device"]["name"] == "cpu" and result["device"]["torch"] == torch.__version__
    assert "cuda" in result["device"] and "cpu" in result["machine"]
    assert list(result["items"]) == list(gpu_suite.ITEMS)
    assert gpu_suite.finite_numbers(result)
    for name, item in result["items"].items():
        assert item["seconds"] > 0, name
    assert sum(item["seconds"] for item in result["items"].values()) <= result["seconds"]


def test_rates_are_positive_and_finite(tiny_run):
    items = tiny_run[1]["items"]
    for name, fields in RATES.items():
        for field in fields:
            value = items[name][field]
            assert math.isfinite(value) and value > 0, (name, field, value)
    batch = items["mnist_batch"]
    assert batch["targets"] == gpu_suite.TINY.mnist_targets
    assert batch["checked_targets"] == batch["targets"]
    assert 0 <= batch["converged_share"] <= 1 and 0 <= batch["valid_share_of_checked"] <= 1
    assert items["patches"]["grid"] == [7, 7]


def test_cpu_against_cpu_agrees_bit_for_bit(tiny_run):
    agreement = tiny_run[1]["items"]["agreement"]
    assert set(AGREEMENT_FIELDS) <= set(agreement)
    assert agreement["devices"] == ["cpu", "cpu"]
    assert agreement["tf32_during"] == {"matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert agreement["max_vertex_abs_diff"] <= SAME_DEVICE_SOLVE and agreement["identical"]
    assert agreement["max_rel_error_diff"] <= SAME_DEVICE_SOLVE
    assert agreement["same_valid"]
    assert len(agreement["vertex_abs_diff"]) == gpu_suite.TINY.agreement_targets
    assert all(len(v) == gpu_suite.N_VERTICES for v in agreement["vertex_abs_diff"])


def test_the_precision_switches_are_given_back(tiny_run):
    assert settings() == tiny_run[2]


def test_the_float64_checks_stop_at_the_deadline_and_say_how_far_they_got():
    suite = gpu_suite.Suite(gpu_suite.TINY, device="cpu", tiny=True, budget=0)
    item = suite.mnist_batch()
    assert item["targets"] == gpu_suite.TINY.mnist_targets
    assert item["checked_targets"] == 0 and item["valid_share_of_checked"] is None


def test_a_spent_budget_skips_every_item_and_still_writes_the_file(tmp_path):
    out = tmp_path / "gpu.json"
    result = gpu_suite.main(["--device", "cpu", "--tiny", "--budget", "0", "--out", str(out)])
    assert result["skipped"] == list(gpu_suite.ITEMS)
    assert all("budget" in item["skipped"] for item in json.loads(out.read_text())["items"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_clearly_where_there_is_none(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_suite.main(["--tiny", "--out", str(tmp_path / "gpu.json")])
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "gpu.json").exists()


@pytest.mark.gpu
def test_the_tiny_suite_runs_on_cuda(tmp_path):
    result = gpu_suite.main(["--device", "cuda", "--tiny", "--out", str(tmp_path / "gpu.json")])
    assert result["skipped"] == [] and gpu_suite.finite_numbers(result)
    agreement = result["items"]["agreement"]
    assert agreement["devices"] == ["cpu", "cuda"] and set(AGREEMENT_FIELDS) <= set(agreement)
