"""Errors that name what was wrong and how to fix it."""


class CollideError(Exception):
    """Base class for every error collide raises on purpose."""


class ConfigError(CollideError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(CollideError):
    """A dataset is missing, corrupt, empty, or holds values it must not (NaN, wrong shape)."""


class LayerError(CollideError, KeyError):
    """A layer name does not name a ReLU layer of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(CollideError):
    """A checkpoint file is missing, corrupt, or does not match its recorded hash."""


class BusyError(CollideError):
    """Another run holds the experiment's lock: two runs of one experiment at once would
    interleave their rows."""


class ModelRefused(ConfigError):
    """A store names a model of the user's own code that the caller did not name: a store
    is data, and nothing read from it may choose code to import."""


class InternalError(RuntimeError):
    """A broken internal invariant: a bug in collide, never a problem with the user's input.

    Deliberately not a :class:`CollideError`: what catches those reports them as the
    user's mistake (the CLI's exit code 2); this one is reported as a bug to fix."""
