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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.back(self.tail(x))))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_cast_copy_is_what_a_deep_copy_cast_gives_and_shares_nothing(dtype):
    torch.manual_seed(0)
    model = _Tied().train()
    model.norm(torch.randn(8, 6))  # running statistics and the batch count (int64) move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got, want = cast_copy(model, dtype), copy.deepcopy(model).to(dtype)

    assert got.state_dict().keys() == want.state_dict().keys()
    for key, value in got.state_dict().items():
        assert value.dtype == want.state_dict()[key].dtype and torch.equal(value, want.state_dict()[key]), key
    assert got.norm.num_batches_tracked.dtype == torch.int64
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
