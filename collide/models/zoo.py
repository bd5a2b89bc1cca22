"""The paper's classifiers, their training, and checkpoint IO.

Layers are named so that taps can address them: activation modules are ``relu1``,
``relu2``, ... in forward order (``tanh1``, ``tanh2``, ... in the MLP with tanh), and the
layer before each is its ``fc``/``conv`` namesake.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import platform
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collide._io import atomic_file, file_sha256, json_digest
from collide.config import TrainConfig
from collide.datasets.mnist import Split
from collide.errors import CheckpointError, ConfigError, ModelRefused
from collide.models.external import TORCHVISION
from collide.models.external import build as build_external
from collide.models.tensor_file import load_tensors
from collide.models.vgg import vgg16_from_source

# The checkpoints the published tables are computed from, shipped with the package: each
# ``.pt`` with its ``.pt.json`` (sha256, data digest, training config, torch version,
# machine). Two trainings with the same settings on different CPUs differ (AVX2 against
# AVX-512 kernels), and every size moves with them; a shipped file does not.
SHIPPED_DIR = Path(__file__).parent / "shipped"


# The MLP's hidden activations besides ReLU (issue 25 §3: does the paper's claim about
# saturating activations hold?), by the name an architecture ``mlp-NAME`` gives them: each
# a module so that its call sites are named ``NAME1``, ``NAME2``. GELU is the erf form,
# torch's default.
MLP_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "gelu": nn.GELU,
}


def mlp(activation: str = "relu") -> nn.Sequential:
    """The paper's MNIST MLP: 784-256-256-10 with ReLU (§3.1), or with another hidden
    activation of :data:`MLP_ACTIVATIONS` at both hidden layers (same widths, same
    initialisation draws: the activations hold no parameters)."""
    if activation == "relu":
        make: Callable[[], nn.Module] = nn.ReLU
    elif activation in MLP_ACTIVATIONS:
        make = MLP_ACTIVATIONS[activation]
    else:
        raise ConfigError(f"unknown MLP activation {activation!r}: expected 'relu' or one of "
                          f"{sorted(MLP_ACTIVATIONS)}")
    return nn.Sequential(
        OrderedDict([
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(784, 256)),
            (f"{activation}1", make()),
            ("fc2", nn.Linear(256, 256)),
            (f"{activation}2", make()),
            ("fc3", nn.Linear(256, 10)),
        ])
    )


def lenet5() -> nn.Sequential:
    """LeNet-5 for 28x28 inputs (padding 2 on the first conv, max pooling)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(400, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


_BUILDERS: dict[str, Callable[[], nn.Sequential]] = {
    "mlp": mlp, "lenet5": lenet5,
    **{f"mlp-{name}": functools.partial(mlp, name) for name in MLP_ACTIVATIONS},
}


def build_model(arch: str) -> nn.Sequential:
    if arch not in _BUILDERS:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {sorted(_BUILDERS)}")
    return _BUILDERS[arch]()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1000, device: str = "cpu") -> float:
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].to(device)
        y = split.labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(split)


def train(
    train_split: Split,
    test_split: Split,
    *,
    config: TrainConfig,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config.arch`` with Adam: bit-identical weights for the same data, config,
    device and machine (torch's deterministic algorithms, ``config.threads`` CPU threads,
    a seeded data order and initialisation; the caller's settings restored after).

    Another CPU may round differently (its kernels differ), which is why the published
    numbers come from shipped checkpoints (:data:`SHIPPED_DIR`).

    ``progress(batches_done, batches_total, loss)`` after every batch.

    Returns:
        The model in eval mode on CPU, and metadata (test accuracy, seconds, config, the
        torch version and machine it was trained on).
    """
    with deterministic(config.threads, cuda=str(device).startswith("cuda")):
        return train_loop(train_split, test_split, config=config, device=device, progress=progress)


@contextlib.contextmanager
def deterministic(threads: int, *, cuda: bool) -> Iterator[None]:
    """torch's deterministic algorithms and ``threads`` CPU threads for the block; the
    caller's settings come back after it."""
    saved_threads, saved_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    # On CUDA some kernels have no deterministic form without CUBLAS_WORKSPACE_CONFIG:
    # warn there rather than fail a training the user asked for.
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved_det, warn_only=saved_warn)
        torch.set_num_threads(saved_threads)


def machine() -> dict[str, Any]:
    """What a checkpoint was trained on: enough to tell two machines' kernels apart."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def train_loop(
    train_split: Split, test_split: Split, *, config: TrainConfig, device: str,
    progress: Callable[[int, int, float], None] | None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None, weight_decay: float = 0.0,
) -> tuple[nn.Module, dict[str, Any]]:
    """The training loop; ``extra_loss(model)`` is added to every batch's loss and Adam
    takes ``weight_decay`` (a regulariser: :mod:`collide.models.regularised`). Without
    them the weights are the same bits as ever."""
    gen = torch.Generator().manual_seed(config.seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)  # module init draws from the global generator only
    try:
        model = build_model(config.arch)
    finally:
        torch.random.set_rng_state(torch_state)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(train_split) if config.train_limit is None else min(config.train_limit, len(train_split))
    start = time.perf_counter()
    per_epoch = -(-n // config.batch_size)
    if progress is not None:
        progress(0, config.epochs * per_epoch, float("nan"))
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for b in range(0, n, config.batch_size):
            idx = order[b : b + config.batch_size]
            x = train_split.images[idx].to(device)
            y = train_split.labels[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(epoch * per_epoch + b // config.batch_size + 1, config.epochs * per_epoch, loss.item())
    acc = accuracy(model, test_split, device=device)
    model.to("cpu").eval()
    meta = {
        "arch": config.arch,
        "test_accuracy": acc,
        "train_seconds": time.perf_counter() - start,
        "train_examples": n,
        "config": asdict(config),
        "torch": torch.__version__,
        "device": str(device),
        "machine": machine(),
    }
    return model, meta


def save_checkpoint(model: nn.Module, meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write ``path`` (state dict) and ``path.json`` (metadata with the file's sha256).

    Both are written under temporary names and renamed, so a killed run leaves no
    half-written checkpoint.
    """
    path = Path(path)
    # Through memory: torch names the archive's folder after the file it writes, and a
    # temporary's random name would make two identical trainings differ in their sha256.
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "arch": meta["arch"]}, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
        meta = {**meta, "sha256": file_sha256(tmp), "file": path.name}
        with atomic_file(f"{path}.json") as side:
            side.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its sha256."""
    path = Path(path)
    side = Path(f"{path}.json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train one with `collide run mnist`")
    if not side.is_file():
        raise CheckpointError(f"checkpoint metadata {side} is missing: delete {path} and retrain")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {side} is not JSON ({exc}): delete {path} and {side} "
                              "and retrain") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {side} is not a JSON object: delete both files and retrain")
    digest = file_sha256(path)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} has sha256 {digest[:12]}..., its metadata says "
            f"{str(meta.get('sha256'))[:12]}...: the file changed; delete both and retrain"
        )
    fix = f"delete {path} and {side} and retrain (`collide run mnist`)"
    blob = load_tensors(path, expected="a collide checkpoint", fix=fix)
    try:
        model = build_model(blob["arch"])
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, ValueError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a collide checkpoint ({exc}): {fix}") from None
    return model.eval(), meta


def checkpoint_name(config: TrainConfig, data_digest: str) -> str:
    """A checkpoint's file name: its architecture, and a hash of its training config and of
    the data it was trained on, so that other data in the same folder never reuses it."""
    return f"{config.arch}-{json_digest({'train': asdict(config), 'data': data_digest}, 12)}.pt"


def checkpoint_path(checkpoint_dir: str | Path, config: TrainConfig, data_digest: str) -> Path:
    """Where the checkpoint trained with ``config`` on the data of ``data_digest`` lives."""
    return Path(checkpoint_dir) / checkpoint_name(config, data_digest)


def shipped_checkpoint(config: TrainConfig, data_digest: str) -> Path | None:
    """The shipped checkpoint trained with ``config`` on the data of ``data_digest``, if any."""
    path = SHIPPED_DIR / checkpoint_name(config, data_digest)
    return path if path.is_file() else None


def shipped_checkpoints() -> list[dict[str, Any]]:
    """Every shipped checkpoint's metadata (``file`` names it), for messages and docs."""
    return [json.loads(p.read_text()) for p in sorted(SHIPPED_DIR.glob("*.pt.json"))]


def checkpoint_source(path: str | Path, sha256: str) -> dict[str, Any]:
    """How a stored row names the model it was solved with: a checkpoint and its hash."""
    return {"kind": "checkpoint", "path": str(path), "sha256": sha256}


def load_model_source(source: Any, *, trusted: Collection[str] = ()) -> nn.Module:
    """The model a stored row names, verified against the hash it was solved with.

    A store is data: nothing read from it selects code to import. A row's source is
    rebuilt from collide's own registry alone (a checkpoint file checked by sha256,
    VGG-16, a torchvision classifier by name), and an external model of the user's own
    code (``package.module:factory``) only when its spec is in ``trusted``: the specs the
    caller named itself (``--model`` on the command line, or the running config's model).

    Raises:
        ModelRefused: the row names a user's module that the caller did not name.
    """
    if not isinstance(source, Mapping):
        raise CheckpointError(f"the row's model source is {type(source).__name__}, not a mapping: the store is "
                              "damaged; rerun the experiment")
    kind = source.get("kind")
    if kind == "checkpoint":
        model, meta = load_checkpoint(source["path"])
        if meta["sha256"] != source["sha256"]:
            raise CheckpointError(
                f"the row was solved with checkpoint {source['sha256'][:12]}..., but {source['path']} "
                f"is now {meta['sha256'][:12]}...: rerun the experiment"
            )
        return model
    if kind == "vgg16":
        return vgg16_from_source(source)
    if kind == "external":
        spec = source.get("model")
        if not isinstance(spec, str) or not spec:
            raise CheckpointError(f"the row's external model source names no model ({spec!r}): the store is damaged")
        if not spec.startswith(TORCHVISION) and spec not in set(trusted):
            raise ModelRefused(
                f"the store names the external model {spec!r}, code of a user's own: collide never imports code "
                f"named in a store. If you trust that module, name it yourself: pass --model {spec}"
            )
        return build_external(source)
    raise CheckpointError(f"unknown model source kind {kind!r}: expected 'checkpoint', 'vgg16' or 'external'")
