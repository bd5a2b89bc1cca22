"""The checks a config runs in ``__post_init__``: each raises :class:`ConfigError` saying
what was expected and what was given (``expected n_vertices >= 1, got 0``)."""

from __future__ import annotations

import math

from collide.errors import ConfigError


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def count_in(text: str, what: str, *, of: str = "") -> int:
    """``text`` (a flag's or an environment variable's value, named by ``what``) as a count:
    a whole number written as one, at least 1; ``of`` names what is counted in the refusal."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or str(n) != text.strip():
        raise ConfigError(f"{what} must be a whole number{f' of {of}' if of else ''}, at least 1; got {text!r}")
    return n


def positive(name: str, value: float) -> None:
    """``value`` is a finite number above 0."""
    require(
        isinstance(value, int | float) and math.isfinite(value) and value > 0,
        f"expected {name} > 0, got {value!r}",
    )


def non_negative(name: str, value: float) -> None:
    """``value`` is a finite number of at least 0."""
    require(
        isinstance(value, int | float) and math.isfinite(value) and value >= 0,
        f"expected {name} >= 0, got {value!r}",
    )


def distinct(name: str, values: tuple) -> None:  # type: ignore[type-arg]
    """``values`` holds one or more values, none twice."""
    require(len(values) >= 1 and len(set(values)) == len(values), f"expected one or more distinct {name}, got "
            f"{values!r}")


def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``."""
    require(value in allowed, f"expected {name} in {allowed}, got {value!r}")
