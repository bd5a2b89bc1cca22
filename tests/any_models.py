"""Small models of the kinds researchers write, for the any-model tests (importable as
``tests.any_models:FACTORY`` by ``collide run model --model``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batch_norm(net: nn.Module, seed: int) -> nn.Module:
    """Give every batch norm running statistics and an affine part away from the identity,
    so that a test would notice one computed wrongly."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return net


class Block(nn.Module):
    """A residual block whose ReLU is functional: ``relu(bn(conv(x)) + x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + x)


class FunctionalCNN(nn.Module):
    """Every ReLU form: ``F.relu``, a residual block's ``F.relu``, ``torch.relu``, an in-place
    ``Tensor.relu_()``, and one ``nn.ReLU`` module called twice."""

    def __init__(self, channels: int = 1, width: int = 4, side: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.block = Block(width)
        self.fc1 = nn.Linear(width * (side // 2) ** 2, 24)
        self.fc2 = nn.Linear(24, 24)
        self.fc2b = nn.Linear(24, 16)
        self.act = nn.ReLU()
        self.fc3 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))                    # relu()#0
        x = F.max_pool2d(self.block(x), 2)                     # block.relu()
        x = torch.relu(x) * 1.0                                # relu()#1 (a no-op on non-negatives)
        h = self.fc1(x.flatten(1))
        h.relu_()                                              # relu()#2, in place
        h = self.act(self.fc2(h))                              # act#0
        h = self.act(self.fc2b(h))                             # act#1: one module, two calls
        return self.fc3(h)


def functional_cnn() -> nn.Module:
    """A seeded 1x8x8 ``FunctionalCNN`` with batch norm away from the identity."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return randomize_batch_norm(FunctionalCNN(), 4).eval()


def functional_cnn_rgb() -> nn.Module:
    """The same for 3x8x8 RGB inputs (``collide run model`` on image folders)."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return randomize_batch_norm(FunctionalCNN(channels=3), 4).eval()


def piecewise_mlp() -> nn.Module:
    """LeakyReLU and Hardtanh before a ReLU layer (``3``): linear pieces of three kinds."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(24, 16), nn.LeakyReLU(0.1), nn.Linear(16, 16), nn.Hardtanh(-0.3, 0.3),
            nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3),
        ).eval()


def gelu_cnn() -> nn.Module:
    """A GELU before a ReLU layer: gradient collisions at the ReLU, no exact ones."""
    with torch.random.fork_rng():
        torch.manual_seed(6)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(),
            nn.Linear(16, 10),
        ).eval()


class ClampNet(nn.Module):
    """ReLUs written as clamps and thresholds, and a clamp that is not one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 16)
        self.fc3, self.out = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).clamp(0, 1)                           # not a ReLU: it has a maximum
        h = self.fc1(x).clamp(min=0)                           # clamp()#0
        h = torch.clamp_min(self.fc2(h), 0.0)                  # clamp()#1
        h = F.threshold(self.fc3(h), 0.0, 0.0)                 # threshold()
        return self.out(F.relu(h))                             # relu(): a no-op on non-negatives


def clamp_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(9)
        return ClampNet().eval()


def shared_relu_mlp() -> nn.Module:
    """One ``nn.ReLU`` placed twice in a Sequential: its calls are ``1#0`` and ``1#1``."""
    with torch.random.fork_rng():
        torch.manual_seed(11)
        act = nn.ReLU()
        return nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 6), act, nn.Linear(6, 2)).eval()


def needs_width(width: int) -> nn.Module:
    """A factory that cannot be called with no arguments."""
    return nn.Linear(width, 2)


def saturating_cnn() -> nn.Module:
    """A tanh collision layer after a SiLU: gradient collisions only (weights large enough
    that a share of the tanh units saturate)."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 24), nn.Tanh(),
            nn.Linear(24, 10),
        ).eval()
        with torch.no_grad():
            net[3].weight.mul_(40)
        return net
