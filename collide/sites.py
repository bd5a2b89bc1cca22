"""Call sites: where a network applies an activation, named so that a name cannot be wrong.

A *layer* in collide is one activation **call** in the forward pass, not a module: torchvision's
ResNet blocks call one ``relu`` module two or three times, and ``F.relu``, ``torch.relu``,
``Tensor.relu`` and their in-place forms have no module at all. Every call is seen by
the same mechanism, a :class:`torch.overrides.TorchFunctionMode` (which every ReLU form,
``nn.ReLU`` included, goes through) plus a pre-hook on each module that tracks which
module's ``forward`` is running.

Names:

- **module sites**: an activation module, by its name in ``model.named_modules()``
  (``layer1.0.relu``). A module that runs more than once per forward is ``NAME#k``, the
  k-th call from 0 (``layer1.0.relu#1``); its bare name is refused with the list.
- **functional sites**: ``OWNER.relu()`` where OWNER is the module whose own ``forward``
  made the call (``relu()`` for the root model), with ``#k`` when that forward makes
  more than one functional ReLU call (counted in call order, every ReLU form together).
  The parentheses keep them apart from module names. A ReLU written as ``x.clamp(min=0)``,
  ``clamp_min(x, 0)`` or ``F.threshold(x, 0, 0)`` is ``OWNER.clamp()`` or
  ``OWNER.threshold()``, counted apart. Names depend only on the model's
  code, so they are the same in every run (for a forward whose path does not depend on
  the input's values).
- **aliases**: the module right before an activation in an ``nn.Sequential`` (``fc1`` for
  ``relu1``) and a model's own ``collide_aliases`` dict (``fc6`` for VGG-16).

A model wrapper that sets ``collide_unwrap = "<child>"`` (the input normaliser) is
transparent: its child's layers keep the names they have in the child.

Every activation that saturates is addressable (:mod:`collide.activations`): ReLU,
ReLU6, Hardtanh, Hardsigmoid and Hardswish by every method (their flat pieces make exact
collisions); sigmoid, tanh, ELU, SELU, CELU, GELU, SiLU, Mish, Softplus and LogSigmoid by
the gradient methods (:attr:`Site.methods`). Naming any other activation is refused with the reason:
LeakyReLU and PReLU are injective; GLU, Tanhshrink and Softsign do not saturate
(Softsign only as 1/z).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from collide.activations import Activation, lookup
from collide.errors import DataError, LayerError

# Operation kinds. The exact solver models RELU, LEAKY, HARDTANH and MAX_POOL calls as
# region rows and refuses SMOOTH and NONLINEAR ones before a layer.
RELU, LEAKY, HARDTANH, SMOOTH, MAX_POOL, ADAPTIVE_MAX_POOL, NONLINEAR = (
    "relu", "leaky", "hardtanh", "smooth", "max_pool", "adaptive_max_pool", "nonlinear",
)

REFUSALS = {
    LEAKY: "is injective: only inputs with exactly equal pre-activations collide there, so there is no polytope "
           "to find",
    SMOOTH: "does not saturate (or is not elementwise), so no large change of its input leaves its output nearly "
            "unchanged",
}

GRADIENT_METHODS = ("gradient", "paper")
ALL_METHODS = (*GRADIENT_METHODS, "exact")

# Why a method cannot take a site whose activation it does not model.
EXACT_REFUSAL = ("the exact LP keeps a collision layer's saturated units on the activation's flat pieces, and {op} "
                 "only approaches its asymptotes: use method='gradient', which finds approximate collisions where "
                 "{op} saturates")


def _lookup(*paths: str) -> list[Any]:
    found = []
    for path in paths:
        owner: Any = {"torch": torch, "F": F, "Tensor": torch.Tensor}[path.split(".")[0]]
        for part in path.split(".")[1:]:
            owner = getattr(owner, part, None)
        if owner is not None:
            found.append(owner)
    return found


def _table() -> dict[Any, tuple[str, str]]:
    """Every function collide watches, as (kind, the name its functional site uses)."""
    table: dict[Any, tuple[str, str]] = {}

    def add(kind: str, name: str, *paths: str) -> None:
        for fn in _lookup(*paths):
            table.setdefault(fn, (kind, name))

    add(RELU, "relu", "F.relu", "F.relu_", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_")
    add(LEAKY, "leaky_relu", "F.leaky_relu", "F.leaky_relu_", "torch._C._nn.leaky_relu")
    add(LEAKY, "prelu", "F.prelu", "torch.prelu")
    add(LEAKY, "rrelu", "F.rrelu", "F.rrelu_", "torch.rrelu")
    add(HARDTANH, "hardtanh", "F.hardtanh", "F.hardtanh_", "torch._C._nn.hardtanh")
    add(HARDTANH, "relu6", "F.relu6", "torch._C._nn.relu6")
    # Hardsigmoid is piecewise linear with kinks at ±3: its pieces are a Hardtanh's on [-3, 3]
    # (the slope between them, 1/6, is the Jacobian's business, not the rows').
    add(HARDTANH, "hardsigmoid", "F.hardsigmoid", "torch._C._nn.hardsigmoid")
    for name in ("gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "softplus", "mish", "hardswish",
                 "logsigmoid", "softsign", "tanhshrink", "glu"):
        add(SMOOTH, name, f"F.{name}", f"F.{name}_", f"torch.{name}", f"torch.{name}_", f"Tensor.{name}",
            f"Tensor.{name}_", f"torch._C._nn.{name}")
    for nd in (1, 2, 3):
        add(MAX_POOL, f"max_pool{nd}d", f"F.max_pool{nd}d", f"torch.max_pool{nd}d")
        add(ADAPTIVE_MAX_POOL, f"adaptive_max_pool{nd}d", f"F.adaptive_max_pool{nd}d")
    for name in ("softmax", "log_softmax", "layer_norm", "group_norm", "instance_norm", "local_response_norm",
                 "normalize", "rms_norm"):
        add(NONLINEAR, name, f"F.{name}", f"torch.{name}", f"Tensor.{name}")
    return table


_FUNCTIONS = _table()

# ReLUs written another way, counted as ReLU calls under their own name (``clamp()``,
# ``threshold()``) so that they do not renumber a forward's ``relu()`` calls: ``clamp``
# and ``clamp_min`` with a minimum of 0 and no maximum, ``threshold(x, 0, 0)``.
_CLAMPS: dict[Any, str] = {fn: "clamp" for fn in _lookup(
    "torch.clamp", "torch.clamp_", "Tensor.clamp", "Tensor.clamp_", "torch.clamp_min", "torch.clamp_min_",
    "Tensor.clamp_min", "Tensor.clamp_min_", "torch.clip", "Tensor.clip", "Tensor.clip_")}
_CLAMPS.update({fn: "threshold" for fn in _lookup("F.threshold", "F.threshold_", "torch.threshold",
                                                  "torch.threshold_")})


def _is_zero(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == 0


def _relu_in_disguise(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a clamp or threshold call computes max(x, 0)."""
    if name == "threshold":
        threshold = args[1] if len(args) > 1 else kwargs.get("threshold")
        value = args[2] if len(args) > 2 else kwargs.get("value")
        return _is_zero(threshold) and _is_zero(value)
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = args[2] if len(args) > 2 else kwargs.get("max")
    return _is_zero(low) and high is None

# Activation modules: their own forward is one watched call, named after the module.
_MODULE_KINDS: tuple[tuple[type[nn.Module], str, str], ...] = (
    (nn.ReLU, RELU, "ReLU"),
    (nn.LeakyReLU, LEAKY, "LeakyReLU"), (nn.PReLU, LEAKY, "PReLU"), (nn.RReLU, LEAKY, "RReLU"),
    (nn.Hardtanh, HARDTANH, "Hardtanh"),  # nn.ReLU6 is a Hardtanh
    (nn.Hardsigmoid, HARDTANH, "Hardsigmoid"),  # pieces at ±3, as a Hardtanh's on [-3, 3]
    *((getattr(nn, n), SMOOTH, n) for n in ("GELU", "SiLU", "Sigmoid", "Tanh", "ELU", "SELU", "CELU", "Softplus",
                                             "Mish", "Hardswish", "LogSigmoid", "Softsign",
                                             "Tanhshrink", "GLU") if hasattr(nn, n)),
)


def module_kind(module: nn.Module) -> str | None:
    """The activation kind of an activation module, else None."""
    return next((kind for t, kind, _ in _MODULE_KINDS if isinstance(module, t)), None)


class Stop(Exception):
    """Raised inside a watcher to skip the rest of the forward pass."""


@dataclass(frozen=True)
class Event:
    """One watched call during a forward pass.

    ``base`` is the site's name without a call index, ``call`` the index of this call
    among the calls of ``base`` in this forward. ``value`` is the call's input (the
    pre-activation; for a pool, the pooled tensor), not cloned. ``params`` holds what
    the exact solver needs: a pool's window, a Hardtanh's range.
    """

    base: str
    call: int
    kind: str
    op: str
    module: str  # "module" or "function"
    value: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)


def _module_names(model: nn.Module) -> dict[int, str]:
    """Each module's name as sites use it (a ``collide_unwrap`` wrapper's prefix dropped)."""
    prefix = getattr(model, "collide_unwrap", "")
    names = {}
    for name, module in model.named_modules():
        if prefix and (name == prefix or name.startswith(prefix + ".")):
            name = name[len(prefix) + 1:]
        names[id(module)] = name
    return names


def _module_params(module: nn.Module, kind: str) -> dict[str, Any]:
    """What an activation module's call needs to be recomputed: its range, alpha, form."""
    if kind == HARDTANH:
        if isinstance(module, nn.Hardsigmoid):
            return {"min_val": -3.0, "max_val": 3.0}
        return {"min_val": float(module.min_val), "max_val": float(module.max_val)}  # type: ignore[arg-type]
    return {k: _plain(getattr(module, k)) for k in _SMOOTH_ARGS.get(type(module).__name__.lower(), ())}


def _plain(value: Any) -> Any:
    return value if isinstance(value, str) else float(value)


# The settings of a smooth activation that change its output, in the order its function takes them.
_SMOOTH_ARGS = {"elu": ("alpha",), "celu": ("alpha",), "gelu": ("approximate",), "softplus": ("beta", "threshold")}

_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _call_params(kind: str, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if kind == MAX_POOL:
        bound = dict(zip(_POOL_ARGS, args[1:], strict=False)) | {k: v for k, v in kwargs.items() if k in _POOL_ARGS}
        nd = int(op[len("max_pool")])
        return {"nd": nd, "kernel_size": bound["kernel_size"], "stride": bound.get("stride") or bound["kernel_size"],
                "padding": bound.get("padding", 0), "dilation": bound.get("dilation", 1),
                "ceil_mode": bool(bound.get("ceil_mode", False))}
    if kind == HARDTANH:
        if op == "relu6":
            return {"min_val": 0.0, "max_val": 6.0}
        if op == "hardsigmoid":
            return {"min_val": -3.0, "max_val": 3.0}
        rest = dict(zip(("min_val", "max_val"), args[1:3], strict=False)) | kwargs
        return {"min_val": float(rest.get("min_val", -1.0)), "max_val": float(rest.get("max_val", 1.0))}
    if kind == SMOOTH and op in _SMOOTH_ARGS:
        names = _SMOOTH_ARGS[op]
        bound = dict(zip(names, args[1:], strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        return {k: _plain(v) for k, v in bound.items()}
    return {}


class _Mode(TorchFunctionMode):
    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        entry = _FUNCTIONS.get(func)
        clamp = _CLAMPS.get(func)
        if clamp is not None and _relu_in_disguise(clamp, args, kwargs):
            entry = (RELU, clamp)
        if entry is not None and args and isinstance(args[0], torch.Tensor):
            self.watch._function(entry, args, kwargs)
        return func(*args, **kwargs)


class Watch:
    """Calls ``on_event(event)`` for every watched call of ``model``'s forward passes.

    Use as a context manager around ``model(x)``; the hooks and the function mode are
    gone when the block ends, whatever happens in it. ``on_event`` may raise
    :class:`Stop` to cut the forward short (the caller catches it).
    """

    def __init__(self, model: nn.Module, on_event: Callable[[Event], None]) -> None:
        self.model, self.on_event = model, on_event
        self.names = _module_names(model)
        self.stack: list[nn.Module] = []
        self.counts: dict[str, int] = {}

    def _next(self, base: str) -> int:
        k = self.counts.get(base, 0)
        self.counts[base] = k + 1
        return k

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module is self.model:  # a new forward pass: counts start again
            self.stack.clear()
            self.counts.clear()
        self.stack.append(module)
        kind = module_kind(module)
        if kind is not None and args and isinstance(args[0], torch.Tensor):
            name, op = self.names[id(module)], type(module).__name__
            params = _module_params(module, kind)
            self.on_event(Event(name, self._next(name), kind, op, "module", args[0], params))

    def _leave(self, module: nn.Module, *_: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def _function(self, entry: tuple[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kind, op = entry
        owner = self.stack[-1] if self.stack else None
        if owner is not None and module_kind(owner) is not None and kind not in (MAX_POOL, ADAPTIVE_MAX_POOL):
            return  # an activation module's own implementation: its module site was reported
        owner_name = self.names.get(id(owner), "") if owner is not None else ""
        # Every ReLU form counts as one function: F.relu then x.relu_() are relu()#0, relu()#1
        # (a clamp at 0 keeps its own name).
        site_op = "relu" if kind == RELU and op not in ("clamp", "threshold") else op
        base = f"{owner_name}.{site_op}()" if owner_name else f"{site_op}()"
        params = _call_params(kind, op, args, kwargs)
        self.on_event(Event(base, self._next(base), kind, op, "function", args[0], params))

    def __enter__(self) -> Watch:
        self._handles = []
        self._mode = _Mode(self)
        try:
            for module in self.model.modules():
                self._handles.append(module.register_forward_pre_hook(self._enter))
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))
            self._mode.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, *exc: Any) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._remove()


class CallOutputs(TorchFunctionMode):
    """Passes the output of the functional call flagged ``pending`` through
    ``handle(pending, output)``, which returns what the forward pass goes on with: the
    next call to reach this mode after :class:`Watch` reported it, since this mode sits
    outside Watch's (enter it first). Set ``pending`` (anything but None) from Watch's
    ``on_event``."""

    def __init__(self, handle: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.pending: Any = None
        self.handle = handle

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.pending is not None:
            pending, self.pending = self.pending, None
            return self.handle(pending, out)
        return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block, then give every module its own flag back.

    ``model.eval()`` alone would leave a caller's training-mode model in eval mode, and
    ``model.train()`` afterwards would switch on modules the caller had frozen: each
    submodule's ``training`` flag is restored one by one, even when the block raises.

    Yields:
        ``model`` itself (not a copy): parameters and buffers are shared.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield model
    finally:
        for m, training in flags:
            m.training = training


@dataclass(frozen=True)
class Site:
    """One activation call of a forward pass, as :func:`probe` finds it.

    ``name`` is what ``layer=`` takes (``layer1.0.relu#1``, ``fc1``'s ReLU ``relu1``,
    ``relu()``); ``base`` the same without ``#k``; ``call`` its index among ``calls``
    calls of ``base`` per forward. ``kind`` is ``module`` or ``function``, ``op`` the
    activation (``relu``, ``ReLU6``, ``gelu``, ...). ``shape`` is the pre-activation's
    shape for one input, ``units`` its size.
    """

    name: str
    base: str
    call: int
    calls: int
    kind: str
    op: str
    activation: str
    shape: tuple[int, ...]
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def units(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def function(self) -> Activation | None:
        """The activation this call applies, or None where collide has no saturated regime for it."""
        if self.activation == RELU:
            return lookup("relu")
        return lookup(self.op, dict(self.params)) if self.activation in (HARDTANH, SMOOTH) else None

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that can find collisions at this call: every one where the activation
        reaches its asymptotes on flat pieces (ReLU, ReLU6, Hardtanh, Hardsigmoid,
        Hardswish), the gradient methods where it only approaches them (sigmoid, tanh,
        GELU, ...), none elsewhere."""
        act = self.function
        if act is None:
            return ()
        # Flat pieces make exact collisions: the LP keeps the other units' pre-activations.
        return ALL_METHODS if act.piecewise_linear else GRADIENT_METHODS

    @property
    def addressable(self) -> bool:
        return bool(self.methods)

    def why_not(self, method: str | None = None) -> str:
        """Why ``method`` (any method when None) cannot take this site; "" when it can."""
        if method is None and self.addressable or method is not None and method in self.methods:
            return ""
        if self.addressable:
            return EXACT_REFUSAL.format(op=self.op)
        return f"{self.op} {REFUSALS.get(self.activation, REFUSALS[SMOOTH])}"


# Probes are forward passes: each (model, input shape) is probed once, while the model
# has the same modules. Keys are weak, so a probed model is not kept alive.
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[Any, list[Site]]] = weakref.WeakKeyDictionary()


def example_for(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """A copy of ``example[:1]`` on the model's device and in its dtype (the first float
    parameter's, else buffer's): a call's name and shape do not depend on either. A copy,
    so that a model that changes its input in place leaves the caller's tensor alone."""
    x = example[:1].detach().clone()
    tensor = next(iter(model.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
    if tensor is not None and tensor.is_floating_point():
        x = x.to(tensor.device, tensor.dtype)
    return x


def probe(model: nn.Module, example: torch.Tensor) -> list[Site]:
    """Every activation call of one forward pass of ``example[:1]``, in call order.

    The pass runs in eval mode under ``no_grad`` (every module's flag restored after).

    Shapes:
        example: (B, *input), a batch of at least one input
    """
    key = (tuple(example.shape[1:]), tuple(id(m) for m in model.modules()))
    cached = _PROBES.setdefault(model, {})
    if key in cached:
        return cached[key]
    events: list[Event] = []

    def keep(event: Event) -> None:
        if event.kind in (RELU, LEAKY, HARDTANH, SMOOTH):
            events.append(event)

    x = example_for(model, example)
    try:
        with torch.no_grad(), eval_mode(model), Watch(model, keep):
            out = model(x)
    except (RuntimeError, ValueError, IndexError) as exc:  # shape errors, by the layer that met them
        raise DataError(f"the model cannot take an example of shape {tuple(x.shape[1:])}, so its layers cannot be "
                        "found (collide.layers, find_polytope and tap take one input without a batch dimension; "
                        f"preactivation takes a batch (B, *input)): {str(exc)[:300]}") from exc
    if not isinstance(out, torch.Tensor):
        # Every method classifies the points it finds by the model's own output: the target's class,
        # the success rate. Said here, before any work, rather than as an attribute error deep inside.
        held = f" (keys {sorted(map(str, out))[:5]})" if isinstance(out, dict) else ""
        raise DataError(f"the model returns a {type(out).__name__}{held}, not a tensor of logits (B, classes): "
                        "collide classifies by the model's output, so wrap the model so that its forward returns "
                        "the logits tensor alone (e.g. a module whose forward returns model(x)['logits'])")
    calls: dict[str, int] = {}
    for e in events:
        calls[e.base] = calls.get(e.base, 0) + 1
    sites = [Site(name=e.base if calls[e.base] == 1 else f"{e.base}#{e.call}", base=e.base, call=e.call,
                  calls=calls[e.base], kind=e.module, op=e.op, activation=e.kind, shape=tuple(e.value.shape[1:]),
                  params=tuple(sorted(e.params.items())))
             for e in events]
    cached.clear()  # a model with other modules than last time: older probes are stale
    cached[key] = sites
    return sites


def _saturates(module: nn.Module | None) -> bool:
    """Whether ``module`` is an activation module that collide can address."""
    kind = module_kind(module) if module is not None else None
    return kind == RELU or kind in (HARDTANH, SMOOTH) and lookup(type(module).__name__,
                                                                _module_params(module, kind)) is not None


def aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> layer name: the module before an activation in an ``nn.Sequential`` (nested
    paths included), then the model's own ``collide_aliases``.

    One activation module placed several times in a Sequential runs there once per place,
    in order: the module before its k-th place names ``RELU#k``.
    """
    names = _module_names(model)
    found: dict[str, str] = {}
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.values())  # every place, a module used twice included
        prefix = names[id(module)]
        places = {id(c): [i for i, d in enumerate(children) if d is c] for c in children if c is not None}
        for i, (child, after) in enumerate(zip(children, children[1:], strict=False)):
            if _saturates(after) and not _saturates(child) and child is not None:
                where = places[id(after)]
                target = names[id(after)] + (f"#{where.index(i + 1)}" if len(where) > 1 else "")
                key = next(k for k, c in module._modules.items() if c is child)
                found[f"{prefix}.{key}" if prefix else key] = target
    return {**found, **getattr(model, "collide_aliases", {})}


_INDEXED = re.compile(r"^(?P<base>.*?)#(?P<call>\d+)$")


def listed_aliases(model: nn.Module) -> dict[str, str]:
    """The aliases worth listing: a model's own, and the top-level modules before an activation
    (a nested path such as ``net.features.0`` says nothing its ReLU's name does not)."""
    own = getattr(model, "collide_aliases", {})
    return {a: m for a, m in aliases(model).items() if "." not in a or a in own}


def _listing(sites: list[Site], alias: dict[str, str]) -> str:
    usable = [s.name for s in sites if s.addressable]
    named = [f"{a} (= {m})" for a, m in alias.items() if any(m in (s.base, s.name) and s.addressable for s in sites)]
    refused = list(dict.fromkeys(f"{s.base} ({s.op})" for s in sites if not s.addressable))
    return (", ".join(usable + named) or "none (the model makes no call of an activation that saturates)") + (
        f" (not addressable: {', '.join(refused[:8])}{', ...' if len(refused) > 8 else ''})" if refused else "")


def resolve(model: nn.Module, name: str, example: torch.Tensor) -> Site:
    """The activation call site that ``name`` names in ``model``, or a :class:`LayerError` saying
    why not and listing the names that work.

    Shapes:
        example: (B, *input), an input the model takes (only its first is run, once)
    """
    if not isinstance(name, str) or not name:
        raise LayerError(f"expected a layer name, got {name!r}")
    sites = probe(model, example)
    alias = aliases(model)
    shown = listed_aliases(model)
    prefix = getattr(model, "collide_unwrap", "")
    m = _INDEXED.match(name)
    base, call = (m["base"], int(m["call"])) if m else (name, None)
    if prefix and base.startswith(prefix + "."):
        base = base[len(prefix) + 1:]
    if base in alias:
        target = _INDEXED.match(alias[base])
        base, call = (target["base"], int(target["call"]) if call is None else call) if target else (alias[base], call)
    matching = [s for s in sites if s.base == base]
    if not matching:
        names = _module_names(model)
        modules = {names[id(mod)]: mod for mod in model.modules()}
        if base in modules:
            kind = module_kind(modules[base])
            what = (f"{name!r} ({type(modules[base]).__name__}) was not called in the forward pass"
                    if kind is not None else f"{name!r} is a {type(modules[base]).__name__}, not an activation")
        else:
            what = f"no layer named {name!r}"
        raise LayerError(f"{what}; layers that work: {_listing(sites, shown)}")
    first = matching[0]
    if call is None and first.calls > 1:
        listed = ", ".join(s.name for s in matching)
        raise LayerError(f"{name!r} runs {first.calls} times per forward pass, so its name alone is ambiguous: "
                         f"name one call: {listed}")
    if call is not None and call >= first.calls:
        listed = ", ".join(s.name for s in matching)
        raise LayerError(f"{name!r}: {base} runs {first.calls} time(s) per forward pass (calls count from 0): "
                         f"{listed}")
    site = matching[call or 0]
    if not site.addressable:
        raise LayerError(f"{name!r} is a {site.op} call: {site.why_not()}; layers that work: {_listing(sites, shown)}")
    return site


def function_of(site: Site) -> Activation:
    """The activation ``site`` applies, or a :class:`LayerError` where collide has no
    saturated regime for it."""
    act = site.function
    if act is None:
        raise LayerError(f"{site.name!r} is a {site.op} call: {site.why_not()}")
    return act


def require_method(site: Site, method: str) -> None:
    """Refuse ``method`` at ``site`` when it cannot take the site's activation, saying what can."""
    if why := site.why_not(method):
        raise LayerError(f"{site.name!r} is a {site.op} call: {why}")
