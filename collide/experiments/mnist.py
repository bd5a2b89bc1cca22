"""The MNIST experiment (paper §3.1, Tables 1-2), with the exact rows added.

The MLP (or LeNet-5) is trained once, or its checkpoint reused; every row is one
polytope job of :mod:`collide.experiments.engine`: ``collide.find_polytope`` on the
row's target and init, written as one row group.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from collide._io import cache_lock, file_digest
from collide.api import collision_geometry, find_polytopes
from collide.config import (
    resolve_device,
)
from collide.datasets.examples import load_factory_dataset
from collide.datasets.folders import load_labelled_folder
from collide.datasets.mnist import (
    MNIST_LABEL,
    Split,
    data_digest,
    data_label,
    ensure_mnist,
    load_mnist,
    mnist_files,
)
from collide.errors import CheckpointError, ConfigError, DataError, InternalError
from collide.experiments.configs.mnist import (  # re-exported: the experiments built on MNIST's read them here
    DATASET,
    INPUT_SHAPE,
    N_CLASSES,
    MnistExperiment,
)
from collide.experiments.contract import Job, Progress, job, no_progress
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
from collide.taps import check_units, layer_names, preactivation

NAME = "mnist"
Config = MnistExperiment


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


def indexed_images(config: Any) -> Split:
    """The images a job's targets index: the MNIST split ``config.split`` (test by
    default), or, where a config names an ``image_root`` (the scan's), that folder's
    images in grey at 28 px, labelled by their class folders' names, or where it names a
    ``dataset`` (the scan's), the examples the user's ``package.module:factory`` builds."""
    if getattr(config, "dataset", ""):
        split = Split(*load_factory_dataset(config.dataset, shape=INPUT_SHAPE))
        source = f"dataset {config.dataset!r}"
    elif root := getattr(config, "image_root", ""):
        images, labels, _ = load_labelled_folder(root, size=INPUT_SHAPE[-1], channels=INPUT_SHAPE[0])
        split, source = Split(images, labels), f"image folder {root}"
    else:
        return load_mnist(config.data_root, getattr(config, "split", "test"))
    # A label the model has no class for would count every prediction of it wrong.
    bad = torch.nonzero((split.labels < 0) | (split.labels >= N_CLASSES)).flatten()
    if len(bad):
        k = int(bad[0])
        raise DataError(f"{source}: example {k} has label {int(split.labels[k])}, but the MNIST classifier's classes "
                        f"are 0 to {N_CLASSES - 1} ({len(bad)} examples lie outside them): label each example by the "
                        "digit it shows")
    return split


def images_digest(data: Split) -> str:
    """A digest of a split's pixels and labels: what rows that index it depend on."""
    h = hashlib.sha256(data.images.to(torch.float32).contiguous().numpy().tobytes())
    h.update(data.labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def job_images(config: Any, context: dict[str, Any]) -> Split:
    """The images a job's targets index, checked to be those the run planned with where
    user code builds them: rows index examples by position, so a factory that returned
    other examples (or another order) would pair rows with the wrong images."""
    data = indexed_images(config)
    if getattr(config, "dataset", ""):
        require_same_images(config, data, context["inputs"].get("images"))
    return data


def require_same_images(config: Any, data: Split, digest: str | None) -> None:
    """``data`` is what ``config.dataset``'s factory returned when the run was planned (``digest``)."""
    if images_digest(data) != digest:
        raise DataError(f"dataset {config.dataset} returned other examples than when the run was planned: its "
                        "factory must return the same examples in the same order every time (seed any shuffling "
                        "or augmentation, or drop it)")


def solve(job: Job, context: dict[str, Any], *, config: MnistExperiment,
          progress: Progress = no_progress) -> None:
    """Find the job's polytopes with :func:`collide.find_polytopes` (one solver batch; rows
    of one spec) and write each row group."""
    model, meta = load_checkpoint(context["checkpoint"])
    test = job_images(config, context)  # the scan may read the training split, an image folder, a dataset
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
