"""full_precision switches TF32 off for a block and gives the caller's settings back."""

import subprocess
import sys

import pytest
import torch

from collide.precision import full_precision, settings


def _assert_full_precision_inside() -> None:
    legacy = settings()["legacy"]
    if legacy is not None:
        assert legacy == (False, False, "highest")
    for path in ("cuda.matmul", "cudnn.conv", "cudnn.rnn"):
        if path in settings()["fp32_precision"]:
            assert settings()["fp32_precision"][path] == "ieee", path


@pytest.fixture
def tf32_on():
    """The state a caller who wants speed would leave: TF32 on for matmul and cuDNN."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
    torch.set_float32_matmul_precision(before[2])


def test_off_inside_and_restored_after(tf32_on):
    before = settings()
    assert before["legacy"] == (True, True, "high")
    with full_precision():
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
        _assert_full_precision_inside()
        with full_precision():  # nesting keeps it off and gives the outer block its state back
            _assert_full_precision_inside()
        _assert_full_precision_inside()
    assert settings() == before
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"


def test_restored_after_an_exception(tf32_on):
    before = settings()
    with pytest.raises(ZeroDivisionError), full_precision():
        _assert_full_precision_inside()
        1 / 0  # noqa: B018
    assert settings() == before


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="PyTorch < 2.9")
def test_a_caller_on_the_new_interface_gets_exactly_its_state_back():
    # Set through the new interface only, the legacy getters raise: they must not be needed.
    # A fresh process, so that this test's global settings cannot leak into others.
    code = (
        "import torch\n"
        "from collide.precision import full_precision, settings\n"
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "torch.backends.cudnn.conv.fp32_precision = 'tf32'\n"
        "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'\n"
        "before = settings()\n"
        "assert before['legacy'] is None, before\n"
        "with full_precision():\n"
        "    inside = settings()['fp32_precision']\n"
        "assert settings() == before, (settings(), before)\n"
        "assert all(inside[p] == 'ieee' for p in ('cuda.matmul', 'cudnn.conv', 'mkldnn.matmul')), inside\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_a_convolution_inside_is_as_accurate_as_float32_allows():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 64, 32, 32, generator=gen), torch.randn(64, 64, 3, 3, generator=gen)
    exact = torch.nn.functional.conv2d(x.double(), w.double())
    with full_precision():
        got = torch.nn.functional.conv2d(x.cuda(), w.cuda()).cpu().double()
    assert float((got - exact).norm() / exact.norm()) < 1e-5  # TF32 gives about 1e-3
