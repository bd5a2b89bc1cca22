import copy

import pytest
import torch
from torch import nn

from collide.copies import cast_copy


class _Tied(nn.Module):
    """Weights tied across two layers, a float buffer, an integer buffer, a frozen weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6)
        self.back = nn.Linear(6, 6)
        self.back.weight = self.embed.weight  # tied
        self.head = nn.Linear(6, 3, bias=False).requires_grad_(False)
        self.tail = self.embed  # the same module twice: one copy of it
        self.norm = nn.BatchNorm1d(6)
        self.register_buffer("phase", torch.randn(6, dtype=torch.complex64))  # stays complex

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.back(self.tail(x))))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_cast_copy_is_what_a_deep_copy_cast_gives_and_shares_nothing(dtype):
    torch.manual_seed(0)
    model = _Tied().train()
    model.norm(torch.randn(8, 6))  # running statistics and the batch count (int64) move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = cast_copy(model, dtype)
    want = copy.deepcopy(model).double() if dtype == torch.float64 else copy.deepcopy(model).float()

    assert got.state_dict().keys() == want.state_dict().keys()
    assert dict(got.named_buffers()).keys() == dict(want.named_buffers()).keys()  # buffers stay buffers
    for key, value in got.state_dict().items():
        assert value.dtype == want.state_dict()[key].dtype and torch.equal(value, want.state_dict()[key]), key
    assert got.norm.num_batches_tracked.dtype == torch.int64 and got.phase.dtype == torch.complex64
    assert got.tail is got.embed and got.back.weight is got.embed.weight  # shared and tied stay so
    assert got.head.weight.requires_grad is False and got.embed.weight.requires_grad is True
    assert isinstance(got.embed.weight, nn.Parameter) and got.training
    x = torch.randn(5, 6, dtype=dtype)
    assert torch.equal(got.eval()(x), want.eval()(x))

    # Nothing of the caller's model is shared, even where it was float32 already, and it is
    # as it was.
    mine = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not mine & {t.data_ptr() for t in [*got.parameters(), *got.buffers()]}
    with torch.no_grad():
        for t in [*got.parameters(), *got.buffers()]:
            t.add_(1)
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert model.training


class _Tagged(nn.Parameter):
    """A parameter class of a user's own."""


class _OwnCopy(nn.Module):
    """A module whose own deep copy ignores the memo it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = _Tagged(torch.randn(3, 4))

    def __deepcopy__(self, memo):
        fresh = _OwnCopy()
        fresh.weight = _Tagged(self.weight.detach().clone())
        return fresh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_a_cast_copy_keeps_a_parameters_class_and_casts_a_module_that_copies_itself_its_own_way():
    torch.manual_seed(0)
    model = nn.Sequential(_OwnCopy(), nn.ReLU())
    got = cast_copy(model)
    assert type(got[0].weight) is _Tagged and got[0].weight.dtype == torch.float64
    assert torch.equal(got[0].weight, model[0].weight.double())
    tagged = nn.Linear(4, 3)
    tagged.weight = _Tagged(torch.randn(3, 4))
    assert type(cast_copy(tagged).weight) is _Tagged


def test_a_model_with_lazy_modules_is_copied_before_and_after_they_are_initialised():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU())
    lazy = cast_copy(model)  # nothing to cast yet: the copy runs in float64 from its first call
    x = torch.randn(2, 5, dtype=torch.float64)
    assert lazy(x).dtype == torch.float64 and nn.parameter.is_lazy(next(model.parameters()))
    model(torch.randn(2, 5))  # the caller's model initialised in float32
    got = cast_copy(model)
    assert got[0].weight.dtype == torch.float64 and torch.equal(got[0].weight, model[0].weight.double())
