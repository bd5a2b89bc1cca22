"""Plain JSON-like values (a ``--config`` file, ``--set`` overrides) to a frozen config
dataclass, every key and value checked by name; and the keys a config accepts, each with
its type, default and one-line description.

A config class describes its fields once, in an ``Attributes:`` (or ``Args:``) section
of its docstring (Google style: ``name: description``, or ``lower, upper: description``
for several); :func:`descriptions` reads them and :func:`config_keys` lists them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from typing import Any, Literal, TypeVar

from collide.errors import ConfigError

_T = TypeVar("_T")


def load(kind: type[_T], raw: Any) -> _T:
    """An instance of the config dataclass ``kind`` from plain JSON-like values.

    Every key is checked against the fields and every value against its field's
    annotation before the dataclass checks its ranges, so a typo or a wrong type is
    reported by name (``gradient.lrr``: unknown key, did you mean ``gradient.lr``?),
    never as a Python ``TypeError``. Integers are accepted for floats and integral
    floats (``1e4``) for integers; booleans must be JSON ``true``/``false``: ``1``,
    ``0`` and ``"yes"`` are refused rather than guessed. A nested config given as a
    dict overrides that field's default (the patch experiment's LeNet-5 training
    settings, say), not the nested class's defaults.

    Raises:
        ConfigError: naming the key (with its dotted path), what was expected and
            what was given.
    """
    return typing.cast(_T, _build(kind, raw, ""))


_WANTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_EXAMPLE_LIST = {int: "[0,1]", float: "[0.5,1.0]", str: '["a","b"]', bool: "[true,false]"}
_WANTED_MANY = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}


def _build(kind: type, raw: Any, path: str, base: Any = None) -> Any:
    """An instance of the dataclass ``kind`` from a mapping of (some of) its fields.

    Args:
        kind: the dataclass.
        raw: field values, JSON-like.
        path: where ``raw`` sits in the experiment config (``gradient``), for messages.
        base: an instance whose values the missing fields keep; else ``kind``'s defaults.
    """
    where = f"{path}: " if path else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}expected a mapping of {kind.__name__} fields, got {_shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = field_types(kind)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(_unknown_key(kind, str(key), path, list(fields), hints))
        hint, dotted = hints[key], f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            default = getattr(base, key) if base is not None else _default(fields[key])
            values[key] = _build(hint, value, dotted, default if isinstance(default, hint) else None)
        else:
            values[key] = _checked(value, hint, dotted)
    try:
        return dataclasses.replace(base, **values) if base is not None else kind(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from exc
    except TypeError as exc:  # a field the checks above do not cover
        raise ConfigError(f"{where}bad {kind.__name__} configuration: {exc}") from exc


@functools.cache
def field_types(kind: type) -> dict[str, Any]:
    # The annotations are strings (``from __future__ import annotations``): resolve them.
    return typing.get_type_hints(kind)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _unknown_key(kind: type, key: str, path: str, names: list[str], hints: dict[str, Any]) -> str:
    prefix = f"{path}." if path else ""
    owner = f"{kind.__name__} ({path})" if path else kind.__name__
    message = f"unknown key {prefix + key!r}: unexpected keyword for {owner}"
    # A nested config's key given one level too high: `max_steps` for `gradient.max_steps`.
    nested = [
        f"{prefix}{name}.{key}" for name in names
        if dataclasses.is_dataclass(hints[name]) and key in {f.name for f in dataclasses.fields(hints[name])}
    ]
    close = difflib.get_close_matches(key, names, n=1)
    if nested:
        message += f"; did you mean {' or '.join(repr(n) for n in nested)}?"
    elif close:
        message += f"; did you mean {prefix + close[0]!r}?"
    else:
        message += "."
    return f"{message} Valid keys: {', '.join(names)}"


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _wanted(hint: Any) -> str:
    return _WANTED.get(hint, getattr(hint, "__name__", str(hint)))


def _checked(value: Any, hint: Any, path: str) -> Any:
    """``value`` as the annotation ``hint`` wants it, or a :class:`ConfigError` naming ``path``.

    An annotation it does not know (a new kind of field) lets the value through
    unchanged: the dataclass's own checks still apply.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            with contextlib.suppress(ConfigError):
                return _checked(value, option, path)
        wanted = " or ".join(_wanted(a) for a in options) + (" or null" if type(None) in args else "")
        raise ConfigError(f"{path}: expected {wanted}, got {_shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: expected one of {args}, got {_shown(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {_shown(value)}")
    if hint is float:
        # Kept as given (an int stays an int) so that digests of existing configs stay put.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected a number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {_shown(value)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            item = f" of {_WANTED_MANY.get(args[0], _wanted(args[0]) + ' values')}" if args else ""
            # `--set k=[a,b]` is not JSON: its words need quotes, and the shell keeps them only inside '...'.
            example = _EXAMPLE_LIST.get(args[0], "[{...}, ...]" if dataclasses.is_dataclass(args[0]) else "[...]") \
                if args else "[...]"
            bracketed = isinstance(value, str) and value.lstrip().startswith("[")
            json_hint = (f" (a list is JSON, strings in double quotes: {example}; on the command line inside single "
                         f"quotes, --set '{path}={example}')") if bracketed else ""
            raise ConfigError(f"{path}: expected a list{item}, got {_shown(value)}{json_hint}")
        variadic = origin is list or not args or args[-1] is Ellipsis
        if not variadic and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {_shown(value)}")
        kinds = (args[:1] or (Any,)) * len(value) if variadic else args
        items = [_checked(v, k, f"{path}[{i}]") for i, (v, k) in enumerate(zip(value, kinds, strict=True))]
        return tuple(items) if origin is tuple else items
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return _build(hint, value, path)
        raise ConfigError(f"{path}: expected a {hint.__name__} (a mapping of its fields), got {_shown(value)}")
    if (origin or hint) is dict and not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_shown(value)}")
    return value



_ITEM = re.compile(r"(?P<names>[A-Za-z_]\w*(?:, [A-Za-z_]\w*)*)(?: \([^)]*\))?: (?P<text>.+)")
_SECTIONS = ("Attributes:", "Args:")


@functools.cache
def descriptions(kind: type) -> dict[str, str]:
    """Each field's one-line description, from the ``Attributes:`` (or ``Args:``) sections
    of the docstrings of ``kind`` and its base classes (the nearest class's wins). A description
    that runs on over indented lines is joined into one."""
    out: dict[str, str] = {}
    for klass in reversed(kind.__mro__):
        out.update(_attributes(klass.__dict__.get("__doc__") or ""))
    return out


def _attributes(doc: str) -> dict[str, str]:
    lines = inspect.cleandoc(doc).splitlines()
    found: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in _SECTIONS)
    except StopIteration:
        return found
    section = len(lines[start]) - len(lines[start].lstrip())
    item_indent, last = None, []
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section:
            break
        item_indent = indent if item_indent is None else item_indent
        match = _ITEM.fullmatch(line.strip())
        if indent == item_indent and match:
            last = match["names"].split(", ")
            found.update(dict.fromkeys(last, match["text"].strip()))
        else:
            for name in last:
                found[name] += " " + line.strip()
    return found


def config_keys(config: Any, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every key ``--set`` accepts for ``config`` (an instance: its values are the defaults
    shown): (dotted key, type, default, description). Nested configs are walked into.

    A field without a description has ``""``: a test requires one for every key of every
    experiment."""
    out: list[tuple[str, str, Any, str]] = []
    kind = type(config)
    hints, described = field_types(kind), descriptions(kind)
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        hint, value = hints[f.name], getattr(config, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += config_keys(value, f"{prefix}{f.name}.")
            continue
        if typing.get_origin(hint) is Literal:
            shown = "one of " + ", ".join(map(str, typing.get_args(hint)))
        else:
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
        out.append((f"{prefix}{f.name}", shown, value, described.get(f.name, "")))
    return out
