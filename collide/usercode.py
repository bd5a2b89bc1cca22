"""Code of the user's own, named as ``package.module:factory``: a function of no arguments
that builds what the spec stands for (a model, a dataset).

Only a spec the user names (a command line, the config they run) is imported, never one
read from a store (:func:`collide.models.zoo.load_model_source`). The module is imported
from ``sys.path`` as it is: the working folder is never added, so a file planted there
does not become code; set ``PYTHONPATH`` to reach a folder of one's own.
"""

from __future__ import annotations

import importlib
from typing import Any

from collide.errors import ConfigError


def split_spec(spec: str, *, what: str, forms: str) -> tuple[str, str]:
    """``(module, name)`` of ``spec``, ``forms`` naming the accepted forms in the error."""
    where, sep, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not where or not name:
        raise ConfigError(f"{what} {spec!r}: expected {forms}")
    return where, name


def factory_of(spec: str, *, what: str) -> Any:
    """The function ``package.module:factory`` names, imported, not called.

    Raises:
        ConfigError: the module cannot be imported or has no such function.
    """
    where, name = split_spec(spec, what=what, forms="'package.module:factory'")
    try:
        return getattr(importlib.import_module(where), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {name} from {where} ({exc}); the module must be importable "
                          "(installed, or its folder on PYTHONPATH: the working folder is not searched) and define "
                          f"a function of no arguments returning the {what}") from None


def call_factory(spec: str, *, what: str) -> Any:
    """What ``package.module:factory`` returns when called with no arguments.

    Raises:
        ConfigError: the module cannot be imported, has no such function, or the function
            needs arguments.
    """
    _, name = split_spec(spec, what=what, forms="'package.module:factory'")
    factory = factory_of(spec, what=what)
    try:
        return factory()
    except TypeError as exc:
        raise ConfigError(f"{what} {spec!r}: {name}() must build the {what} with no arguments ({exc}); wrap it in a "
                          f"function of none (e.g. def my_{what}(): return ...)") from None
