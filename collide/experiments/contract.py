"""What an experiment is: the base class of its config, the job it plans, and the
protocol its module satisfies (:class:`Experiment`), which the engine and the registry
rely on."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from collide._io import json_digest
from collide.checks import require
from collide.config import EXPERIMENT_NAME, NAME_MAX, UNLESS_DEFAULT, SampleConfig
from collide.config_loader import config_keys, load
from collide.errors import ConfigError

#: The config fields that name folders or files a job reads or writes, where a config has
#: them: made absolute before jobs leave the submitting process (:meth:`ExperimentConfig.absolute`).
PATH_FIELDS = ("results_root", "data_root", "checkpoint_dir", "image_root", "cache_root")

#: ``progress(stage, done, total)``: how far a stage has come.
Progress = Callable[[str, int, int], None]


def no_progress(_stage: str, _done: int, _total: int) -> None:
    pass


class ExperimentConfig:
    """What every experiment config shares: checks, JSON round trip, a stable digest.

    A subclass is a frozen, keyword-only dataclass with at least ``name``, ``layer``,
    ``n_vertices``, ``results_root``, ``device`` and ``sample``; it calls
    :meth:`check_common` from its ``__post_init__``.
    """

    #: What `collide config show` adds below the listed layers ("": nothing).
    LAYERS_NOTE: ClassVar[str] = ""
    #: Keys (dotted) the experiment inherits from the config it extends and never reads:
    #: `collide config show` lists them apart, and the command line refuses a value for one.
    NOT_USED: ClassVar[tuple[str, ...]] = ()

    # What a subclass declares as dataclass fields (annotations here only, for the type checker).
    name: str
    layer: str
    n_vertices: int
    results_root: str
    device: str
    sample: SampleConfig

    def check_common(self) -> None:
        """The checks every experiment's config needs: its name names files, NUL-free
        strings, at least one vertex and one row, a target label 0..9, a known device."""
        name, device = self.name, self.device
        for key in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, key.name)
            if isinstance(value, str) and "\x00" in value:
                raise ConfigError(f"{key.name}: expected no NUL character (it names a file or folder), "
                                  f"got {value[:60]!r}")
        shown = name if len(name) <= 60 else f"{name[:40]}... ({len(name)} characters)"
        require(isinstance(name, str) and EXPERIMENT_NAME.fullmatch(name) is not None,
                f"name: expected a plain experiment name of 1 to {NAME_MAX} letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit (it names the files <name>.zarr, <name>.parquet), got {shown!r}")
        require(self.n_vertices >= 1, f"expected n_vertices >= 1, got {self.n_vertices}")
        label = getattr(self, "target_label", 0)
        require(0 <= label <= 9, f"expected target_label in 0..9, got {label}")
        require(len(getattr(self, "rows", (None,))) >= 1, "expected at least one row, got none")
        require(
            device == "auto" or device.split(":")[0] in ("cpu", "cuda"),
            f"expected device 'auto', 'cpu' or 'cuda[:n]', got {device!r}",
        )

    def check_request(self, given: Mapping[str, Any]) -> None:
        """Refusals that depend on what the user asked for in so many words, not only on
        the values: ``given`` holds the keys of a ``--config`` file, ``--set`` and the
        command line's options. The command line runs it before any work; none by default."""

    @classmethod
    def from_request(cls, given: Mapping[str, Any]) -> Self:
        """:meth:`from_dict` of what a user asked for (a ``--config`` file, ``--set``, a flow
        run's parameters), refusing a value for a key the experiment does not read.

        Raises:
            ConfigError: as :meth:`from_dict`, or naming the keys not read.
        """
        config = cls.from_dict(dict(given))
        if unused := config.unused_given(given):
            raise ConfigError(f"{', '.join(unused)}: not read by this experiment (inherited from the config it "
                              "extends), so the value would change nothing: drop it (`collide config show` lists "
                              "the keys each experiment reads)")
        return config

    def not_read_text(self, name: str, quote: Any = str) -> str:
        """The line `collide config show` and the config reference give :attr:`NOT_USED`
        (``""`` where it is empty), each key through ``quote``."""
        if not self.NOT_USED:
            return ""
        return f"inherited and not read by {name} (a value for one is refused): " + ", ".join(
            quote(k) for k in self.NOT_USED)

    def keys_read(self) -> list[tuple[str, str, Any, str]]:
        """:func:`~collide.config_loader.config_keys` less the :attr:`NOT_USED` ones: what
        `collide config show` and the config reference list."""
        return [k for k in config_keys(self) if not _under(k[0], self.NOT_USED)]

    def unused_given(self, given: Mapping[str, Any]) -> list[str]:
        """The keys of ``given`` (as :meth:`check_request` takes it) that are :attr:`NOT_USED`
        and hold another value than their default: asked for, and it would change nothing."""
        if not self.NOT_USED:
            return []
        default = _plain(type(self)().to_dict())
        return [key for key, value in _leaves(given)
                if _under(key, self.NOT_USED) and _plain(value) != _at(default, key)]

    def listed_layers(self) -> list[str] | None:
        """The layers `collide config show` lists (what the experiment's ``layers`` returns)
        when they are known without building the model, else None (the experiment module
        builds it, which imports torch). None by default."""
        return None

    def absolute(self) -> Self:
        """The same config with each folder it names (:data:`PATH_FIELDS`) absolute,
        resolved against this process's working folder.

        What a run hands to its jobs: a Dask worker started in another folder reads and
        writes the files the submitter meant, not its own ``data/...``. The digest names the
        absolute folders too, so a plain run and a Dask run of one config share their keys.
        """
        changes = {f.name: os.path.abspath(value) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                   if f.name in PATH_FIELDS and isinstance(value := getattr(self, f.name), str) and value}
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        """A short hash of everything that shapes the results, stable across processes.

        Where the results are written is left out: the same experiment written to two
        places is the same experiment.
        """
        science = {k: v for k, v in _digested(self).items() if k != "results_root"}
        science["layer"] = self.digest_layer()
        return json_digest(science)

    def digest_layer(self) -> str:
        """The layer as the digest names it. An experiment whose model gives layers aliases
        (``fc1`` for ``relu1``) returns the module's name, so that both spellings share a
        digest and a rerun under the other reuses every row."""
        return str(self.layer)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from plain JSON-like values; nested configs and rows may be dicts
        (:func:`collide.config_loader.load`: every key and value checked by name).

        Raises:
            ConfigError: naming the key (with its dotted path), what was expected and
                what was given.
        """
        return load(cls, raw)


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), to compare a request with a default."""
    return json.loads(json.dumps(value, default=str))


def _under(key: str, names: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``names`` or lies in one."""
    return any(key == n or key.startswith(f"{n}.") for n in names)


def _leaves(given: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Each value of nested mappings under its dotted key."""
    out: list[tuple[str, Any]] = []
    for key, value in given.items():
        if isinstance(value, Mapping):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _at(tree: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of nested mappings; None where there is none."""
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _digested(obj: Any) -> Any:
    """``obj`` as a dict for digests, without the fields marked ``metadata={"digest": False}``
    (settings that change how fast, never what, a run computes), nor those marked
    :data:`collide.config.UNLESS_DEFAULT` while they hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _digested(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("digest", True) is True
                or f.metadata.get("digest") == UNLESS_DEFAULT["digest"] and getattr(obj, f.name) != f.default}
    if isinstance(obj, list | tuple):
        return [_digested(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _digested(v) for k, v in obj.items()}
    return obj


@dataclasses.dataclass(frozen=True)
class Job:
    """One polytope job of a plan: the rows it writes and what they depend on.

    Attributes:
        label: a name for logs and the Prefect task run (unique within a plan).
        rows: the table rows the job writes, solved together or not at all.
        spec: JSON-able: everything beyond the config and the context that its rows
            depend on; hashed into each row's solve key.
    """

    label: str
    rows: tuple[int, ...]
    spec: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def job(label: str, rows: Iterable[int], **spec: Any) -> Job:
    """A polytope job: the rows it writes and what they depend on beyond config and context."""
    return Job(label=label, rows=tuple(int(r) for r in rows), spec=spec)


@runtime_checkable
class Experiment(Protocol):
    """What an experiment module provides (:mod:`collide.experiments.engine` runs it).

    ``NAME`` names it in the registry; ``Config`` is its config class. Optional:
    ``summarize(*, config) -> dict`` (outputs beyond the table and figure) and
    ``OUTPUTS``, functions ``(root, name) -> Path`` of the files ``summarize`` writes.
    """

    NAME: str
    Config: type[ExperimentConfig]

    def layers(self, config: Any) -> list[str]:
        """The layers of the config's model that collisions can be sought at."""
        ...

    def validate(self, *, config: Any) -> None:
        """Fail on bad input before any work."""
        ...

    def prepare(self, *, config: Any, progress: Progress = ...) -> dict[str, Any]:
        """The shared work every job needs, each piece reused when on disk: a JSON-able
        context whose ``"inputs"`` names what the jobs' results depend on."""
        ...

    def plan(self, context: dict[str, Any], *, config: Any) -> list[Job]:
        """The jobs: rows 0..n-1 each once."""
        ...

    def solve(self, job: Job, context: dict[str, Any], *, config: Any, progress: Progress = ...) -> None:
        """Find the vertices of the job's rows and write each row group."""
        ...

